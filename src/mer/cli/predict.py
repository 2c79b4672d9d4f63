"""`predict.py --run DIR (FILES/FOLDERS... | --manifest M) --out predictions.csv`: a trained run's calibrated
class probabilities for clips."""

from __future__ import annotations

import argparse
from pathlib import Path

from mer.errors import UserError
from mer.serving import asr as serving_asr
from mer.serving import predict as serving


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predict.py", description="Predict emotions of WAV/FLAC/MP3 clips with a trained "
                                "run of any track; writes a CSV (id, path, pred, confidence, prob_<label>: "
                                "probabilities calibrated with the run's temperature).")
    p.add_argument("inputs", nargs="*", help="audio files and/or folders (searched recursively)")
    p.add_argument("--run", required=True, help="the trained run directory, or a package folder (export.py)")
    p.add_argument("--manifest", help="a manifest (.jsonl or .csv: audio_path, optional id, text, speaker, "
                   "dialogue_id, turn) instead of / beside the files")
    p.add_argument("--out", default="predictions.csv", help="the CSV to write (default predictions.csv)")
    p.add_argument("--text", default="", help="transcript for every file given on the command line")
    p.add_argument("--speaker", help="speaker id of every file given on the command line (speaker normalization)")
    p.add_argument("--speaker-column", help="the manifest column holding the speaker id (default: speaker)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", help="cpu, cuda, ... (default cpu)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dims-scale", metavar="LO,HI", help="rating scale of the dimensional outputs (default: the "
                   "manifest row's corpus scale, data.rating_scales)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--asr", metavar="MODEL_OR_DIR", help="Whisper (hub name or folder) transcribing clips without text")
    p.add_argument("--asr-language", help="the clips' language for --asr (en, english, ...; default: detected)")
    p.add_argument("--asr-cache", help=f"the transcript cache (default: {serving_asr.CACHE_NAME} beside --out)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.inputs and not args.manifest:
        raise UserError("nothing to predict: give audio files or folders, or --manifest")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: expected >= 1")
    predictor = serving.load_predictor(args.run, args.checkpoint, args.device)
    asr = serving_asr.load_asr(args.asr, language=args.asr_language, device=args.device, batch_size=args.batch_size,
                               cache=args.asr_cache or Path(args.out).with_name(serving_asr.CACHE_NAME),
                               progress=not args.quiet) if args.asr and predictor.uses_text else None
    inputs = serving.path_inputs(args.inputs, text=args.text, speaker=args.speaker)
    inputs = asr.fill_inputs(inputs) if asr else inputs
    if args.manifest:
        kw = {"speaker_column": args.speaker_column, "context_turns": int(predictor.cfg.data.context_turns)}
        inputs += (asr.manifest_inputs if asr else serving.manifest_inputs)(args.manifest, **kw)
    if not asr and predictor.uses_text and not predictor.uses_audio and not any(i.text.strip() for i in inputs):
        raise UserError(f"{args.run}: a text-only model; give transcripts (--text, a manifest's text or --asr)")
    result = serving.predict_inputs(predictor, inputs, batch_size=args.batch_size, progress=not args.quiet,
                                    dims_scale=serving.parse_scale(args.dims_scale))
    result.skipped[:0] = asr.skipped if asr else []
    for rid, why in result.skipped[:20]:
        print(f"skipped {why}" if rid in why else f"skipped {rid}: {why}")
    if len(result.skipped) > 20:
        print(f"... and {len(result.skipped) - 20} more skipped")
    if not result.rows:
        raise UserError(f"no clip could be predicted ({len(result.skipped)} skipped)")
    out = serving.write_predictions(result.rows, args.out)
    info = predictor.info()
    calib = f"T = {info['temperature']:.3f}" if info["calibrated"] else "uncalibrated (the run has no calibration.json)"
    print(f"model       {info['model_id']} ({info['track']}, {info['model']}/{info['mode']}), {calib}")
    if predictor.speaker_norm:
        own = sum(1 for r in result.rows if "own statistics" in r.get("speaker_norm", ""))
        print(f"speaker norm {own} of {len(result.rows)} clips with their speaker's own statistics (>= "
              f"{predictor.min_speaker_rows} clips of a speaker id: --speaker / --speaker-column); the rest with "
              "the training statistics (see the speaker_norm column)")
    if args.asr:
        print(f"asr         {asr.summary() if asr else 'not used: the model does not read text'}")
    print(f"predicted   {len(result.rows)} clips, {len(result.skipped)} skipped, {result.seconds:.1f}s -> {Path(out)}")
    return 0
