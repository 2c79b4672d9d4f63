"""Tiny Hugging Face encoders for tests: the builders live in `mer.models.tiny_encoders` (demos use them too)."""

from mer.models.tiny_encoders import CORPUS, make_tiny_roberta, make_tiny_wavlm, minilm_path

__all__ = ["CORPUS", "make_tiny_roberta", "make_tiny_wavlm", "minilm_path"]
