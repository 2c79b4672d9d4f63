"""Issue 10 (core half): the faults a user's trial hit, each a one-line error or a correct result now.

Resume of a finished run, checkpoint label lists, unusable checkpoints, folder locks (store, run folder) and
duplicate ids, rows outside the task and empty classes, manifest paths outside the manifest's folder, a torn
rows.jsonl, read-only folders and full disks, divergence before the first checkpoint, stale temporaries, Git LFS
pointers, suite views a manifest cannot serve, progress in log files, manifest folders, the README's venv line.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers_manifest import LABELS, make_tone_manifest
from helpers_store import make_store

from mer.cli import build_memmap as build_memmap_cli
from mer.cli import check_splits as check_splits_cli
from mer.cli import evaluate as evaluate_cli
from mer.cli import extract_features as extract_cli
from mer.cli import suite as suite_cli
from mer.cli import train as train_cli
from mer.config import validate
from mer.data.audio import UNREADABLE, ClipError, decode_audio
from mer.data.manifest import audio_path_problem, resolve_manifest_arg
from mer.data.manifest_dataset import ManifestDataset
from mer.errors import UserError, run_cli
from mer.features.extract_hf import Item, _probe_audio
from mer.features.extract_mfcc import extract_mfcc_hash
from mer.features.extraction import Log
from mer.features.memmap import build_memmap
from mer.features.store import FeatureStoreReader, FeatureStoreWriter
from mer.io import FolderLock, FolderLocked, atomic_folder, atomic_write_text, remove_stale_temps
from mer.models import build_model
from mer.runtime import Precision
from mer.schema import EMOTIONS_7, ModelConfig, TaskConfig, TrainConfig, ViewConfig
from mer.training.checkpoint import save_checkpoint
from mer.training.loop import Trainer, TrainingDiverged

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False  # root writes into a chmod 0o555 folder anyway


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"), 140, 6, 5, learnable=True, memmap=True)


def write_config(tmp_path: Path, store: Path, **sections) -> Path:
    cfg = {
        "run": {"name": "toy", "output_root": str(tmp_path / "runs"), "seed": 3},
        "data": {"store": str(store), "batch_size": 32, "eval_batch_size": 64,
                 "views": {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
                 "eval_views": ["test"]},
        "model": {"name": "flexible_at", "mode": "AT", "hidden_dim": 16},
        "train": {"epochs": 1, "lr": 3e-3, "progress": False, "scheduler": {"name": "none"}},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(config: Path, *sets: str, resume: bool = False) -> int:
    return run_cli(train_cli.main, ["--config", str(config), *(["--set", *sets] if sets else []),
                                    *(["--resume"] if resume else [])])


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def unwritable(folder: Path, monkeypatch, request) -> str:
    """Make writes below `folder` fail; the errno name to expect. chmod 0o555 where that stops writes; as root
    (it does not) a full disk is simulated: every fsync of a written file raises ENOSPC."""
    if not ROOT:
        folder.chmod(0o555)
        request.addfinalizer(lambda: folder.chmod(0o755))
        return "EACCES"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    return "ENOSPC"


# ------------------------------------------------------------------------------------ 1: finished runs
@pytest.mark.parametrize("how", ["last epoch", "early stop"])
def test_resume_of_a_finished_run_trains_nothing_and_rewrites_nothing(tmp_path, store, capsys, how):
    train_cfg = {"epochs": 2} if how == "last epoch" else {"epochs": 20, "lr": 1e-12,
                                                           "early_stopping": {"patience": 1, "min_delta": 0.5}}
    config = write_config(tmp_path, store, train=train_cfg)
    assert train(config) == 0
    run = tmp_path / "runs" / "toy"
    metrics, last = (run / "metrics_val.csv").read_bytes(), (run / "checkpoints" / "last.pt").read_bytes()
    assert metrics.count(b"\n") == 3  # header + 2 epochs (the early stop: epoch 1 best, epoch 2 not)
    capsys.readouterr()
    assert train(config, resume=True) == 0
    out = capsys.readouterr().out
    assert "training had already finished" in out and "nothing trained" in out and "epoch   3" not in out
    assert (run / "metrics_val.csv").read_bytes() == metrics
    assert (run / "checkpoints" / "last.pt").read_bytes() == last
    assert not (tmp_path / "runs" / "toy_2").exists()


# ------------------------------------------------------------------------------- 2: checkpoint labels
def test_evaluate_refuses_a_checkpoint_whose_labels_differ_from_the_run(tmp_path, store, capsys,
                                                                        one_line_error):
    assert train(write_config(tmp_path, store)) == 0
    run = tmp_path / "runs" / "toy"
    best = run / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    torch.save({**state, "labels": list(reversed(state["labels"]))}, best)  # same labels, other order
    capsys.readouterr()
    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "test"]) == 2
    msg = one_line_error()
    assert "best.pt" in msg and "in another order" in msg

    # a best.pt of a 6-class run in a 7-class run (it used to be a ValueError traceback)
    six = write_config(tmp_path / "six", store, run={"name": "six"},
                       data={"task": {"labels": EMOTIONS_7[:6]}})
    assert train(six) == 0
    shutil.copy(tmp_path / "six" / "runs" / "six" / "checkpoints" / "best.pt", best)
    capsys.readouterr()
    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "test"]) == 2
    msg = one_line_error()
    assert "another label set" in msg and "'neutral'" in msg


# ---------------------------------------------------------------------------- 3: unusable checkpoints
def test_empty_truncated_or_wrong_checkpoints_are_one_line_errors(tmp_path, store, capsys, one_line_error):
    config = write_config(tmp_path, store)
    assert train(config) == 0
    ckpts = tmp_path / "runs" / "toy" / "checkpoints"
    best, last = (ckpts / "best.pt").read_bytes(), (ckpts / "last.pt").read_bytes()
    capsys.readouterr()

    (ckpts / "best.pt").write_bytes(b"")
    assert run_cli(evaluate_cli.main, ["--run", str(ckpts.parent), "--view", "test"]) == 2
    msg = one_line_error()
    assert "best.pt" in msg and "empty" in msg
    (ckpts / "best.pt").write_bytes(best)

    (ckpts / "last.pt").write_bytes(last[: len(last) // 2])
    assert train(config, "train.epochs=3", resume=True) == 2
    msg = one_line_error()
    assert "last.pt" in msg and "truncated" in msg

    (ckpts / "last.pt").write_bytes(best)  # best.pt given where last.pt is needed (a KeyError: 'optimizer' before)
    assert train(config, "train.epochs=3", resume=True) == 2
    msg = one_line_error()
    assert "last.pt" in msg and "optimizer" in msg and "best.pt holds only the evaluation weights" in msg

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    other = write_config(tmp_path / "init", store, train={"init_from": str(empty)})
    assert train(other) == 2
    msg = one_line_error()
    assert "train.init_from" in msg and "empty.pt" in msg and "empty" in msg
    assert not (tmp_path / "init" / "runs").exists()


# ------------------------------------------------------------------------------------------ 4: locks
def test_a_folder_lock_names_its_holder_and_ends_with_the_holder(tmp_path):
    folder = tmp_path / "store"
    code = ("import sys, time; from mer.io import FolderLock; lock = FolderLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLocked, match=rf"{re.escape(str(folder))} is in use by another process "
                                               rf"\(pid {proc.pid}"):
            FolderLock(folder).acquire()
    finally:
        proc.kill()  # SIGKILL: no cleanup code runs, the kernel releases the lock
        proc.wait()
    with FolderLock(folder):
        pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_does_not_keep_its_parents_lock(tmp_path):
    lock = FolderLock(tmp_path).acquire()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child (a worker of a pool): never touches the lock, outlives the parent's hold
        os.write(ready_w, b"x")  # os.fork has returned here: the at-fork handlers have run
        time.sleep(5)
        os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"x"
        lock.release()
        with FolderLock(tmp_path):  # free although the child still has a copy of the descriptor
            pass
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(ready_w)


def test_two_writers_of_one_store_the_second_is_refused(tmp_path):
    path = tmp_path / "store"
    first = FeatureStoreWriter(path, 2, 0, {"x": 1}, None)
    with pytest.raises(UserError, match=rf"{re.escape(str(path))} is in use by another process \(pid {os.getpid()}"):
        FeatureStoreWriter(path, 2, 0, {"x": 1}, None)
    first.add({"id": "a"}, np.ones(2), None)
    first.close()  # releases
    with FeatureStoreWriter(path, 2, 0, {"x": 1}, None) as again:
        assert again.done_ids() == {"a"}


def test_training_refuses_a_run_folder_another_process_trains(tmp_path, store, capsys, one_line_error):
    config = write_config(tmp_path, store)
    assert train(config) == 0
    run = tmp_path / "runs" / "toy"
    metrics = (run / "metrics_val.csv").read_bytes()
    capsys.readouterr()
    with FolderLock(run):  # another trainer of this run
        assert train(config, "train.epochs=2", resume=True) == 2
        msg = one_line_error()
        assert str(run) in msg and f"pid {os.getpid()}" in msg
    assert (run / "metrics_val.csv").read_bytes() == metrics  # nothing truncated or appended
    assert train(config, "train.epochs=2", resume=True) == 0  # and the lock of a finished fit is released


def test_the_memmap_builder_refuses_a_store_with_duplicate_ids(tmp_path, one_line_error):
    path = make_store(tmp_path, 12, 3, 2, shard_size=4)
    rows = path / "rows.jsonl"
    first = rows.read_text().splitlines(keepends=True)[0]
    rows.write_text(rows.read_text() + first)  # what two extractions into one store wrote
    assert run_cli(build_memmap_cli.main, ["--store", str(path), "--out", str(tmp_path / "mm"), "--quiet"]) == 2
    msg = one_line_error()
    assert "rows.jsonl" in msg and "twice" in msg and json.loads(first)["id"] in msg
    assert not (tmp_path / "mm").exists()


# ------------------------------------------------------------------------- 5 and 23: the task's rows
TASK_6 = ["anger", "disgust", "fear", "joy", "sadness", "neutral"]


def test_rows_outside_the_task_are_printed_and_reported_and_an_empty_class_is_an_error(
        tmp_path, store, capsys, one_line_error):
    config = write_config(tmp_path, store, data={"task": {"labels": TASK_6}})
    assert train(config) == 0
    out = capsys.readouterr().out
    n_surprise = sum(1 for m in FeatureStoreReader(Path(str(store).replace("_memmap", ""))).meta
                     if m["split"] == "train" and m["label"] == "surprise")
    assert f"view train: {n_surprise} rows left out, their label is not a task label (surprise {n_surprise})" in out
    report = json.loads((tmp_path / "runs" / "toy" / "task_report.json").read_text())
    assert report["views"]["train"]["left_out_by_value"] == {"surprise": n_surprise}
    assert report["views"]["train"]["class_counts"]["anger"] > 0 and report["empty_classes"] == []

    config = write_config(tmp_path / "b", store, data={"task": {"labels": [*TASK_6, "boredom"]}})
    assert train(config) == 2
    msg = one_line_error()
    assert "task label 'boredom' has no row in the training view 'train'" in msg
    assert "data.allow_empty_classes" in msg and not (tmp_path / "b" / "runs").exists()

    assert train(config, "data.allow_empty_classes=true") == 0
    assert "warning: task label 'boredom' has no row" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "runs" / "toy" / "task_report.json").read_text())["empty_classes"] == [
        "boredom"]


def test_the_emodb_config_on_a_default_emodb_build_names_the_missing_boredom(tmp_path, one_line_error):
    # `mer-builder build --datasets emodb` drops boredom by default (policy emodb.boredom=drop): no row has it.
    source = ["anger", "disgust", "fear", "happiness", "sadness", "neutral"]
    rows = [{"id": f"EmoDB/{i:03d}", "dataset": "EmoDB", "domain": "acted", "source_label": source[i % 6],
             "label": {"happiness": "joy"}.get(source[i % 6], source[i % 6]), "speaker": f"EmoDB/{i % 10:02d}",
             "split": "train" if i % 10 < 6 else "val" if i % 10 < 8 else "test"} for i in range(60)]  # by speaker
    emodb = make_store(tmp_path, 60, 8, 0, rows=rows, memmap=True)
    assert train(CONFIGS / "emodb_mfcc_flexible_a.yaml", f"data.store={emodb}",
                 f"run.output_root={tmp_path / 'runs'}", "train.epochs=1") == 2
    assert "task label 'boredom' has no row in the training view 'train'" in one_line_error()
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------- 7 and 18: manifest audio paths
@pytest.mark.parametrize(("rel", "allowed", "bad"), [
    ("audio/a.wav", False, False), ("../outside.wav", False, True), ("audio/../../x.wav", False, True),
    ("/etc/passwd", False, True), ("/etc/passwd", True, False), ("C:/data/x.wav", False, True),
    ("audio\\a.wav", False, True), ("", False, True), (None, False, True), ("../x.wav", True, True),
])
def test_one_rule_for_audio_paths(rel, allowed, bad):
    assert (audio_path_problem(rel, allow_absolute=allowed) is not None) == bad


def _outside_manifest(tmp_path: Path) -> tuple[Path, list[dict], Path]:
    """A tone manifest plus rows pointing outside its folder (`../`, absolute) and one Git LFS pointer."""
    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 1})
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    outside = tmp_path / "outside.wav"
    shutil.copy(manifest.parent / rows[0]["audio_path"], outside)
    (manifest.parent / "audio" / "lfs.wav").write_text("version https://git-lfs.github.com/spec/v1\n"
                                                       "oid sha256:4d7a2146\nsize 123456\n")
    extra = [{**rows[0], "id": "X/up", "audio_path": "../outside.wav"},
             {**rows[0], "id": "X/abs", "audio_path": str(outside)},
             {**rows[0], "id": "X/lfs", "audio_path": "audio/lfs.wav"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows + extra))
    return manifest, rows + extra, outside


def test_extraction_refuses_paths_outside_the_manifest_folder_unless_absolute_ones_are_allowed(tmp_path, capsys):
    manifest, rows, _ = _outside_manifest(tmp_path)
    report = extract_mfcc_hash(manifest, tmp_path / "s1", jobs=1, quiet=True)
    failed = {f["id"]: f for f in report["failures"]}
    assert report["store_rows"] == 4 and set(failed) == {"X/up", "X/abs", "X/lfs"}
    assert failed["X/up"]["reason"] == "bad_row" and "leaves the manifest's folder" in failed["X/up"]["detail"]
    assert failed["X/abs"]["reason"] == "bad_row" and "--allow-absolute-paths" in failed["X/abs"]["detail"]
    assert failed["X/lfs"]["reason"] == "unreadable" and "Git LFS pointer" in failed["X/lfs"]["detail"]

    # the flag of the CLI (given the manifest's folder, which `mer-builder validate` takes too)
    out = tmp_path / "s2"
    assert run_cli(extract_cli.main, ["--manifest", str(manifest.parent), "--out", str(out), "--jobs", "1",
                                      "--quiet", "--allow-absolute-paths"]) == 0
    report = json.loads((out / "extract_report.json").read_text())
    assert report["store_rows"] == 5 and {f["id"] for f in report["failures"]} == {"X/up", "X/lfs"}

    log = Log()  # the frozen-encoder extractor's own probe applies the same rule
    kept = _probe_audio([Item(r) for r in rows], manifest.parent, 16000, 20.0, 0, log)
    assert len(kept) == 4 and {f["id"]: f["reason"] for f in log.failures} == {
        "X/up": "bad_row", "X/abs": "bad_row", "X/lfs": "unreadable"}
    assert "Git LFS pointer" in log.failures[-1]["detail"]
    capsys.readouterr()


def test_the_end_to_end_dataset_refuses_a_path_outside_the_manifest_folder_naming_the_row(tmp_path):
    manifest, rows, _ = _outside_manifest(tmp_path)
    task = TaskConfig(labels=list(LABELS))
    for rid in ("X/up", "X/abs"):
        subset = [r for r in rows if r["id"] in (rid, rows[0]["id"])]
        with pytest.raises(UserError, match=rf"row {re.escape(rid)}: 'audio_path'"):
            ManifestDataset(manifest, ViewConfig(split="train"), task, mode="A", rows=subset)
    kept = [r for r in rows if r["id"] in ("X/abs", rows[0]["id"])]
    ds = ManifestDataset(manifest, ViewConfig(split="train"), task, mode="A", rows=kept, allow_absolute_paths=True)
    assert len(ds) == 2


def test_a_git_lfs_pointer_is_named_as_such(tmp_path):
    path = tmp_path / "clip.wav"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 9\n")
    with pytest.raises(ClipError) as err:
        decode_audio(path)
    assert err.value.reason == UNREADABLE and "Git LFS pointer" in err.value.detail  # not "Format not recognised"
    path.write_bytes(b"")
    with pytest.raises(ClipError, match="empty file"):
        decode_audio(path)


# ---------------------------------------------------------------------------------- 10: torn rows.jsonl
def test_a_truncated_rows_file_is_an_error_naming_the_line_and_the_extraction_repairs_it(tmp_path):
    path = make_store(tmp_path, 20, 3, 2, shard_size=8)
    rows = path / "rows.jsonl"
    data = rows.read_bytes()
    rows.write_bytes(data[:-10])  # cut mid-line
    with pytest.raises(UserError, match=r"rows\.jsonl:20: the line is cut off"):
        build_memmap(path, tmp_path / "mm")
    assert not (tmp_path / "mm").exists()
    rows.write_bytes(b"".join(data.splitlines(keepends=True)[:15]))  # cut at a line end
    with pytest.raises(UserError, match=r"15 rows, but store.json counts 20"):
        FeatureStoreReader(path)
    rows.write_bytes(data[:-10])
    with FeatureStoreWriter(path, 3, 2, {"extractor": "toy", "seed": 0}, "toyhash") as w:  # a rerun repairs it
        assert len(w.done_ids()) == 19
    assert len(FeatureStoreReader(path)) == 19


# ----------------------------------------------------------------------- 11: read-only folder, full disk
def test_an_unwritable_folder_is_one_line_naming_folder_and_errno(tmp_path, monkeypatch, request):
    folder = tmp_path / "out"
    folder.mkdir()
    code = unwritable(folder, monkeypatch, request)
    with pytest.raises(UserError, match=rf"cannot write x\.json in folder {re.escape(str(folder))}: {code}"):
        atomic_write_text(folder / "x.json", "{}\n")
    assert list(folder.iterdir()) == []  # no temp file left


def _full_disk_save(obj, f):
    """torch.save on a full disk: some bytes written, then its writer's RuntimeError around the OSError."""
    f.write(b"PK\x03\x04" * 16)
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0") from None


