"""`transcribe.py --manifest M --out M2 --asr MODEL_OR_DIR`: the manifest with its missing texts transcribed by
Whisper and marked `text_asr: true`, through the transcript cache that `predict.py --asr` uses."""

from __future__ import annotations

import argparse
from pathlib import Path

from mer.errors import UserError
from mer.serving import asr as serving_asr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="transcribe.py", description="Fill a manifest's missing texts with Whisper "
                                "(rows with a text keep it; filled rows get text_asr: true).")
    p.add_argument("--manifest", required=True, help="the manifest (.jsonl or .csv: audio_path, optional text)")
    p.add_argument("--out", required=True, help="the manifest to write (.jsonl, or .csv)")
    p.add_argument("--asr", "--model", dest="asr", required=True, help="Whisper: hub name or save_pretrained folder")
    p.add_argument("--asr-language", "--language", dest="asr_language", help="en, english, ... (default: detected)")
    p.add_argument("--asr-cache", help=f"the transcript cache (default: {serving_asr.CACHE_NAME} beside --out)")
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when present)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per Whisper batch (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not Path(args.manifest).is_file():
        raise UserError(f"{args.manifest}: manifest not found")
    asr = serving_asr.load_asr(args.asr, language=args.asr_language, device=args.device, batch_size=args.batch_size,
                               cache=args.asr_cache or Path(args.out).with_name(serving_asr.CACHE_NAME),
                               progress=not args.quiet)
    n = serving_asr.fill_manifest(args.manifest, args.out, asr)
    for rid, why in asr.skipped[:20]:
        print(f"skipped {why}" if rid in why else f"skipped {rid}: {why}")
    print(f"asr         {asr.summary()}")
    print(f"manifest    {n['rows']} rows: {n['given']} with a text, {n['asr']} transcribed, {n['asr_cache']} from "
          f"the cache, {n['skipped']} left without text -> {args.out}")
    return 0
