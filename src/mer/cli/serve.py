"""`python -m mer.serve --model RUN_DIR [--host 127.0.0.1] [--port 8001]`: the HTTP service and its web page.
Every flag also comes from an environment variable MER_SERVE_<FLAG> (e.g. MER_SERVE_MODEL, MER_SERVE_PORT)."""

from __future__ import annotations

import argparse

from mer.serving.app import Settings, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mer.serve", description="Serve a trained run over HTTP: POST "
                                "/ser/analyze, GET /health, GET /labels, and the web page at /.")
    p.add_argument("--model", help="the trained run directory (MER_SERVE_MODEL)")
    p.add_argument("--checkpoint", choices=["best", "last"], help="default best (MER_SERVE_CHECKPOINT)")
    p.add_argument("--host", help="default 127.0.0.1 (MER_SERVE_HOST)")
    p.add_argument("--port", type=int, help="default 8001 (MER_SERVE_PORT)")
    p.add_argument("--device", help="default cpu (MER_SERVE_DEVICE)")
    p.add_argument("--max-upload-mb", type=float, help="default 20 (MER_SERVE_MAX_UPLOAD_MB)")
    p.add_argument("--max-duration-s", type=float, help="default 60 (MER_SERVE_MAX_DURATION_S)")
    p.add_argument("--batch-window-ms", type=float, help="micro-batching wait, default 5 (MER_SERVE_BATCH_WINDOW_MS)")
    p.add_argument("--max-batch", type=int, help="default 16; 1 = no micro-batching (MER_SERVE_MAX_BATCH)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    run(Settings.from_env(**args))
    return 0
