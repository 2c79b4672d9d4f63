"""`mer-builder shards`: WebDataset tar shards of a manifest (audio + row per sample) and their index.json:
every written row round-trips byte for byte, the order and the shards are deterministic (split-pure, manifest order,
fixed headers), the size limits hold, rows without usable audio are counted, never dropped silently, an interrupted
run leaves no index, a rebuild removes the shards it no longer needs, and mistakes are one-line errors."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mer_builder import shards as shards_mod
from mer_builder.cli import main
from mer_builder.prepare.build_manifest import BuildError
from mer_builder.shards import BAD_AUDIO_PATH, MISSING_AUDIO, SHA256_MISMATCH, sample_key, write_shards

SR = 16000


def make_manifest(root: Path, n: int = 11, faults: bool = False) -> Path:
    """`n` rows cycling through the splits test, train, val, extra (so that ordering matters); with `faults`,
    one row whose WAV is missing, one with an absolute audio_path and one whose sha256 is wrong."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        split = ("test", "train", "val", "extra")[i % 4]
        rid = f"TOY/{split}/spk{i % 3}/utt.{i:03d}"  # dots and slashes: not key-safe as they are
        rel = f"audio/TOY/{split}/utt{i:03d}.wav"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.1 * rng.standard_normal(800 + 97 * i)).astype(np.float32), SR, subtype="PCM_16")
        rows.append({"id": rid, "dataset": "TOY", "split": split, "audio_path": rel, "label": "joy",
                     "text": f"zé {i}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    if faults:
        (root / rows[1]["audio_path"]).unlink()
        rows[2]["audio_path"] = "/etc/passwd"
        rows[3]["sha256"] = "0" * 64
    manifest = root / "meta_manifest.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return manifest


def read_shard(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def test_every_row_round_trips_in_split_pure_shards_in_manifest_order(tmp_path):
    manifest = make_manifest(tmp_path / "data")
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    result = write_shards(manifest, tmp_path / "shards", shard_size=2)
    index = json.loads((tmp_path / "shards" / "index.json").read_text(encoding="utf-8"))
    assert index == result.index and index["format"] == "mer-webdataset-shards" and index["version"] == 1
    assert index["manifest"] == {"name": "meta_manifest.jsonl", "sha256": hashlib.sha256(manifest.read_bytes())
                                 .hexdigest(), "rows": 11}
    expected_order = [r["id"] for split in ("train", "val", "test", "extra") for r in rows if r["split"] == split]
    written = []
    for number, entry in enumerate(index["shards"]):
        assert entry["name"] == f"shard-{number:06d}.tar"
        members = read_shard(tmp_path / "shards" / entry["name"])
        assert [m.name for m, _ in members] == [f"{k}.{ext}" for k in entry["keys"] for ext in ("wav", "json")]
        assert all(m.mtime == 0 and m.uid == m.gid == 0 and m.uname == m.gname == "" and m.mode == 0o644
                   for m, _ in members)
        assert {json.loads(data)["split"] for m, data in members if m.name.endswith(".json")} == {entry["split"]}
        raw = (tmp_path / "shards" / entry["name"]).read_bytes()
        assert entry["bytes"] == len(raw) and entry["sha256"] == hashlib.sha256(raw).hexdigest()
        for (wav_info, wav), (_, js), rid, (offset, size), sha in zip(members[::2], members[1::2], entry["ids"],
                                                                       entry["wav"], entry["sha256s"], strict=True):
            row = next(r for r in rows if r["id"] == rid)
            assert wav == (tmp_path / "data" / row["audio_path"]).read_bytes() == raw[offset:offset + size]
            assert json.loads(js.decode("utf-8")) == row and sha == row["sha256"]
            assert "." not in wav_info.name[:-4] and "/" not in wav_info.name
            written.append(rid)
    assert written == expected_order
    assert [e["samples"] for e in index["shards"]] == [2, 1, 2, 1, 2, 1, 2]  # a split never shares a shard
    assert index["totals"]["by_split"] == {"train": 3, "val": 3, "test": 3, "extra": 2}
    assert index["skipped"] == {"count": 0, "by_reason": {}, "rows": []}


def test_the_same_manifest_gives_byte_identical_shards(tmp_path):
    manifest = make_manifest(tmp_path / "data")
    write_shards(manifest, tmp_path / "a", shard_size=3)
    write_shards(manifest, tmp_path / "b", shard_size=3)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_keys_are_numbered_safe_and_short():
    assert sample_key(42, "RAVDESS/Actor_01/03-01.wav") == "00000042_RAVDESS_Actor_01_03-01_wav"
    assert sample_key(7, "日本/…") == "00000007"
    assert len(sample_key(1, "x" * 500)) == 9 + 80


def test_size_limits_close_shards_and_a_large_clip_gets_one_of_its_own(tmp_path):
    manifest = make_manifest(tmp_path / "data", n=12)
    sizes = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        sizes[row["id"]] = (tmp_path / "data" / row["audio_path"]).stat().st_size
    limit_mb = 2.5 * 1024 / 2**20  # 2.5 KiB: one or two clips per shard
    index = write_shards(manifest, tmp_path / "shards", shard_size=100, max_shard_mb=limit_mb).index
    for entry in index["shards"]:
        payload = sum(size for _, size in entry["wav"])  # the WAVs alone
        assert entry["samples"] == 1 or payload <= limit_mb * 2**20
    assert any(e["samples"] == 1 and e["wav"][0][1] > limit_mb * 2**20 for e in index["shards"])
    assert sum(e["samples"] for e in index["shards"]) == 12


def test_rows_without_usable_audio_are_counted_not_dropped_silently(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data", faults=True)
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert main(["shards", str(manifest), "--out", str(tmp_path / "shards"), "--quiet"]) == 0
    out = capsys.readouterr().out
    index = json.loads((tmp_path / "shards" / "index.json").read_text(encoding="utf-8"))
    skipped = index["skipped"]
    assert skipped["count"] == 3
    assert skipped["by_reason"] == {BAD_AUDIO_PATH: 1, MISSING_AUDIO: 1, SHA256_MISMATCH: 1}
    assert {(s["id"], s["reason"], s["line"]) for s in skipped["rows"]} == {
        (rows[1]["id"], MISSING_AUDIO, 2), (rows[2]["id"], BAD_AUDIO_PATH, 3), (rows[3]["id"], SHA256_MISMATCH, 4)}
    written = [rid for e in index["shards"] for rid in e["ids"]]
    assert len(written) == index["totals"]["samples"] == 8 and set(written) | {s["id"] for s in skipped["rows"]} \
        == {r["id"] for r in rows}
    assert "Wrote 8 samples" in out and "Skipped 3 row(s) (bad_audio_path 1, missing_audio 1, sha256_mismatch 1)" \
        in out and "data.shards:" in out


def test_an_interrupted_run_leaves_no_index_and_a_rebuild_removes_stale_shards(tmp_path, monkeypatch):
    manifest = make_manifest(tmp_path / "data")
    out = tmp_path / "shards"
    write_shards(manifest, out, shard_size=1)
    assert len(list(out.glob("shard-*.tar"))) == 11
    calls = {"n": 0}
    real_add = shards_mod._ShardWriter.add

    def failing_add(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(28, "No space left on device")
        return real_add(self, *args)

    monkeypatch.setattr(shards_mod._ShardWriter, "add", failing_add)
    with pytest.raises(OSError):
        write_shards(manifest, out, shard_size=3)
    assert not (out / "index.json").exists()  # the old index was removed first: no index names a mixed set
    assert not list(out.glob("*.partial"))
    monkeypatch.undo()
    index = write_shards(manifest, out, shard_size=3).index
    assert sorted(p.name for p in out.iterdir()) == sorted([e["name"] for e in index["shards"]] + ["index.json"])
    assert len(index["shards"]) == 4  # train 3, val 3, test 3, extra 2


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_mistakes_are_one_line_errors(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data", n=3)
    out = str(tmp_path / "shards")
    assert "does not exist" in _one_line_error(capsys, ["shards", str(tmp_path / "nope.jsonl"), "--out", out])
    assert "--shard-size 0" in _one_line_error(capsys, ["shards", str(manifest), "--out", out, "--shard-size", "0"])
    assert "--max-shard-mb -1" in _one_line_error(capsys, ["shards", str(manifest), "--out", out,
                                                           "--max-shard-mb", "-1"])
    (tmp_path / "file").write_text("x")
    assert "is a file" in _one_line_error(capsys, ["shards", str(manifest), "--out", str(tmp_path / "file")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(manifest.read_text(encoding="utf-8") + "{not json\n", encoding="utf-8")
    assert "bad.jsonl line 4: not JSON" in _one_line_error(capsys, ["shards", str(bad), "--out", out])
    dup = tmp_path / "data" / "dup.jsonl"
    first = manifest.read_text(encoding="utf-8").splitlines()[0]
    dup.write_text(first + "\n" + first + "\n", encoding="utf-8")
    assert "line 2: duplicate id" in _one_line_error(capsys, ["shards", str(dup), "--out", out])
    with pytest.raises(BuildError, match="no rows"):
        empty = tmp_path / "empty.jsonl"
        empty.write_text("\n")
        write_shards(empty, out)
    assert main(["shards", "--help"]) == 0
