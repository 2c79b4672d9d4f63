"""`extract_at_features_hf.py`: frozen Hugging Face encoders -> pooled audio/text vectors in a feature store.

The extractor: mer.features.extract_hf; the pipeline (resumable store, report, memmap): mer.features.extraction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mer.features.extract_hf import HFOptions, extract_hf
from mer.features.extraction import parse_shard
from mer.features.hf_encoders import AUDIO_POOLINGS, TEXT_POOLINGS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="extract_at_features_hf.py",
        description="Extract pooled embeddings of frozen Hugging Face encoders (audio: WavLM/HuBERT/wav2vec2; "
        "text: RoBERTa/BERT) for every manifest row into a feature store folder. Resumable: a rerun skips "
        "the rows already there.",
        epilog="Example: extract_at_features_hf.py --manifest data/meta_manifest.jsonl --out features/wavlm_roberta "
        "--audio-model microsoft/wavlm-base-plus --text-model roberta-base --audio-pooling mean_std --context 2",
    )
    p.add_argument("--manifest", required=True, type=Path,
                   help="meta_manifest.jsonl written by mer-builder (or the folder holding it)")
    p.add_argument("--out", required=True, type=Path, help="feature store folder to write (or resume)")
    p.add_argument("--audio-model", help="audio encoder: save_pretrained folder or hub name (omit: no audio)")
    p.add_argument("--text-model", help="text encoder: save_pretrained folder or hub name (omit: no text)")
    p.add_argument("--audio-pooling", choices=AUDIO_POOLINGS, default="mean",
                   help="mean over frames (H) or mean+std (2H); default mean")
    p.add_argument("--audio-layer", default="last",
                   help="hidden state to pool: last, mean (average of all), or an index (0 = before the first "
                   "transformer layer); default last")
    p.add_argument("--text-pooling", choices=TEXT_POOLINGS, default="cls",
                   help="first-token (CLS / <s>) vector or masked mean over tokens; default cls")
    p.add_argument("--context", type=int, default=0, metavar="K",
                   help="prepend the previous K turns of the dialogue (conversational rows); default 0")
    p.add_argument("--max-audio-s", type=float, default=20.0, help="crop audio to this many seconds; default 20")
    p.add_argument("--max-text-tokens", type=int, default=None,
                   help="token limit per text (default: the text encoder's own limit)")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per batch; default 8")
    p.add_argument("--no-sort", action="store_true", help="keep manifest order instead of length-sorted batches")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="re-extract from scratch into an existing store")
    p.add_argument("--memmap", type=Path, metavar="DIR", help="also build the memmap folder DIR from the store")
    p.add_argument("--allow-absolute-paths", action="store_true",
                   help="read manifest audio_path values that are absolute paths (refused by default: a manifest's "
                   "paths are relative to its folder and stay inside it)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="extract only part K of N (manifest rows at position i with i %% N == K) into --out, the "
                   "part's own store; merge all N parts with build_memmap_features.py --store PART... --out DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    shard = None if a.shard is None else parse_shard(a.shard)
    opts = HFOptions(audio_model=a.audio_model, text_model=a.text_model, audio_pooling=a.audio_pooling,
                     audio_layer=a.audio_layer, text_pooling=a.text_pooling, context=a.context,
                     max_audio_s=a.max_audio_s, max_text_tokens=a.max_text_tokens, batch_size=a.batch_size,
                     sort=not a.no_sort, device=a.device, allow_absolute_paths=a.allow_absolute_paths)
    extract_hf(a.manifest, a.out, opts, memmap=a.memmap, overwrite=a.overwrite, quiet=a.quiet, shard=shard)
    return 0
