"""End to end: `mer-builder build` on raw trees in the real RAVDESS and MELD layouts (faults included)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from raw_fixtures import make_folder, make_meld, make_ravdess

from mer_builder.cli import main
from mer_builder.ffmpeg import ffmpeg_exe
from mer_builder.prepare.validate import validate

SRC = Path(__file__).resolve().parents[1] / "src"
SHORT_ID = "RAVDESS/Actor_02/03-01-08-01-02-02-02"
CORRUPT_ID = "MELD/test/dia1_utt0"
AAC_ID = "MELD/train/dia0_utt0"


def _raw_tree(root: Path):
    rav = make_ravdess(root / "RAVDESS")
    meld = make_meld(root / "MELD.Raw")
    # a real AAC-in-MP4 clip (48 kHz stereo), made by ffmpeg from a tone
    aac = root / "MELD.Raw" / "train" / "train_splits" / "dia0_utt0.mp4"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "sine=frequency=330:duration=0.5:sample_rate=48000", "-ac", "2", "-c:a", "aac", str(aac)],
                   check=True)
    # a corrupt clip and a too-short clip
    (root / "MELD.Raw" / "test" / "output_repeated_splits_test" / "dia1_utt0.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 300)
    t = np.arange(int(0.1 * 48000)) / 48000
    sf.write(root / "RAVDESS" / "Actor_02" / "03-01-08-01-02-02-02.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 48000,
             subtype="PCM_16")
    return rav, meld


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    rav, meld = _raw_tree(tmp / "raw")
    out = tmp / "out"
    rc = main(["build", "--datasets", "ravdess,meld", "--raw-root", str(tmp / "raw"), "--out", str(out),
               "--jobs", "2", "--quiet"])
    assert rc == 0
    return tmp, out, rav, meld


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "meta_manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def test_manifest_rows_are_exactly_the_expected_ones(built):
    tmp, out, rav, meld = built
    rows = {r["id"]: r for r in _rows(out)}
    expected_ids = [i for i in rav.ids if i != SHORT_ID] + [i for i in meld.ids if i != CORRUPT_ID]
    assert list(rows) == expected_ids
    for corpus in (rav, meld):
        for item_id, fields in corpus.expected.items():
            if item_id in rows:
                for key in ("label", "text", "speaker", "turn", "dialogue_id"):
                    if key in fields:
                        assert rows[item_id][key] == fields[key], (item_id, key)
                if fields.get("split"):
                    assert rows[item_id]["split"] == fields["split"]

    row = dict(rows[AAC_ID])
    wav = out / row["audio_path"]
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert row.pop("duration_s") == info.frames / 16000 == pytest.approx(0.5, abs=0.03)
    assert row.pop("sha256") == hashlib.sha256(wav.read_bytes()).hexdigest()
    assert row == {
        "id": "MELD/train/dia0_utt0", "dataset": "MELD", "split": "train",
        "audio_path": "audio/MELD/train/dia0_utt0.wav", "text": "Oh my God, he’s lost it. He’s totally lost it.",
        "label": "sadness", "source_label": "sadness", "speaker": "MELD/Phoebe", "gender": None,
        "domain": "conversational", "dialogue_id": "MELD/train/dia0", "turn": 0, "intensity": None,
        "valence": None, "arousal": None, "dominance": None, "language": "en", "notes": "sentiment: negative",
    }
    y, _ = sf.read(wav)
    assert abs(np.argmax(np.abs(np.fft.rfft(y))) * 16000 / len(y) - 330) < 5  # the tone survived AAC + resampling

    calm = rows["RAVDESS/Actor_01/03-01-02-02-02-01-01"]
    assert calm["source_label"] == "calm" and calm["label"] == "neutral" and calm["duration_s"] == 0.5
    assert calm["notes"] == "calm->neutral (policy ravdess_calm); text from statement code 02"
    # two RAVDESS speakers: one in train, one in test, never both
    splits = {r["speaker"]: r["split"] for r in rows.values() if r["dataset"] == "RAVDESS"}
    assert sorted(splits.values()) == ["test", "train"]
    assert len({(r["speaker"], r["split"]) for r in rows.values() if r["dataset"] == "RAVDESS"}) == 2
    assert not (out / "audio" / "RAVDESS" / "Actor_02" / "03-01-08-01-02-02-02.wav").exists()


def test_build_report_lists_every_skip_with_its_reason(built):
    tmp, out, rav, meld = built
    report = json.loads((out / "build_report.json").read_text(encoding="utf-8"))
    assert report["policy"]["ravdess.calm"] == "neutral" and report["options"]["datasets"] == "ravdess,meld"
    ds = report["datasets"]
    assert ds["RAVDESS"]["normalization_skipped"] == [{
        "id": SHORT_ID, "path": str(tmp / "raw" / "RAVDESS" / "Actor_02" / "03-01-08-01-02-02-02.wav"),
        "reason": "too short", "detail": "0.100 s < min_duration_s 0.3 s"}]
    [corrupt] = ds["MELD"]["normalization_skipped"]
    assert (corrupt["id"], corrupt["reason"]) == (CORRUPT_ID, "undecodable")
    assert corrupt["detail"].startswith("ffmpeg: ")
    for corpus, name in ((rav, "RAVDESS"), (meld, "MELD")):
        got = ds[name]
        assert got["found"] == corpus.found and got["dropped"] == corpus.dropped
        for rel, reason in corpus.skipped:
            assert any(s["path"] == str(corpus.root / rel) and reason in s["reason"] for s in got["skipped"]), rel
        assert len(got["skipped"]) == len(corpus.skipped)
    assert (ds["RAVDESS"]["split_method"], ds["MELD"]["split_method"]) == ("speaker", "official")
    assert (ds["RAVDESS"]["rows"], ds["MELD"]["rows"]) == (5, 5)

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["rows"]["MELD"] == {"train": 3, "val": 1, "test": 1}
    assert summary["skipped"]["MELD"]["audio: undecodable"] == 1
    assert summary["skipped"]["MELD"]["skipped: row N (Sr No. N): no clip diaN_uttN.mp4 in the train folder"] == 1
    assert (out / "class_histogram.png").read_bytes()[:4] == b"\x89PNG"


def test_validate_passes_and_a_rerun_redoes_nothing(built, capsys):
    tmp, out, rav, meld = built
    rep = validate(out / "meta_manifest.jsonl")
    assert rep.ok, rep.errors
    assert main(["validate", str(out / "meta_manifest.jsonl")]) == 0

    audio = sorted((out / "audio").rglob("*.wav"))
    before = {p: p.stat().st_mtime_ns for p in audio}
    manifest = (out / "meta_manifest.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["build", "--datasets", "meld,ravdess", "--raw-root", str(tmp / "raw"), "--out", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "decoded 0 clip(s), reused 12 from an earlier run" in printed
    assert "-> OK" in printed
    assert {p: p.stat().st_mtime_ns for p in sorted((out / "audio").rglob("*.wav"))} == before
    rows = _rows(out)  # same rows, now MELD first (the order asked for)
    assert sorted(json.dumps(r, ensure_ascii=False) for r in rows) == sorted(manifest.decode().splitlines())


def test_validate_cli_fails_with_exit_1(built, tmp_path, capsys):
    _, out, _, _ = built
    bad = tmp_path / "meta_manifest.jsonl"
    rows = _rows(out)
    rows[0]["label"] = "happy"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["validate", str(bad), "--no-audio"]) == 1
    assert "field 'label' is 'happy'" in capsys.readouterr().out


def test_folder_corpus_and_path_options(tmp_path, capsys):
    c = make_folder(tmp_path / "mine")
    rav = make_ravdess(tmp_path / "elsewhere" / "rav")
    out = tmp_path / "out"
    rc = main(["build", "--datasets", "ravdess", "--path", f"ravdess={rav.root}", "--folder",
               f"MyCorpus={c.root}", "--option", "MyCorpus.label_map=happy:joy,mumble:drop", "--out", str(out),
               "--jobs", "1", "--quiet", "--seed", "3"])
    assert rc == 0, capsys.readouterr().err
    rows = _rows(out)
    mine = {r["id"]: r for r in rows if r["dataset"] == "MyCorpus"}
    assert sorted(mine) == sorted(c.ids)
    assert {i: r["split"] for i, r in mine.items()} == {i: f["split"] for i, f in c.expected.items()}
    assert sorted(r["id"] for r in rows if r["dataset"] == "RAVDESS") == sorted(rav.ids)
    report = json.loads((out / "build_report.json").read_text())
    assert report["datasets"]["MyCorpus"]["split_method"] == "official"
    assert report["datasets"]["MyCorpus"]["dropped"] == c.dropped


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    make_ravdess(tmp_path / "raw" / "ravdess")
    base = ["build", "--raw-root", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--quiet"]
    assert _one_line_error(capsys, [*base, "--datasets", "ravdes"]) == (
        "error: --datasets: unknown dataset 'ravdes' (valid: RAVDESS, CREMA-D, MELD, IEMOCAP, ESD, EmoV-DB, MEAD, "
        "EmoDB, MSP-Podcast)")
    assert _one_line_error(capsys, [*base, "--datasets", "ravdess", "--policy", "ravdess.calm=maybe"]).startswith(
        "error: policy option 'ravdess.calm=maybe': 'maybe' is not valid for ravdess.calm")
    assert _one_line_error(capsys, [*base, "--datasets", "ravdess", "--ratios", "0.5,0.5"]) == (
        "error: --ratios '0.5,0.5': ratios must be three numbers train,val,test; got 2")
    assert _one_line_error(capsys, [*base, "--datasets", "ravdess", "--ratios", "nan,0,1"]) == (
        "error: --ratios 'nan,0,1': ratios must be >= 0, train > 0, and sum to 1; got nan,0,1")
    assert _one_line_error(capsys, [*base, "--datasets", "ravdess", "--min-duration", "nan"]) == (
        "error: --min-duration nan / --max-duration None: expected numbers with 0 <= min < max")
    assert _one_line_error(capsys, [*base, "--datasets", "ravdess", "--max-duration", "nan"]) == (
        "error: --min-duration 0.3 / --max-duration nan: expected numbers with 0 <= min < max")
    assert _one_line_error(capsys, [*base, "--datasets", "ravdess", "--max-duration", "inf"]) == (
        "error: --min-duration 0.3 / --max-duration inf: expected numbers with 0 <= min < max")
    assert _one_line_error(capsys, [*base, "--datasets", "ravdess", "--option", "ravdess.foo=1"]) == (
        "error: --option ravdess.foo=1: RAVDESS has no option 'foo' (its options: none)")
    assert _one_line_error(capsys, [*base, "--datasets", "ravdess", "--path", "ravdess=/no/such/dir"]) == (
        "error: --path ravdess=/no/such/dir: no such folder /no/such/dir")
    assert _one_line_error(capsys, ["build", "--datasets", "ravdess"]) == (
        "error: the following arguments are required: --out (see mer-builder build --help)")
    assert _one_line_error(capsys, [*base, "--datasets", "all", "--raw-root", str(tmp_path / "out")]) == (
        f"error: --raw-root {tmp_path / 'out'}: no such folder")
    assert not (tmp_path / "out").exists()
    inside = tmp_path / "raw" / "ravdess" / "built"
    assert _one_line_error(capsys, [*base[:-3], "--out", str(inside), "--quiet", "--datasets", "ravdess"]) == (
        f"error: --out {inside} is inside the RAVDESS folder {tmp_path / 'raw' / 'ravdess'}: choose an output "
        "folder outside every corpus")
    assert not inside.exists()
    rav = str(tmp_path / "raw" / "ravdess")
    assert _one_line_error(capsys, [*base, "--path", f"ravdess={rav}", "--path", f"RAVDESS={tmp_path}"]) == (
        f"error: --path RAVDESS={tmp_path}: RAVDESS is already given as {rav}")
    assert _one_line_error(capsys, [*base, "--folder", f"Mine={rav}", "--folder", f"Mine={tmp_path}"]) == (
        f"error: --folder Mine={tmp_path}: Mine is already given as {rav}")
    assert _one_line_error(capsys, ["validate", str(tmp_path), "--max-lines", "-1"]) == (
        "error: --max-lines -1: expected a number >= 0")
    (tmp_path / "afile").write_text("x")
    assert _one_line_error(capsys, ["make-demo", "--out", str(tmp_path / "afile"), "--quiet"]) == (
        f"error: {tmp_path / 'afile'} is a file, expected a folder")
    assert _one_line_error(capsys, ["download", "nosuch", "--dest", str(tmp_path / "dl")]).startswith(
        "error: unknown corpus 'nosuch'; expected one of: RAVDESS")


def _run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "mer_builder", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_python_m_reports_a_missing_corpus_in_one_line(tmp_path):
    make_ravdess(tmp_path / "raw" / "RAVDESS")
    proc = _run_module("build", "--datasets", "ravdess,meld", "--raw-root", str(tmp_path / "raw"), "--out",
                       str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: dataset MELD not found: no folder named like MELD under {tmp_path / 'raw'} "
                           "(or give --path meld=DIR)\n")
    assert not (tmp_path / "out").exists()

    proc = _run_module("validate", str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: manifest {tmp_path / 'nope.jsonl'} does not exist (expected a "
                           "meta_manifest.jsonl written by build)\n")
    proc = _run_module("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "build" in proc.stdout and "make-demo" in proc.stdout


def test_output_piped_into_a_closed_pipe_ends_quietly(built, monkeypatch):
    """`mer-builder ... | head`: the closed pipe is a BrokenPipeError (an OSError), not a traceback."""
    out = built[1]

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["validate", str(out / "meta_manifest.jsonl"), "--no-sha"]) == 0
