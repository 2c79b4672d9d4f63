"""`cross_corpus.py --config X.yaml [--train A B+C] [--corpora A B C]`: train on one corpus (or a group), test on
every other, with the classes a test corpus lacks masked from the logits. The recipe: mer.recipes.cross_corpus."""

from __future__ import annotations

import argparse

from mer.config import load_config
from mer.recipes.cross_corpus import run_cross_corpus


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cross_corpus.py", description="Cross-corpus evaluation of a config (any "
                                "track): one run per training corpus or group, evaluated on every other corpus "
                                "(corpus-aware: the classes a test corpus lacks are masked); a matrix table and "
                                "heatmap.")
    p.add_argument("--config", required=True, help="experiment YAML config")
    p.add_argument("--train", nargs="+", default=None, metavar="GROUP",
                   help="training groups, a corpus or CORPUS+CORPUS (default: every corpus alone)")
    p.add_argument("--corpora", nargs="+", default=None, help="the corpora to use (default: all in the data)")
    p.add_argument("--out", default=None, help="output folder (default: <run.output_root>/cross_corpus_<run.name>)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides).cfg
    out = args.out or f"{cfg.run.output_root}/cross_corpus_{cfg.run.name}"
    result = run_cross_corpus(args.config, args.overrides, out, groups=args.train, corpora=args.corpora)
    print("\n" + result["markdown"])
    print(f"wrote {out}")
    return 0
