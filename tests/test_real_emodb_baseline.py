"""The field's standard baseline on REAL speech: EmoDB, the 5 speaker-disjoint folds, openSMILE ComParE_2016 + the
MER linear baseline (logreg, C = 0.1), per utterance and speaker-normalized — the figures of BENCHMARKS.md
(0.777 and 0.859 measured with plain opensmile + scikit-learn outside MER) within ±0.02."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("opensmile")

ROOT = Path(__file__).resolve().parents[1]


def emodb_dir() -> Path | None:
    env = os.environ.get("MER_EMODB")
    for c in ([Path(env)] if env else []) + [ROOT.parent / "shared" / "data" / "emodb"]:
        if (c / "wav").is_dir():
            return c
    return None


EMODB = emodb_dir()
pytestmark = pytest.mark.skipif(EMODB is None, reason="the real EmoDB corpus is not beside the repository")


def test_compare_linear_baseline_reproduces_the_standard_figures(tmp_path):
    spec = importlib.util.spec_from_file_location("emodb_cv", ROOT / "scripts" / "emodb_cv.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "emodb"
    argv = ["--emodb", str(EMODB), "--out", str(out), "--val", "0"]
    assert script.main(argv) == 0
    assert script.main([*argv, "--set", "data.speaker_norm=true"]) == 0
    plain = json.loads((out / "cv_emodb_compare_linear" / "cv_summary.json").read_text())
    norm = json.loads((out / "cv_emodb_compare_linear_data-speaker_norm-true" / "cv_summary.json").read_text())
    assert plain["pooled"]["n"] == norm["pooled"]["n"] == 535
    assert plain["protocol"]["speaker_norm"] is False and norm["protocol"]["speaker_norm"] is True
    assert abs(plain["pooled"]["macro_f1"] - 0.777) <= 0.02, plain["pooled"]
    assert abs(norm["pooled"]["macro_f1"] - 0.859) <= 0.02, norm["pooled"]
    lo, hi = plain["ci"]["macro_f1"]
    assert lo < plain["pooled"]["macro_f1"] < hi
    # feature selection with (k, C) chosen by inner speaker folds: BENCHMARKS.md's 0.891 speaker-normalized
    select = ROOT / "configs" / "emodb_compare_select.yaml"
    assert script.main([*argv, "--config", str(select), "--set", "data.speaker_norm=true"]) == 0
    sel = json.loads((out / "cv_emodb_compare_select_data-speaker_norm-true" / "cv_summary.json").read_text())
    assert abs(sel["pooled"]["macro_f1"] - 0.891) <= 0.02, sel["pooled"]
    fit_jsons = sorted((out / "cv_emodb_compare_select_data-speaker_norm-true" / "runs").glob("*/linear_fit.json"))
    assert len(fit_jsons) == 5
    for fit_json in fit_jsons:
        fit = json.loads(fit_json.read_text())  # chosen inside the fold's training speakers, from the config's grid
        assert fit["inner_folds"] == 4 and fit["k"] in (500, 1000, 2000, 3000, 6373) and fit["C"] in (0.03, 0.1, 0.3)
