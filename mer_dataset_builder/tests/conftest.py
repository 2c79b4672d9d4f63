"""Puts this folder on sys.path so that tests (the builder's and the pipeline's) can `from raw_fixtures import ...`."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
