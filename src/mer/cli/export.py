"""`export.py --run DIR [--out FOLDER] [--format onnx torchscript]`: a run's model as ONNX / TorchScript with its
labels, normalization statistics and temperature in export.json."""

from __future__ import annotations

import argparse

from mer.serving.export import FORMATS, export_run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export.py", description="Export a trained run's model (feature models; "
                                "log-mel frame models) to ONNX and TorchScript, checked against PyTorch.")
    p.add_argument("--run", required=True, help="the trained run directory")
    p.add_argument("--out", help="output folder (default <run>/export)")
    p.add_argument("--format", nargs="+", default=list(FORMATS), choices=FORMATS)
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rec = export_run(args.run, args.out, checkpoint=args.checkpoint, formats=tuple(args.format), opset=args.opset)
    out = args.out or f"{args.run}/export"
    print(f"exported    {rec['model']}/{rec['mode']} ({rec['track']}), labels {', '.join(rec['labels'])}, "
          f"T = {rec['temperature']:.3f}{'' if rec['calibrated'] else ' (uncalibrated)'}")
    for fmt, diff in rec["parity_max_abs_diff"].items():
        print(f"  {fmt:<12} {out}/{rec['files'][fmt]}  max |p - p_torch| {diff:.1e}")
    print(f"  metadata     {out}/export.json (inputs, normalization, labels, temperature)")
    return 0
