"""A tiny randomly initialised Whisper saved to a folder (tests, demos, benchmarks: no network, no hub).

`make_tiny_whisper(dir)` writes a `save_pretrained` folder (config, weights, WhisperFeatureExtractor) that
`AutoModel` / `WhisperModel` / `AutoFeatureExtractor` load like a hub checkpoint; seeded, so the same call
gives the same model. Its encoder reads `2 * max_source_positions` log-mel frames (hop 160 samples: 1 s of
audio for the default 50 positions; real checkpoints: 1500 positions = 30 s), and its feature extractor pads /
cuts clips to that duration (`chunk_length` seconds).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mer.features.hf_encoders import quiet_transformers


def make_tiny_whisper(
    path: str | Path,
    d_model: int = 32,
    layers: int = 2,
    n_mels: int = 80,
    max_source_positions: int = 50,
    seed: int = 0,
) -> Path:
    """A tiny WhisperModel (`d_model` wide, `layers` encoder layers, 1 decoder layer) and its feature
    extractor."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    hop, rate = 160, 16000
    samples = 2 * max_source_positions * hop
    if samples % rate:
        raise ValueError(
            f"max_source_positions={max_source_positions}: the input must be a whole number of seconds "
            f"(a multiple of 50 positions)"
        )
    path = Path(path)
    cfg = WhisperConfig(
        vocab_size=64,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=layers,
        encoder_attention_heads=2,
        encoder_ffn_dim=2 * d_model,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=2 * d_model,
        max_source_positions=max_source_positions,
        max_target_positions=16,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        decoder_start_token_id=2,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WhisperModel(cfg)
    with quiet_transformers():
        model.save_pretrained(path)
    WhisperFeatureExtractor(
        feature_size=n_mels, sampling_rate=rate, hop_length=hop, n_fft=400, chunk_length=samples // rate
    ).save_pretrained(path)
    return path