def test_a_checkpoint_save_on_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _full_disk_save)
    target = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(UserError, match=rf"last\.pt in folder {re.escape(str(target.parent))}: ENOSPC"):
        save_checkpoint({"model": {}}, target)
    assert list(target.parent.iterdir()) == []


def test_train_on_a_full_disk_exits_2_with_one_line(tmp_path, store, one_line_error, monkeypatch):
    monkeypatch.setattr(torch, "save", _full_disk_save)  # (a RuntimeError traceback before)
    assert train(write_config(tmp_path, store)) == 2
    msg = one_line_error()
    assert "ENOSPC" in msg and str(tmp_path / "runs" / "toy" / "checkpoints") in msg
    assert temps(tmp_path / "runs") == []


def test_extraction_into_an_unwritable_store_exits_2_with_one_line(tmp_path, one_line_error, monkeypatch,
                                                                   request):
    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 1})
    parent = tmp_path / "features"
    parent.mkdir()
    if ROOT:  # the shard write fails: a full disk
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(np, "savez", full)
        code = "ENOSPC"
    else:
        code = unwritable(parent, monkeypatch, request)
    assert run_cli(extract_cli.main, ["--manifest", str(manifest), "--out", str(parent / "store"), "--jobs", "1",
                                      "--quiet"]) == 2
    msg = one_line_error()
    assert code in msg and str(parent) in msg
    assert temps(parent) == [] and not list(parent.rglob("part-*.npz"))


