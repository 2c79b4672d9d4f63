"""`mer-builder build --shard K/N` + `--merge-shards N` (issue 15, item 3): N parts normalize disjoint thirds of the
clips into one folder, the merge checks them and writes the manifest an unsharded build writes."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from raw_fixtures import make_meld, make_ravdess, write_tone

import mer_builder.prepare.build_manifest as build_manifest
import mer_builder.prepare.normalize_audio as normalize_audio
from mer_builder.cli import main
from mer_builder.ffmpeg import ffmpeg_exe
from mer_builder.lock import lock_folder
from mer_builder.prepare.build_parts import part_dir, shard_of

N = 3
FILES = ("meta_manifest.jsonl", "meta_manifest.csv", "summary.json")


def _raw_tree(root: Path) -> list[str]:
    """RAVDESS and MELD in their real layouts (a real AAC clip, a corrupt clip, a too-short clip) and a folder
    corpus split by speaker (with a WAV cut short of its header); the build flags for them."""
    make_ravdess(root / "RAVDESS")
    make_meld(root / "MELD.Raw")
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "sine=frequency=330:duration=0.5:sample_rate=48000", "-ac", "2", "-c:a", "aac",
                    str(root / "MELD.Raw" / "train" / "train_splits" / "dia0_utt0.mp4")], check=True)
    (root / "MELD.Raw" / "test" / "output_repeated_splits_test" / "dia1_utt0.mp4").write_bytes(
        b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 300)
    t = np.arange(int(0.1 * 48000)) / 48000
    sf.write(root / "RAVDESS" / "Actor_02" / "03-01-08-01-02-02-02.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 48000,
             subtype="PCM_16")
    mine = root / "Mine"
    for spk in ("ann", "bob", "cy", "dee", "eve"):
        for label in ("anger", "joy", "sadness"):
            write_tone(mine / label / f"{spk}_1.wav", 16000, 1, 0.4 + 0.05 * len(spk))
    cut = write_tone(mine / "joy" / "bob_2.wav", 16000, 1, 1.0)
    cut.write_bytes(cut.read_bytes()[: 44 + 16000])  # header says 1 s, the file holds 0.5 s
    return ["--raw-root", str(root), "--datasets", "ravdess,meld", "--folder", f"Mine={mine}",
            "--option", "Mine.speaker_regex=^([a-z]+)_", "--jobs", "1", "--quiet"]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded")
    flags = _raw_tree(tmp / "raw")
    plain, sharded = tmp / "plain", tmp / "sharded"
    assert main(["build", *flags, "--out", str(plain)]) == 0
    for k in range(N):
        assert main(["build", *flags, "--out", str(sharded), "--shard", f"{k}/{N}"]) == 0
    assert not (sharded / "meta_manifest.jsonl").exists()  # a part writes no manifest
    return tmp, flags, plain, sharded


def _wavs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "audio").rglob("*.wav"))}


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def _part(out: Path, k: int) -> Path:
    return part_dir(out, k, N) / "part.json"


def test_three_parts_merged_equal_the_unsharded_build(builds, capsys):
    tmp, flags, plain, sharded = builds
    records = [json.loads(_part(sharded, k).read_text(encoding="utf-8")) for k in range(N)]
    ids = [[e["id"] for e in rec["entries"]] for rec in records]
    assert all(ids), "every part has clips"
    assert all(shard_of(i, N) == k for k in range(N) for i in ids[k])
    assert records[0]["inputs"]["clips"] == sum(map(len, ids)) == len({i for part in ids for i in part})
    audio = {p: p.stat().st_mtime_ns for p in (sharded / "audio").rglob("*.wav")}

    capsys.readouterr()
    assert main(["build", *flags, "--out", str(sharded), "--merge-shards", str(N)]) == 0
    printed = capsys.readouterr().out
    assert f"merged {N} part(s), whose last runs decoded {sum(map(len, ids))} clip(s), reused 0" in printed
    assert "-> OK" in printed  # validated, sha256 included
    assert {p: p.stat().st_mtime_ns for p in (sharded / "audio").rglob("*.wav")} == audio  # nothing redone

    for name in FILES:
        assert (sharded / name).read_bytes() == (plain / name).read_bytes(), name
    assert _wavs(sharded) == _wavs(plain)
    rows = [json.loads(x) for x in (sharded / "meta_manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["split"] for r in rows if r["dataset"] == "Mine"} == {"train", "val", "test"}
    assert all(hashlib.sha256((sharded / r["audio_path"]).read_bytes()).hexdigest() == r["sha256"] for r in rows)
    rep_s, rep_p = (json.loads((o / "build_report.json").read_text(encoding="utf-8")) for o in (sharded, plain))
    for key in ("rows", "datasets", "split", "warnings", "policy"):
        assert rep_s[key] == rep_p[key], key
    assert [s["reason"] for s in rep_s["datasets"]["MELD"]["normalization_skipped"]] == ["undecodable"]
    assert [t["id"] for t in rep_s["datasets"]["Mine"]["truncated_kept"]] == ["Mine/joy/bob_2"]
    assert [p["shard"] for p in rep_s["merged_parts"]["parts"]] == [f"{k}/{N}" for k in range(N)]

    # a merge again, and a plain build into the merged folder, reuse every clip (the parts' states were folded in)
    assert main(["build", *flags, "--out", str(sharded), "--merge-shards", str(N)]) == 0
    assert main(["build", *flags, "--out", str(sharded)]) == 0
    assert f"decoded 0 clip(s), reused {sum(map(len, ids))} from an earlier run" in capsys.readouterr().out
    assert (sharded / "meta_manifest.jsonl").read_bytes() == (plain / "meta_manifest.jsonl").read_bytes()

    # a part's first run starts from what a plain build of the folder decoded
    assert main(["build", *flags, "--out", str(plain), "--shard", "1/2"]) == 0
    assert "(decoded 0, reused" in capsys.readouterr().out


@pytest.fixture
def parts(builds, tmp_path) -> tuple[list[str], Path]:
    """The N parts of a build, not merged yet."""
    flags = builds[1]
    out = tmp_path / "out"
    for k in range(N):
        assert main(["build", *flags, "--out", str(out), "--shard", f"{k}/{N}"]) == 0
    return flags, out


def test_a_missing_or_running_part_is_one_line(parts, capsys):
    flags, out = parts
    merge = ["build", *flags, "--out", str(out), "--merge-shards", str(N)]
    _part(out, 1).unlink()
    assert _one_line_error(capsys, merge) == (
        f"error: --merge-shards 3: part 1/3 is missing (no {_part(out, 1)}); run this build with --shard 1/3 first "
        "(a killed part resumes where it stopped)")
    assert _one_line_error(capsys, [*merge[:-1], "4"]).startswith("error: --merge-shards 4: part 0/4 is missing")
    with lock_folder(part_dir(out, 0, N)):
        assert _one_line_error(capsys, merge).startswith(
            f"error: --merge-shards 3: part 0/3 is still being built: {part_dir(out, 0, N)} is in use")
    assert not (out / "meta_manifest.jsonl").exists()


def test_a_part_made_with_other_settings_or_inputs_is_one_line(parts, capsys):
    flags, out = parts
    merge = ["build", *flags, "--out", str(out), "--merge-shards", str(N)]
    assert main(["build", *flags, "--out", str(out), "--shard", "2/3", "--min-duration", "0.2"]) == 0
    assert _one_line_error(capsys, merge) == (
        f"error: --merge-shards 3: part 2/3 ({_part(out, 2)}) was made with --min-duration 0.2, but this build has "
        "0.3; merge with the parts' flags, or rerun the part with --shard 2/3 and these")
    assert main(["build", *flags, "--out", str(out), "--shard", "2/3"]) == 0  # redone with the same flags
    err = _one_line_error(capsys, [*merge, "--policy", "ravdess.calm=drop"])
    assert err.startswith(f"error: --merge-shards 3: part 0/3 ({_part(out, 0)}) was made from other inputs (")
    assert not (out / "meta_manifest.jsonl").exists()
    assert main(merge) == 0


def _edit(path: Path, fn) -> None:
    rec = json.loads(path.read_text(encoding="utf-8"))
    fn(rec)
    path.write_text(json.dumps(rec), encoding="utf-8")


def test_a_missing_or_duplicated_clip_or_a_changed_file_is_one_line(parts, capsys):
    flags, out = parts
    merge = ["build", *flags, "--out", str(out), "--merge-shards", str(N)]
    original = {k: _part(out, k).read_bytes() for k in range(N)}
    first = json.loads(original[0])["entries"][0]

    _edit(_part(out, 0), lambda rec: rec["entries"].pop(0))
    assert _one_line_error(capsys, merge) == (
        f"error: --merge-shards 3: 1 clip(s) in no part, e.g. id {first['id']!r} of part 0/3 ({_part(out, 0)} does "
        "not list it); rerun this build with --shard 0/3")
    _part(out, 0).write_bytes(original[0])

    _edit(_part(out, 2), lambda rec: rec["entries"].append(first))
    assert _one_line_error(capsys, merge) == (
        f"error: --merge-shards 3: id {first['id']!r} is in two parts: {_part(out, 0)} and {_part(out, 2)}; rerun "
        "those parts with their --shard K/3")
    _part(out, 2).write_bytes(original[2])

    _part(out, 1).write_text("{", encoding="utf-8")  # as no kill can leave it: the record is written atomically
    assert _one_line_error(capsys, merge).startswith(f"error: {_part(out, 1)}: unreadable part record (")
    _part(out, 1).write_bytes(original[1])

    wav = out / first["output"] if first["sha256"] else next((out / "audio").rglob("*.wav"))
    k = shard_of(wav.relative_to(out / "audio").with_suffix("").as_posix(), N)
    wav.write_bytes(wav.read_bytes()[:-2])
    assert _one_line_error(capsys, merge) == (
        f"error: {wav}: missing or changed since part {k}/3 wrote it ({_part(out, k)}); rerun this build with "
        f"--shard {k}/3 (it redoes only what changed)")
    assert not (out / "meta_manifest.jsonl").exists()
    assert main(["build", *flags, "--out", str(out), "--shard", f"{k}/3"]) == 0
    assert "(decoded 1, reused" in capsys.readouterr().out
    assert main(merge) == 0


def test_bad_shard_values_are_one_line(builds, tmp_path, capsys):
    flags = builds[1]
    base = ["build", *flags, "--out", str(tmp_path / "out")]
    assert _one_line_error(capsys, [*base, "--shard", "3/3"]) == (
        "error: --shard 3/3: K must be 0 to N-1 (parts 0/3 ... 2/3)")
    assert _one_line_error(capsys, [*base, "--shard", "4/3"]) == (
        "error: --shard 4/3: K must be 0 to N-1 (parts 0/3 ... 2/3)")
    assert _one_line_error(capsys, [*base, "--shard", "0/0"]) == (
        "error: --shard 0/0: N must be 1 or more (K/N: part K of N parts, 0 <= K < N)")
    for bad in ("x", "1", "-1/3", "1/3/2"):
        assert _one_line_error(capsys, [*base, f"--shard={bad}"]) == (
            f"error: --shard {bad!r}: expected K/N, this part's number K of N parts (e.g. 0/4)")
    assert _one_line_error(capsys, [*base, "--merge-shards", "0"]) == (
        "error: --merge-shards 0: expected a number >= 1 (the N of the parts' --shard K/N)")
    assert _one_line_error(capsys, [*base, "--merge-shards", "x"]) == (
        "error: argument --merge-shards: invalid int value: 'x' (see mer-builder build --help)")
    assert _one_line_error(capsys, [*base, "--shard", "0/3", "--merge-shards", "3"]) == (
        "error: argument --merge-shards: not allowed with argument --shard (see mer-builder build --help)")
    assert not (tmp_path / "out").exists()


def test_a_killed_part_leaves_no_record_and_resumes(builds, tmp_path, monkeypatch, capsys):
    flags = builds[1]
    out = tmp_path / "out"
    real, calls = normalize_audio.normalize_one, []

    def dies_on_the_third(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(normalize_audio, "normalize_one", dies_on_the_third)
    assert main(["build", *flags, "--out", str(out), "--shard", "0/1"]) == 130
    assert capsys.readouterr().err == "interrupted (a rerun resumes where this one stopped)\n"
    monkeypatch.undo()
    folder = part_dir(out, 0, 1)
    assert sorted(p.name for p in folder.iterdir()) == [".mer.lock", "normalize_state.jsonl"]  # no (partial) record
    assert len((folder / "normalize_state.jsonl").read_text(encoding="utf-8").splitlines()) == 2
    assert _one_line_error(capsys, ["build", *flags, "--out", str(out), "--merge-shards", "1"]).startswith(
        "error: --merge-shards 1: part 0/1 is missing")
    assert main(["build", *flags, "--out", str(out), "--shard", "0/1"]) == 0
    assert "(decoded " in capsys.readouterr().out
    record = (folder / "part.json").read_bytes()
    assert sum(e["cached"] for e in json.loads(record)["entries"]) == 2

    def dump_half(obj, fh, **kwargs):  # killed while the record is being written
        fh.write(json.dumps(obj)[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(build_manifest.json, "dump", dump_half)
    assert main(["build", *flags, "--out", str(out), "--shard", "0/1"]) == 130
    monkeypatch.undo()
    assert (folder / "part.json").read_bytes() == record and not (folder / "part.json.partial").exists()
    assert main(["build", *flags, "--out", str(out), "--merge-shards", "1"]) == 0
