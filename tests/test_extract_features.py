"""extract_at_features.py end to end on a tiny generated manifest: store rows equal to librosa/scikit-learn,
unusable clips reported with their reason, resume without recompute, refusal of a mismatched rerun,
--overwrite, --memmap, worker processes, and the mer_builder_at_simple*.yaml configs training on the result.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from mer.cli import extract_features as ex
from mer.cli import train as train_cli
from mer.config import load_config
from mer.errors import run_cli
from mer.features import extract_mfcc
from mer.features.memmap import MemmapStore, open_store
from mer.features.mfcc import MFCCMeanStd
from mer.features.store import FeatureStoreReader
from mer.features.text_hash import TextHasher
from mer.recipes.features import build as build_feature_model
from mer.recipes.features import open_view as open_feature_view

SR = 16000
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONFIG_NAMES = [
    "mer_builder_at_simple",
    "mer_builder_at_simple_robust",
    "mer_builder_at_simple_robust_balanced",
    "mer_builder_at_simple_robust_moddrop",
    "mer_builder_at_simple_robust_moddrop_ema",
    "mer_builder_at_simple_robust_moddrop_ema_meld_ft",
]

# id, split, label, text, seconds; dataset and domain follow from the id
GOOD = [
    ("RAVDESS/Actor_01/03-01-03-01-01-01-01", "train", "joy", "Kids are talking by the door", 0.62),
    ("MELD/train/dia0_utt0", "train", "surprise", "Oh my God! Really?", 0.41),
    ("MELD/train/dia0_utt1", "train", "neutral", "", 0.9),  # no transcript: the all-zeros text row
    ("CREMA-D/1001_DFA_ANG_XX", "train", "anger", "Don't forget a jacket", 0.5),  # stereo 22.05 kHz
    ("RAVDESS/Actor_02/03-01-04-01-02-01-02", "val", "sadness", "Dogs are sitting by the door", 0.33),
    ("MELD/dev/dia1_utt0", "val", "joy", "That's great news", 0.7),
    ("RAVDESS/Actor_03/03-01-05-02-01-01-03", "test", "anger", "Kids are talking by the door", 0.45),
    ("MELD/test/dia2_utt0", "test", "sadness", "I miss her so much", 0.02),  # shorter than n_fft
]
CONVERTED = "CREMA-D/1001_DFA_ANG_XX"
FAILED = {  # id -> reason
    "RAVDESS/Actor_04/03-01-06-01-01-01-04": "missing_file",
    "CREMA-D/1002_IEO_FEA_HI": "unreadable",
    "MELD/train/dia3_utt0": "empty_audio",
    "MELD/train/dia3_utt1": "bad_row",
}


def tone(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = 110 + 25 * seed
    y = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.25 * y + 0.005 * rng.standard_normal(n)).astype(np.float32)


def row(rid: str, split: str, label: str, text, seconds: float) -> dict:
    dataset = rid.split("/")[0]
    meld = dataset == "MELD"
    return {
        "id": rid,
        "dataset": dataset,
        "split": split,
        "audio_path": f"audio/{rid}.wav",
        "duration_s": seconds,
        "text": text,
        "label": label,
        "source_label": label[:3],
        "speaker": f"{dataset}/{rid.split('/')[1]}",
        "gender": None,
        "domain": "conversational" if meld else "acted",
        "dialogue_id": rid.split("/")[2].split("_")[0] if meld else None,
        "turn": 0 if meld else None,
        "language": "en",
        "notes": "" if text else "no transcript",
    }


def make_corpus(root: Path) -> Path:
    """12 rows: 8 usable clips (one stereo 22.05 kHz), a missing, a corrupt and an empty WAV, a bad row."""
    rows = []
    for i, (rid, split, label, text, seconds) in enumerate(GOOD):
        path = root / "audio" / f"{rid}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        y = tone(seconds, i)
        if rid == CONVERTED:
            y22 = librosa.resample(y, orig_sr=SR, target_sr=22050)
            sf.write(path, np.stack([y22, 0.5 * y22], axis=1), 22050, subtype="PCM_16")
        else:
            sf.write(path, y, SR, subtype="PCM_16")
        rows.append(row(rid, split, label, text, seconds))
    rows.insert(2, row("RAVDESS/Actor_04/03-01-06-01-01-01-04", "train", "fear", "Kids", 0.5))  # no file
    corrupt = row("CREMA-D/1002_IEO_FEA_HI", "train", "fear", "It's eleven o'clock", 0.5)
    (root / "audio" / "CREMA-D" / "1002_IEO_FEA_HI.wav").write_bytes(
        b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(40)
    )
    rows.insert(5, corrupt)
    empty = row("MELD/train/dia3_utt0", "train", "joy", "Yeah", 0.0)
    (root / "audio" / "MELD" / "train" / "dia3_utt0.wav").parent.mkdir(parents=True, exist_ok=True)
    sf.write(
        root / "audio" / "MELD" / "train" / "dia3_utt0.wav", np.zeros(0, np.float32), SR, subtype="PCM_16"
    )
    rows.append(empty)
    rows.append(row("MELD/train/dia3_utt1", "train", "joy", 5, 0.5))  # text must be a string
    manifest = root / "meta_manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def librosa_reference(path: Path, n_mfcc: int = 40) -> np.ndarray:
    y, _ = librosa.load(path, sr=SR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_fft too large for the 0.02 s clip: librosa pads, as we do
        m = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=n_mfcc, n_fft=400, hop_length=160)
    return np.concatenate([m.mean(axis=1), m.std(axis=1)])


@pytest.fixture()
def corpus(tmp_path) -> Path:
    return make_corpus(tmp_path / "data")


def extract(manifest: Path, out: Path, *extra: str) -> int:
    return run_cli(
        ex.main, ["--manifest", str(manifest), "--out", str(out), "--quiet", "--jobs", "1", *extra]
    )


def test_store_rows_features_and_report(corpus, tmp_path, capsys):
    out = tmp_path / "store"
    assert extract(corpus, out) == 0
    shown = capsys.readouterr().out

    r = FeatureStoreReader(out)
    good_ids = [g[0] for g in GOOD]
    assert [m["id"] for m in r.meta] == good_ids  # manifest order, failures left out
    assert (
        r.meta[1]["dataset"] == "MELD"
        and r.meta[1]["dialogue_id"] == "dia0"
        and r.meta[1]["split"] == "train"
    )
    assert (r.audio_dim, r.text_dim) == (80, 512)
    audio, text = r.get_rows(np.arange(len(r)))
    for i, rid in enumerate(good_ids):
        np.testing.assert_allclose(
            audio[i],
            librosa_reference(corpus.parent / "audio" / f"{rid}.wav"),
            rtol=1e-4,
            atol=2e-3,
            err_msg=rid,
        )
    np.testing.assert_allclose(text, TextHasher(512, (1, 2))([g[3] for g in GOOD]), rtol=1e-6, atol=1e-7)
    assert not text[2].any() and np.linalg.norm(text[0]) == pytest.approx(1.0)

    s = r.info["settings"]
    assert (s["extractor"], s["n_mfcc"], s["n_fft"], s["hop_length"], s["sr"]) == (
        "mfcc_hash",
        40,
        400,
        160,
        SR,
    )
    assert (s["text_dim"], s["ngram_range"]) == (512, [1, 2])

    report = json.loads((out / "extract_report.json").read_text())
    assert report["complete"] is True and report["written"] == 8 and report["store_rows"] == 8
    assert report["rows_in_manifest"] == 12 and report["already_in_store"] == 0
    assert {f["id"]: f["reason"] for f in report["failures"]} == FAILED
    assert report["failed"] == {"bad_row": 1, "empty_audio": 1, "missing_file": 1, "unreadable": 1}
    assert report["empty_text"] == 1 and report["empty_text_ids"] == ["MELD/train/dia0_utt1"]
    assert report["converted_ids"] == [CONVERTED]
    for rid, reason in FAILED.items():  # on screen too, with the reason
        assert f"{rid}: {reason}" in shown
    assert "written     8 rows" in shown and "clips/s" in shown


def test_rerun_skips_done_rows_and_a_killed_run_resumes(corpus, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert extract(corpus, full) == 0
    read: list[str] = []
    real_read = extract_mfcc.decode_audio

    def counting_read(path, *args, **kwargs):
        read.append(Path(path).relative_to(corpus.parent / "audio").with_suffix("").as_posix())
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(extract_mfcc, "decode_audio", counting_read)
    assert extract(corpus, full) == 0  # nothing done is read or computed again; the failures are retried
    assert sorted(read) == sorted(rid for rid, why in FAILED.items() if why != "bad_row")
    report = json.loads((full / "extract_report.json").read_text())
    assert (report["already_in_store"], report["written"], report["store_rows"]) == (8, 0, 8)

    # killed while computing its second window of 4 rows
    monkeypatch.setattr(extract_mfcc, "WINDOW", 4)
    calls = {"n": 0}
    real_call = MFCCMeanStd.__call__

    def dies_on_second_call(self, clips):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_call(self, clips)

    monkeypatch.setattr(MFCCMeanStd, "__call__", dies_on_second_call)
    killed = tmp_path / "killed"
    assert extract(corpus, killed) == 130
    first_window = [g[0] for g in GOOD[:3]]  # the window held 3 usable clips and the missing file
    assert [m["id"] for m in FeatureStoreReader(killed).meta] == first_window
    assert json.loads((killed / "extract_report.json").read_text())["complete"] is False

    monkeypatch.setattr(MFCCMeanStd, "__call__", real_call)
    read.clear()
    assert extract(corpus, killed) == 0
    assert not set(read) & set(first_window)  # finished rows are not recomputed
    a, b = FeatureStoreReader(full), FeatureStoreReader(killed)
    assert a.meta == b.meta
    for x, y in zip(a.get_rows(np.arange(8)), b.get_rows(np.arange(8)), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-4)


def test_mismatched_rerun_is_refused_until_overwrite(corpus, tmp_path, capsys, one_line_error):
    out = tmp_path / "store"
    assert extract(corpus, out) == 0
    capsys.readouterr()
    assert extract(corpus, out, "--n-mfcc", "13") == 2
    msg = one_line_error()
    assert "settings.n_mfcc: store has 40, this run gives 13" in msg and "--overwrite" in msg
    assert extract(corpus, out, "--ngram", "1,3") == 2
    msg = one_line_error()
    assert "settings.ngram_range: store has [1, 2], this run gives [1, 3]" in msg and "--overwrite" in msg
    assert FeatureStoreReader(out).audio_dim == 80  # untouched

    assert extract(corpus, out, "--n-mfcc", "13", "--ngram", "1,3", "--text-dim", "64", "--overwrite") == 0
    r = FeatureStoreReader(out)
    assert (r.audio_dim, r.text_dim, len(r), r.info["settings"]["ngram_range"]) == (26, 64, 8, [1, 3])
    audio, _ = r.get_rows([0])
    np.testing.assert_allclose(
        audio[0], librosa_reference(corpus.parent / "audio" / f"{GOOD[0][0]}.wav", 13), rtol=1e-4, atol=2e-3
    )


def test_worker_processes_and_memmap_give_the_same_rows(corpus, tmp_path):
    one = tmp_path / "one"
    assert extract(corpus, one, "--batch-size", "2") == 0
    two, mm = tmp_path / "two", tmp_path / "two_mm"
    assert extract(corpus, two, "--batch-size", "2", "--jobs", "2", "--memmap", str(mm)) == 0
    assert json.loads((two / "extract_report.json").read_text())["jobs"] == 2
    a, m = FeatureStoreReader(one), MemmapStore(mm)
    assert m.meta == a.meta and m.info["settings"] == a.info["settings"]
    for x, y in zip(a.get_rows(np.arange(8)), m.get_rows(np.arange(8)), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-4)
    stamp = (mm / "audio.f32").stat().st_mtime_ns
    assert extract(corpus, two, "--jobs", "2", "--memmap", str(mm)) == 0  # nothing new: memmap left as is
    assert (mm / "audio.f32").stat().st_mtime_ns == stamp


def test_bad_input_is_one_line_and_writes_no_store(corpus, tmp_path, capsys, one_line_error):
    assert extract(tmp_path / "nope.jsonl", tmp_path / "s1") == 2
    assert "nope.jsonl" in one_line_error() and not (tmp_path / "s1").exists()
    assert extract(corpus, tmp_path / "s2", "--ngram", "two") == 2
    assert "--ngram 'two'" in one_line_error()
    assert extract(corpus, tmp_path / "s3", "--n-mfcc", "0") == 2
    assert "--n-mfcc 0" in one_line_error()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert extract(corpus, tmp_path / "s4", "--memmap", str(tmp_path / "busy")) == 2
    assert "is not a memmap folder" in one_line_error() and not (tmp_path / "s4").exists()
    assert extract(corpus, tmp_path / "busy") == 2  # a folder of other files is never used as a store
    assert "not a feature store" in one_line_error()

    broken = tmp_path / "broken" / "meta_manifest.jsonl"
    broken.parent.mkdir()
    broken.write_text(
        "".join(line + "\n" for line in corpus.read_text().splitlines() if any(rid in line for rid in FAILED))
    )
    assert extract(broken, tmp_path / "s5") == 2
    msg = one_line_error()
    assert "no clip could be used" in msg and "extract_report.json" in msg
    assert len(json.loads((tmp_path / "s5" / "extract_report.json").read_text())["failures"]) == 4
    with pytest.raises(SystemExit) as exc:
        ex.main(["--help"])
    assert exc.value.code == 0 and "--memmap" in capsys.readouterr().out


@pytest.fixture()
def memmap_store(corpus, tmp_path) -> Path:
    mm = tmp_path / "mm"
    assert extract(corpus, tmp_path / "store", "--memmap", str(mm)) == 0
    return mm


def test_configs_load_and_open_their_views_on_the_extracted_store(memmap_store, tmp_path):
    store = open_store(memmap_store)
    for name in CONFIG_NAMES:
        cfg = load_config(CONFIGS / f"{name}.yaml", [f"data.store={memmap_store}"]).cfg
        assert cfg.run.name == name
        views = [cfg.data.train_view, cfg.data.val_view, *cfg.data.eval_views]
        sizes = {v: len(open_feature_view(store, cfg, v)) for v in views}
        build_feature_model(cfg, store)
        if name.endswith("meld_ft"):
            assert sizes == {"meld_train": 2, "meld_val": 1, "testA": 1, "testB": 1}
            assert cfg.train.init_from.endswith(
                "mer_builder_at_simple_robust_moddrop_ema/checkpoints/best.pt"
            )
        else:
            assert sizes == {"train": 4, "val": 2, "testA": 1, "testB": 1}
    defaults = load_config(CONFIGS / "mer_builder_at_simple_robust_moddrop_ema.yaml").cfg
    assert defaults.data.store == "features/mfcc_hash_mm" and defaults.model.name == "robust_at"
    assert defaults.train.augment.modality_dropout == 0.3 and defaults.train.ema.enabled
    balanced = load_config(CONFIGS / "mer_builder_at_simple_robust_balanced.yaml").cfg.train
    assert balanced.class_weights.mode == "balanced" and balanced.sampler.class_balanced


def test_train_one_epoch_then_meld_fine_tune_from_its_checkpoint(memmap_store, tmp_path, capsys):
    common = [
        f"data.store={memmap_store}",
        f"run.output_root={tmp_path / 'runs'}",
        "train.epochs=1",
        "train.progress=false",
        "data.batch_size=4",
        "data.allow_empty_classes=true",  # 4 training rows: most of the 7 classes have none
    ]
    base = "mer_builder_at_simple_robust_moddrop_ema"
    assert run_cli(train_cli.main, ["--config", str(CONFIGS / f"{base}.yaml"), "--set", *common]) == 0
    best = tmp_path / "runs" / base / "checkpoints" / "best.pt"
    assert best.is_file() and (tmp_path / "runs" / base / "eval_testB" / "metrics_eval.json").is_file()
    capsys.readouterr()
    ft = CONFIGS / f"{base}_meld_ft.yaml"
    assert run_cli(train_cli.main, ["--config", str(ft), "--set", *common, f"train.init_from={best}"]) == 0
    out = capsys.readouterr().out
    assert f"init_from {best}:" in out and "0 kept fresh" in out and "train 2  val 1" in out
    run = tmp_path / "runs" / f"{base}_meld_ft"
    preds = (run / "eval_testA" / "predictions.csv").read_text().splitlines()
    assert len(preds) == 2 and "RAVDESS/Actor_03" in preds[1]