def test_evaluate_into_an_unwritable_run_exits_2_with_one_line(tmp_path, store, capsys, monkeypatch,
                                                               request, one_line_error):
    assert train(write_config(tmp_path, store)) == 0
    run = tmp_path / "runs" / "toy"
    capsys.readouterr()
    code = unwritable(run / "eval_test", monkeypatch, request)
    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "test", "--quiet"]) == 2
    msg = one_line_error()
    assert code in msg and str(run / "eval_test") in msg
    assert temps(run) == []


def test_an_unwrapped_environment_oserror_is_still_one_line(one_line_error):
    def main(argv):
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out.csv")

    assert run_cli(main, []) == 2
    assert one_line_error() == "error: /mnt/ro/out.csv: EROFS (Read-only file system)"


# ------------------------------------------------------------------------- 14: divergence in epoch 1
class _NaN(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        logits = self.model(batch)
        return logits * float("nan") if self.training else logits


def test_a_loss_diverging_in_epoch_1_says_no_checkpoint_was_written(tmp_path, store):
    from mer.evaluation.metrics import compute_metrics
    from mer.features.dataset import FeatureDataset, collate_batch

    task = TaskConfig()
    train_set = FeatureDataset(store, ViewConfig(split="train"), task)
    val_set = FeatureDataset(store, ViewConfig(split="val"), task)
    model = _NaN(build_model(validate({"hidden_dim": 8}, ModelConfig), 7, 6, 5))
    trainer = Trainer(model, train_set, val_set, validate({"epochs": 2, "progress": False}, TrainConfig),
                      run_dir=tmp_path, labels=task.labels, mode="AT", device=torch.device("cpu"),
                      precision=Precision(None, False), metrics_fn=lambda t, p: compute_metrics(t, p, task.labels),
                      batch_size=32, eval_batch_size=64, collate_fn=collate_batch)
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit()
    assert "epoch 1, step 1" in str(err.value) and "No checkpoint was written" in str(err.value)
    assert "last.pt" not in str(err.value) and not (tmp_path / "checkpoints" / "last.pt").exists()


# ------------------------------------------------------------------------------ 15: stale temporaries
def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_temporaries_of_killed_saves_are_removed_at_the_next_start(tmp_path, store):
    config = write_config(tmp_path, store)
    assert train(config) == 0
    run = tmp_path / "runs" / "toy"
    dead = _dead_pid()
    stale = [run / "checkpoints" / f".last.pt.{dead}.0badc0de.tmp", run / f".metrics_val.csv.{dead}.12345678.tmp"]
    live = run / "checkpoints" / ".best.pt.1.89abcdef.tmp"  # pid 1 is alive: a writer still at work
    for p in (*stale, live):
        p.write_bytes(b"partial")
    assert train(config, "train.epochs=2", resume=True) == 0
    assert not any(p.exists() for p in stale) and live.exists()

    path = make_store(tmp_path, 8, 3, 2)  # a store: its writer cleans up when it reopens the store
    junk = path / f".store.json.{dead}.aaaaaaaa.tmp"
    junk.write_text("{")
    FeatureStoreWriter(path, 3, 2, {"extractor": "toy", "seed": 0}, "toyhash").close()
    assert not junk.exists()
    assert remove_stale_temps(run) == []  # nothing left of dead writers


# -------------------------------------------------------------------- 20: views a manifest cannot serve
def test_suite_dry_run_leaves_out_the_views_a_manifest_without_meld_cannot_serve(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"id": f"RAVDESS/{i}", "dataset": "RAVDESS", "domain": "acted", "label": EMOTIONS_7[i % 7],
             "split": ("train", "val", "test")[i % 3], "speaker": f"RAVDESS/{i % 6}", "audio_path": f"a/{i}.wav"}
            for i in range(21)]
    (data / "meta_manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_cli(suite_cli.main, ["run_baseline_at", "--dry-run", "--data-root", str(data), "--output-root",
                                    str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "  mer_builder_at_simple  " in x)
    assert "eval testA (left out: testB: no row in the manifest)" in line and "[to run]" in line
    sets = out.splitlines()[out.splitlines().index(line) + 1]
    assert "data.eval_views=[testA]" in sets and "testB" not in sets
    assert "mer_builder_at_simple_robust_moddrop_ema_meld_ft" in out and "skip: MELD not in" in out


