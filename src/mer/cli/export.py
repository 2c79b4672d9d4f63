"""`export.py --run DIR [--out FOLDER] [--format onnx torchscript package] [--push-to-hub REPO]`: a run's model as
ONNX / TorchScript with export.json, and/or as a self-contained package folder (safetensors + JSON, model card);
`--summary [--depth N] [--graph IMAGE]`: its layers, parameter counts and shapes instead."""

from __future__ import annotations

import argparse

from mer.serving.export import FORMATS
from mer.serving.package import export_lines
from mer.serving.summary import summary_lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export.py", description="Export a trained run's model (every track) "
                                "to ONNX and TorchScript, checked against PyTorch; or any "
                                "run as a package folder that predict.py --run reads without the run.")
    p.add_argument("--run", required=True, help="the trained run directory")
    p.add_argument("--out", help="output folder (default <run>/export, <run>/package)")
    p.add_argument("--format", nargs="+", choices=[*FORMATS, "package"], help="default: onnx torchscript")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty package --out")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the package to this Hugging Face Hub model repo")
    p.add_argument("--summary", action="store_true", help="print the model's layers, parameters and shapes instead")
    p.add_argument("--depth", type=int, help="--summary: the layers down to this depth (default: all)")
    p.add_argument("--graph", metavar="IMAGE", help="--summary: also a graph image (.png/.svg/.pdf; needs Graphviz)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.summary or args.graph:
        print("\n".join(summary_lines(args.run, args.checkpoint, depth=args.depth, graph=args.graph)))
        return 0
    print("\n".join(export_lines(args.run, args.out, formats=args.format, checkpoint=args.checkpoint,
                                 opset=args.opset, overwrite=args.overwrite, hub_repo=args.push_to_hub)))
    return 0
