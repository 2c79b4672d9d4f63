"""Feature store writer/reader, resume after a kill, memmap form, open_store, manifest reading, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers_store import make_store, store_arrays

from mer.cli.build_memmap import main as build_memmap_main
from mer.data.manifest import manifest_sha256, read_manifest
from mer.data.records import CARRIED_FIELDS
from mer.errors import UserError, run_cli
from mer.features.memmap import MemmapStore, build_memmap, open_store
from mer.features.store import FeatureStoreReader, FeatureStoreWriter
from mer.io import LOCK_NAME

SETTINGS = {"extractor": "toy", "seed": 0}


def carried(m: dict) -> dict:
    return {k: m.get(k) for k in CARRIED_FIELDS}


# -- writer / reader -----------------------------------------------------------------------------------------
def test_store_round_trip_rows_info_and_shards(tmp_path):
    path = make_store(tmp_path, 50, 6, 4, shard_size=16)
    meta, audio, text = store_arrays(50, 6, 4)
    r = FeatureStoreReader(path)
    assert r.meta == [carried(m) for m in meta]
    assert (r.audio_dim, r.text_dim, len(r)) == (6, 4, 50)
    assert r.info["n_rows"] == 50 and r.info["n_shards"] == 4
    assert r.info["settings"] == SETTINGS and r.info["manifest_sha256"] == "toyhash"
    assert sorted(p.name for p in (path / "shards").iterdir()) == [f"part-{i:05d}.npz" for i in range(4)]
    idx = [49, 0, 17, 17, -1, 33, 2]  # unsorted, repeated, negative, across shards
    a, t = r.get_rows(idx)
    assert a.dtype == np.float32 and t.dtype == np.float32
    np.testing.assert_array_equal(a, audio[idx])
    np.testing.assert_array_equal(t, text[idx])
    with pytest.raises(IndexError, match="out of range"):
        r.get_rows([50])


def test_writer_resumes_after_kill(tmp_path):
    meta, audio, text = store_arrays(50, 5, 3)
    path = tmp_path / "store"
    w = FeatureStoreWriter(path, 5, 3, SETTINGS, "h1", shard_size=10)
    for i in range(25):  # shards 0 and 1 reach the disk, rows 20..24 stay in the buffer
        w.add(meta[i], audio[i], text[i])
    del w  # killed: no close, no flush
    # a kill in the middle of the next shard: a half-written temp shard, an orphan shard whose rows never
    # reached rows.jsonl, and a torn last line of rows.jsonl
    (path / "shards" / "part-00002.npz.tmp").write_bytes(b"PK\x03\x04 half")
    (path / "shards" / "part-00003.npz").write_bytes((path / "shards" / "part-00000.npz").read_bytes())
    with (path / "rows.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"id": "RAVDESS/utt00020", "sha')

    with FeatureStoreWriter(path, 5, 3, SETTINGS, "h1", shard_size=10) as w2:
        assert w2.done_ids() == {m["id"] for m in meta[:20]}
        assert sorted(p.name for p in (path / "shards").iterdir()) == ["part-00000.npz", "part-00001.npz"]
        for i in range(50):
            if meta[i]["id"] not in w2.done_ids():
                w2.add(meta[i], audio[i], text[i])
    r = FeatureStoreReader(path)
    assert [m["id"] for m in r.meta] == [m["id"] for m in meta]
    a, t = r.get_rows(range(50))
    np.testing.assert_array_equal(a, audio)
    np.testing.assert_array_equal(t, text)
    assert r.info["n_rows"] == 50 and r.info["n_shards"] == 5
    assert (path / "rows.jsonl").read_bytes().endswith(b"\n")


def test_writer_flushes_buffer_on_error_and_skips_done(tmp_path):
    meta, audio, text = store_arrays(8, 2, 2)
    path = tmp_path / "store"
    with pytest.raises(RuntimeError), FeatureStoreWriter(path, 2, 2, SETTINGS, None, shard_size=100) as w:
        for i in range(5):
            w.add(meta[i], audio[i], text[i])
        raise RuntimeError("extractor crashed")
    with FeatureStoreWriter(path, 2, 2, SETTINGS, None) as w:
        assert w.done_ids() == {m["id"] for m in meta[:5]}
        with pytest.raises(ValueError, match="already in the store"):
            w.add(meta[0], audio[0], text[0])


def test_writer_rejects_bad_vectors(tmp_path):
    meta, audio, text = store_arrays(3, 4, 2)
    with FeatureStoreWriter(tmp_path / "s", 4, 2, SETTINGS, None) as w:
        with pytest.raises(ValueError, match=r"audio vector has shape \(3,\), expected \(4,\)"):
            w.add(meta[0], audio[0][:3], text[0])
        bad = audio[0].copy()
        bad[1] = np.nan
        with pytest.raises(ValueError, match="non-finite"):
            w.add(meta[0], bad, text[0])
        with pytest.raises(ValueError, match="text vector missing"):
            w.add(meta[0], audio[0], None)
        w.add(meta[0], audio[0], text[0])
    assert len(FeatureStoreReader(tmp_path / "s")) == 1


def test_reopen_with_different_dims_or_settings_is_a_user_error(tmp_path):
    path = make_store(tmp_path, 10, 4, 3)
    with pytest.raises(UserError, match=r"audio_dim: store has 4, this run gives 5.*--overwrite"):
        FeatureStoreWriter(path, 5, 3, SETTINGS, "toyhash")
    with pytest.raises(UserError, match=r"settings\.seed: store has 0, this run gives 1"):
        FeatureStoreWriter(path, 4, 3, {"extractor": "toy", "seed": 1}, "toyhash")
    with pytest.raises(UserError, match=r"manifest: store was extracted from sha256 toyhash"):
        FeatureStoreWriter(path, 4, 3, SETTINGS, "otherhash")
    (path / "notes.txt").write_text("mine")
    with FeatureStoreWriter(path, 5, 3, SETTINGS, "toyhash", overwrite=True) as w:
        assert w.done_ids() == set()
    assert (path / "notes.txt").read_text() == "mine"  # --overwrite deletes only the store's own files
    assert FeatureStoreReader(path).audio_dim == 5 and len(FeatureStoreReader(path)) == 0


def test_writer_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "data.csv").write_text("a,b\n")
    with pytest.raises(UserError, match=r"x: folder exists, is not empty and is not a feature store"):
        FeatureStoreWriter(tmp_path / "x", 4, 0, SETTINGS, None)


def test_missing_or_corrupt_store_json_names_it(tmp_path):
    path = make_store(tmp_path, 5, 3, 0)
    (path / "store.json").write_text("{not json")
    with pytest.raises(UserError, match=r"store\.json: corrupt store\.json"):
        FeatureStoreReader(path)
    (path / "store.json").unlink()
    with pytest.raises(UserError, match=r"store\.json: missing; .* is not a feature store"):
        FeatureStoreReader(path)


def test_corrupt_shard_names_it(tmp_path):
    path = make_store(tmp_path, 20, 3, 2, shard_size=10)
    (path / "shards" / "part-00001.npz").write_bytes(b"garbage")
    r = FeatureStoreReader(path)
    r.get_rows([0, 1])  # shard 0 is fine
    with pytest.raises(UserError, match=r"part-00001\.npz: corrupt shard"):
        r.get_rows([15])


def test_audio_only_store(tmp_path):
    path = make_store(tmp_path, 12, 4, 0)
    r = FeatureStoreReader(path)
    a, t = r.get_rows([3, 1])
    assert a.shape == (2, 4) and t.shape == (2, 0)
    mm = MemmapStore(build_memmap(path, tmp_path / "mm"))
    a2, t2 = mm.get_rows([3, 1])
    np.testing.assert_array_equal(a, a2)
    assert t2.shape == (2, 0) and (tmp_path / "mm" / "text.f32").stat().st_size == 0


# -- memmap ----------------------------------------------------------------------------------------------------
def test_memmap_equals_store_row_for_row(tmp_path):
    path = make_store(tmp_path, 45, 7, 5, shard_size=8)
    out = build_memmap(path, tmp_path / "mm")
    assert sorted(p.name for p in out.iterdir()) == ["audio.f32", "index.jsonl", "memmap.json", "text.f32"]
    assert (out / "audio.f32").stat().st_size == 45 * 7 * 4
    r, mm = FeatureStoreReader(path), MemmapStore(out)
    assert mm.meta == r.meta and mm.info == r.info
    assert (mm.audio_dim, mm.text_dim, len(mm)) == (7, 5, 45)
    for idx in (list(range(45)), [44, 3, 3, 20, 0, -2]):
        a1, t1 = r.get_rows(idx)
        a2, t2 = mm.get_rows(idx)
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(t1, t2)
    raw = np.fromfile(out / "audio.f32", dtype="<f4").reshape(45, 7)  # plain C-order float32 on disk
    np.testing.assert_array_equal(raw, store_arrays(45, 7, 5)[1])
    assert isinstance(open_store(out), MemmapStore) and isinstance(open_store(path), FeatureStoreReader)


def test_memmap_is_idempotent_and_refuses_stale_without_overwrite(tmp_path):
    path = make_store(tmp_path, 20, 3, 2)
    out = build_memmap(path, tmp_path / "mm")
    stamp = (out / "memmap.json").stat().st_mtime_ns
    assert build_memmap(path, out) == out
    assert (out / "memmap.json").stat().st_mtime_ns == stamp  # up to date: nothing rewritten
    meta, audio, text = store_arrays(25, 3, 2)
    with FeatureStoreWriter(path, 3, 2, SETTINGS, "toyhash") as w:
        for i in range(20, 25):
            w.add(meta[i], audio[i], text[i])
    with pytest.raises(UserError, match=r"mm: memmap folder is out of date .*--overwrite"):
        build_memmap(path, out)
    build_memmap(path, out, overwrite=True)
    mm = MemmapStore(out)
    assert len(mm) == 25
    np.testing.assert_array_equal(mm.get_rows(range(25))[0], audio)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mm", "store"]  # no temp folders left behind


def test_memmap_refuses_foreign_folder_and_damaged_files_are_named(tmp_path):
    path = make_store(tmp_path, 10, 3, 2)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match=r"busy: exists and is not a memmap folder"):
        build_memmap(path, tmp_path / "busy", overwrite=True)
    out = build_memmap(path, tmp_path / "mm")
    with (out / "text.f32").open("r+b") as fh:
        fh.truncate(12)
    with pytest.raises(UserError, match=r"text\.f32: 12 bytes, expected 80 bytes"):
        MemmapStore(out)
    with pytest.raises(UserError, match=r"busy: neither a feature store .* nor a memmap folder"):
        open_store(tmp_path / "busy")


def test_memmap_store_pickles_without_its_arrays(tmp_path):
    import pickle  # in memory only: this is how DataLoader workers receive a dataset

    out = make_store(tmp_path, 200, 64, 64, memmap=True)
    mm = MemmapStore(out)
    a, _ = mm.get_rows([5, 1])
    clone = pickle.loads(pickle.dumps(mm))
    assert len(pickle.dumps(mm)) < 200 * 64 * 4  # the mapped matrices are not copied into the pickle
    np.testing.assert_array_equal(clone.get_rows([5, 1])[0], a)


def test_no_pickles_written(tmp_path):
    path = make_store(tmp_path, 30, 4, 3, shard_size=8)
    build_memmap(path, tmp_path / "mm")
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != LOCK_NAME]  # the lock holds a pid
    assert {p.suffix for p in files} == {".npz", ".f32", ".json", ".jsonl"}
    for shard in (path / "shards").glob("*.npz"):
        with zipfile.ZipFile(shard) as z:
            assert sorted(z.namelist()) == ["audio.npy", "text.npy"]
        with np.load(shard, allow_pickle=False) as z:
            assert z["audio"].dtype == np.float32 and z["text"].dtype == np.float32


# -- manifest ----------------------------------------------------------------------------------------------------
def test_read_manifest_and_hash(tmp_path):
    p = tmp_path / "meta_manifest.jsonl"
    rows = [{"id": "A/1", "label": "joy"}, {"id": "A/2", "label": "fear"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n", encoding="utf-8")
    assert read_manifest(p) == rows
    assert manifest_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    p.write_text(json.dumps(rows[0]) + "\n{bad\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"meta_manifest\.jsonl:2: not valid JSON"):
        read_manifest(p)
    p.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"meta_manifest\.jsonl:2: duplicate id 'A/1' \(first seen on line 1\)"):
        read_manifest(p)
    with pytest.raises(UserError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


# -- CLI -----------------------------------------------------------------------------------------------------------
def test_cli_builds_then_skips_and_reports_errors(tmp_path, capsys, one_line_error):
    path = make_store(tmp_path, 15, 3, 2)
    out = tmp_path / "mm"
    assert run_cli(build_memmap_main, ["--store", str(path), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "built" in text and "rows      15" in text
    assert run_cli(build_memmap_main, ["--store", str(path), "--out", str(out), "--quiet"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert run_cli(build_memmap_main, ["--store", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "none: feature store folder not found" in one_line_error()
    with pytest.raises(SystemExit) as exc:
        build_memmap_main(["--help"])
    assert exc.value.code == 0


def test_entry_point_script_runs(tmp_path):
    root = Path(__file__).resolve().parents[1]
    path = make_store(tmp_path, 6, 3, 2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(root / "build_memmap_features.py"), "--store", str(path), "--out", str(tmp_path / "m")]
    done = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and "rows      6" in done.stdout
    bad = subprocess.run([*cmd[:3], str(tmp_path), "--out", str(tmp_path / "m2")], capture_output=True, text=True,
                         env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