# ---------------------------------------------------------------------- 26: progress in a log file
def test_progress_in_a_log_file_is_plain_lines_not_carriage_returns(tmp_path, store, capsys):
    assert train(write_config(tmp_path, store, train={"progress": True}, data={"batch_size": 4})) == 0
    out, err = capsys.readouterr()  # captured: not a terminal, as a log file
    steps = re.findall(r"^epoch 1/1  step (\d+)/(\d+) \(\d+%\)  loss \d+\.\d{4}", out, flags=re.M)
    assert 5 <= len(steps) <= 11 and steps[-1][0] == steps[-1][1]  # about every tenth of the epoch, and the end
    assert "\r" not in err and "\r" not in out


# -------------------------------------------------------------------- 27: manifest folders, no MELD
def test_check_splits_takes_a_manifest_folder_and_names_no_absent_corpus(tmp_path, capsys, one_line_error):
    rows = [{"id": f"EmoDB/{i}", "dataset": "EmoDB", "split": ("train", "val", "test")[i % 3],
             "label": EMOTIONS_7[i % 7], "speaker": f"EmoDB/{i % 3}", "text": ""} for i in range(9)]
    (tmp_path / "meta_manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_cli(check_splits_cli.main, [str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "MELD" not in out and "official-split datasets (speaker overlap allowed): none in this manifest" in out
    assert resolve_manifest_arg(tmp_path) == tmp_path / "meta_manifest.jsonl"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(check_splits_cli.main, [str(empty)]) == 2
    assert "a folder without meta_manifest.jsonl" in one_line_error()


# ------------------------------------------------------------------------------ 21: the README's venv
def test_the_readme_walk_through_says_to_activate_the_venv_before_its_first_command():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    walk = text[text.index("## Walk-through with real corpora"):]
    assert "source .venv/bin/activate" in walk[: walk.index("```bash")]
    assert (REPO / "Makefile").read_text().count(".venv") > 0  # the venv the README names is the Makefile's


def test_atomic_folder_replaces_a_folder_whole_or_leaves_it_untouched(tmp_path):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(out) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("killed while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # no temp folder left
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with atomic_folder(out) as tmp:
        (tmp / "new.txt").write_text("whole")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_allocator_tuning_is_applied_once_asked_and_skipped_when_told(monkeypatch):
    import platform
    import sys

    from mer.runtime import tune_allocator

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator settings are glibc's")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("MER_TUNE_MALLOC", "0")
    assert tune_allocator() is False  # switched off
    monkeypatch.delenv("MER_TUNE_MALLOC")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "100000")
    assert tune_allocator() is False  # the caller's own glibc settings win
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    assert tune_allocator() is True  # glibc accepted both settings

    import torch

    from mer.runtime import release_free_memory

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096

    block = torch.ones(64 * 2**20)  # 256 MB from the heap (not mmapped any more), freed: kept by the process
    del block
    kept = rss()
    release_free_memory()  # what the training loop does once per epoch
    assert kept - rss() > 128 * 2**20
