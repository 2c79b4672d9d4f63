"""extract_opensmile.py: openSMILE functionals through the one extraction pipeline (store, report, resume)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_manifest import make_tone_manifest

pytest.importorskip("opensmile")

from mer.cli import extract_opensmile as cli  # noqa: E402
from mer.errors import run_cli  # noqa: E402
from mer.features.memmap import MemmapStore  # noqa: E402
from mer.features.opensmile_functionals import OpenSmileExtractor  # noqa: E402


def test_store_report_failures_and_resume(tmp_path):
    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 2, "test": 1}, labels=("anger", "joy"))
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    (manifest.parent / rows[0]["audio_path"]).write_bytes(b"not audio")  # an unreadable clip
    out, mm = tmp_path / "store", tmp_path / "mm"
    argv = ["--manifest", str(manifest), "--out", str(out), "--feature-set", "eGeMAPSv02", "--jobs", "2",
            "--memmap", str(mm), "--quiet"]
    assert run_cli(cli.main, argv) == 0
    report = json.loads((out / "extract_report.json").read_text())
    assert report["written"] == len(rows) - 1 and report["failed"] == {"unreadable": 1}
    assert report["failures"][0]["id"] == rows[0]["id"]
    store = MemmapStore(mm)
    assert (store.audio_dim, store.text_dim, len(store)) == (88, 0, len(rows) - 1)
    # the stored vector of a clip is openSMILE's own for that file
    ref = OpenSmileExtractor("eGeMAPSv02").encode([str(manifest.parent / rows[1]["audio_path"])])[0][0]
    got, _ = store.get_rows(np.array([[m["id"] for m in store.meta].index(rows[1]["id"])]))
    np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-5)
    # a rerun skips what is done and retries only the failure
    assert run_cli(cli.main, argv) == 0
    again = json.loads((out / "extract_report.json").read_text())
    assert (again["already_in_store"], again["written"], len(again["failures"])) == (len(rows) - 1, 0, 1)
    # another feature set into the same store is refused
    assert run_cli(cli.main, [*argv[:4], "--feature-set", "GeMAPSv01b", "--quiet"]) == 2
