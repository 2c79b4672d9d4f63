"""Sharded extraction (`--shard K/N`) and the merge of its parts by build_memmap_features.py: three parts merged
equal the unsharded store row for row (MFCC + hashed text; openSMILE); a missing part, a part given twice, an id
in two parts, a row in no part, parts with other settings and bad --shard values are one-line errors that write
nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_manifest import make_tone_manifest

from mer.cli import build_memmap as bm
from mer.cli import extract_features as ex
from mer.cli import extract_opensmile as ox
from mer.errors import run_cli
from mer.features.extraction import shard_rows
from mer.features.memmap import MemmapStore
from mer.features.store import FeatureStoreReader, FeatureStoreWriter, read_store_info

N = 3
MISSING_ID, MISSING_POS = "TOYACT/train/gone", 4


def make_manifest(root: Path) -> Path:
    """16 tone rows and one whose WAV is missing (a failure reported by the part that has it)."""
    manifest = make_tone_manifest(root, per_split={"train": 2, "val": 1, "test": 1})
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows.insert(MISSING_POS, {**rows[0], "id": MISSING_ID, "audio_path": "audio/gone.wav"})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def mfcc(manifest: Path, out: Path, *extra: str) -> int:
    return run_cli(ex.main, ["--manifest", str(manifest), "--out", str(out), "--quiet", "--jobs", "1",
                             "--n-mfcc", "13", "--text-dim", "64", *extra])


def smile(manifest: Path, out: Path, *extra: str) -> int:
    return run_cli(ox.main, ["--manifest", str(manifest), "--out", str(out), "--quiet", "--jobs", "1",
                             "--feature-set", "eGeMAPSv02", *extra])


def merge(parts: list[Path], out: Path, *extra: str) -> int:
    return run_cli(bm.main, ["--store", *map(str, parts), "--out", str(out), "--quiet", *extra])


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> dict:
    """A manifest, its unsharded MFCC store + memmap, and its three MFCC parts (not merged)."""
    root = tmp_path_factory.mktemp("shard")
    manifest = make_manifest(root / "data")
    assert mfcc(manifest, root / "whole", "--memmap", str(root / "whole_mm")) == 0
    parts = [root / f"part{k}" for k in range(N)]
    for k, part in enumerate(parts):
        assert mfcc(manifest, part, "--shard", f"{k}/{N}") == 0
    return {"root": root, "manifest": manifest, "parts": parts}


def assert_same_rows(a: MemmapStore, b: MemmapStore) -> None:
    assert [m["id"] for m in a.meta] == [m["id"] for m in b.meta]
    assert a.meta == b.meta
    (aa, at), (ba, bt) = a.get_rows(np.arange(len(a))), b.get_rows(np.arange(len(b)))
    np.testing.assert_array_equal(aa, ba)
    np.testing.assert_array_equal(at, bt)


def test_parts_are_the_interleaved_rows_and_merge_to_the_unsharded_store(sharded, tmp_path, capsys):
    manifest, parts = sharded["manifest"], sharded["parts"]
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for k, part in enumerate(parts):
        want = [r["id"] for r in shard_rows(rows, (k, N))]
        assert want == [r["id"] for r in rows[k::N]]
        report = json.loads((part / "extract_report.json").read_text())
        assert (report["shard"], report["rows_in_shard"], report["rows_in_manifest"]) == (f"{k}/{N}", len(want), 17)
        stored = [m["id"] for m in FeatureStoreReader(part).meta]
        assert stored == [i for i in want if i != MISSING_ID]
        assert [f["id"] for f in report["failures"]] == ([MISSING_ID] if MISSING_ID in want else [])
    capsys.readouterr()
    assert merge(parts, tmp_path / "mm") == 0
    shown = capsys.readouterr().out
    assert "parts     3" in shown and "1 rows failed" in shown
    merged, whole = MemmapStore(tmp_path / "mm"), MemmapStore(sharded["root"] / "whole_mm")
    assert len(merged) == 16
    assert_same_rows(merged, whole)
    # the merged store's settings are the unsharded store's (no "shard"): prediction re-creates the same extractor
    assert merged.info["settings"] == whole.info["settings"]
    # the parts' order on the command line does not matter; an up-to-date merge is left as is
    assert merge(parts[::-1], tmp_path / "mm") == 0
    assert "up to date" in capsys.readouterr().out
    # a part rerun resumes (nothing to do), and keeps its identity
    assert mfcc(manifest, parts[1], "--shard", f"1/{N}") == 0
    assert json.loads((parts[1] / "extract_report.json").read_text())["written"] == 0


def test_opensmile_parts_merge_to_the_unsharded_store(sharded, tmp_path):
    pytest.importorskip("opensmile")
    manifest = sharded["manifest"]
    assert smile(manifest, tmp_path / "whole", "--memmap", str(tmp_path / "whole_mm")) == 0
    parts = [tmp_path / f"part{k}" for k in range(N)]
    for k, part in enumerate(parts):
        assert smile(manifest, part, "--shard", f"{k}/{N}") == 0
    assert merge(parts, tmp_path / "mm") == 0
    assert_same_rows(MemmapStore(tmp_path / "mm"), MemmapStore(tmp_path / "whole_mm"))


def test_missing_twice_and_foreign_parts_are_one_line_errors(sharded, tmp_path, capsys, one_line_error):
    parts, out = sharded["parts"], tmp_path / "mm"
    capsys.readouterr()
    assert merge(parts[:2], out) == 2
    assert f"part(s) 2/{N} missing" in one_line_error()
    assert merge([parts[0], parts[1], parts[1]], out) == 2
    assert f"part 1/{N} is given twice" in one_line_error()
    assert merge([parts[0], parts[1], sharded["root"] / "whole"], out) == 2
    assert "not a part of a sharded extraction" in one_line_error()
    assert merge([parts[0]], out) == 2  # a single part is not the whole set either
    assert f"part(s) 1/{N}, 2/{N} missing" in one_line_error()
    # a part extracted with other settings (or into another number of parts) is named
    other = tmp_path / "other2"
    assert mfcc(sharded["manifest"], other, "--shard", f"2/{N}", "--ngram", "1,1") == 0
    assert merge([*parts[:2], other], out) == 2
    msg = one_line_error()
    assert str(other) in msg and "settings.ngram_range" in msg
    four = tmp_path / "four"
    assert mfcc(sharded["manifest"], four, "--shard", "3/4") == 0
    assert merge([*parts, four], out) == 2
    assert "part 3/4, but" in one_line_error()
    assert not out.exists()


def test_an_id_in_two_parts_or_in_none_is_a_one_line_error(sharded, tmp_path, capsys, one_line_error):
    parts = [tmp_path / p.name for p in sharded["parts"]]
    for src, dst in zip(sharded["parts"], parts, strict=True):
        shutil.copytree(src, dst)
    # part 1 also holds the first row of part 0
    p0 = FeatureStoreReader(parts[0])
    info = read_store_info(parts[1])
    audio, text = p0.get_rows([0])
    with FeatureStoreWriter(parts[1], info["audio_dim"], info["text_dim"], info["settings"],
                            info["manifest_sha256"]) as w:
        w.add(p0.meta[0], audio[0], text[0])
    capsys.readouterr()
    out = tmp_path / "mm"
    assert merge(parts, out) == 2
    msg = one_line_error()
    assert f"id {p0.meta[0]['id']!r} is in two parts: {parts[0]} and {parts[1]}" in msg
    # a row in no part and not reported failed (an unfinished part): named with the part that should have it
    shutil.rmtree(parts[1])
    shutil.copytree(sharded["parts"][1], parts[1])
    k = MISSING_POS % N
    report = json.loads((parts[k] / "extract_report.json").read_text())
    (parts[k] / "extract_report.json").write_text(json.dumps({**report, "failures": []}))
    assert merge(parts, out) == 2
    msg = one_line_error()
    assert f"id {MISSING_ID!r}" in msg and f"part {k}/{N}, {parts[k]}" in msg
    assert not out.exists()


@pytest.mark.parametrize("value, words", [("3/3", "K must be 0 to N-1"), ("x", "expected K/N"),
                                          ("-1/3", "expected K/N"), ("1/0", "K must be 0 to N-1"),
                                          ("1/", "expected K/N")])
def test_bad_shard_values_are_one_line_errors_that_write_nothing(sharded, tmp_path, capsys, value, words,
                                                                 one_line_error):
    capsys.readouterr()
    assert mfcc(sharded["manifest"], tmp_path / "s", f"--shard={value}") == 2  # = : argparse takes -1/3 as a flag
    msg = one_line_error()
    assert msg.startswith("error: --shard") and words in msg
    assert smile(sharded["manifest"], tmp_path / "s", f"--shard={value}") == 2
    assert words in one_line_error()
    assert not (tmp_path / "s").exists()


def test_shard_with_memmap_or_into_another_part_is_refused(sharded, tmp_path, capsys, one_line_error):
    capsys.readouterr()
    assert mfcc(sharded["manifest"], tmp_path / "s", "--shard", "0/3", "--memmap", str(tmp_path / "mm")) == 2
    assert "--memmap with --shard 0/3" in one_line_error() and not (tmp_path / "s").exists()
    part = tmp_path / "p0"
    shutil.copytree(sharded["parts"][0], part)
    assert mfcc(sharded["manifest"], part, "--shard", "0/2") == 2  # the store's identity check: another K/N
    assert "settings.shard: store has '0/3', this run gives '0/2'" in one_line_error()
    assert mfcc(sharded["manifest"], part) == 2  # an unsharded run into a part
    assert "settings.shard" in one_line_error()
