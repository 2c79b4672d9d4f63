"""Training under torchrun (issue 15): 2 CPU processes with gloo and per-rank batch b train as one process with batch
2b; each sample is seen once per epoch across ranks; rank 0 alone writes; a killed DDP run resumes exactly."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers_store import make_store

from mer.distributed import shard_batch, shard_range

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")

# A sitecustomize that makes every rank stop (Ctrl-C) at the start of epoch 3, as a kill would
KILL_IN_EPOCH_3 = """
from mer.training.loop import Trainer
_orig = Trainer._train_epoch
def _train_epoch(self, epoch):
    if epoch == 3:
        raise KeyboardInterrupt
    return _orig(self, epoch)
Trainer._train_epoch = _train_epoch
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("ddp_store"), 203, 12, 10, learnable=True, noise=2.0, memmap=True)


def _config(tmp_path: Path, store: Path, batch: int, **train) -> Path:
    cfg = {
        "run": {"name": "toy", "output_root": str(tmp_path / "runs"), "seed": 3, "device": "cpu"},
        "data": {"store": str(store), "batch_size": batch, "eval_batch_size": 16,
                 "views": {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
                 "eval_views": ["test"]},
        "model": {"name": "flexible_at", "mode": "AT", "hidden_dim": 32, "dropout": 0.0},
        "train": {"epochs": 4, "lr": 3e-3, "progress": False, "scheduler": {"name": "cosine", "warmup_epochs": 1},
                  "ema": {"enabled": True, "decay": 0.9}, "grad_accum": 2, **train},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(config: Path, nproc: int, *extra: str, sitecustomize: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [*([str(sitecustomize)] if sitecustomize else []), str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    return subprocess.run([*launcher, str(REPO / "train.py"), "--config", str(config), *extra], env=env,
                          capture_output=True, text=True, timeout=300, cwd=config.parent)


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


def test_shards_cover_each_global_batch_once():
    for n in (1, 2, 5, 16, 17):
        for world in (2, 3):
            parts = [shard_batch(list(range(n)), r, world) for r in range(world)]
            real = [i for (ids, count) in parts for i in ids[:count]]
            assert real == list(range(n))  # every sample once, in order, across ranks
            assert max(c for _, c in parts) - min(c for _, c in parts) <= 1
            assert all(len(ids) >= 1 for ids, _ in parts)  # every rank steps (a weight-0 sample when it has none)
            assert [i for r in range(world) for i in shard_range(n, r, world)] == list(range(n))


def test_two_gloo_ranks_with_batch_b_train_as_one_process_with_batch_2b(tmp_path, store):
    one = _run(_config(tmp_path / "one", store, batch=16), 1)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run(_config(tmp_path / "two", store, batch=8), 2)
    assert two.returncode == 0, two.stderr[-2000:]
    run1, run2 = tmp_path / "one" / "runs" / "toy", tmp_path / "two" / "runs" / "toy"
    assert _files(run1) == _files(run2)  # rank 0 alone wrote; no second run folder
    assert sorted(p.name for p in (tmp_path / "two" / "runs").iterdir()) == ["toy"]
    for name in ("metrics_train.csv", "metrics_val.csv"):
        a, b = _csv(run1 / name), _csv(run2 / name)
        assert len(a) == len(b) == 4
        for ra, rb in zip(a, b, strict=True):  # the same curve: summation order alone differs
            for key in ("loss", "macro_f1", "acc"):
                assert float(ra[key]) == pytest.approx(float(rb[key]), abs=2e-4), (name, key, ra, rb)
    m1 = torch.load(run1 / "checkpoints" / "best.pt", weights_only=True)["model"]
    m2 = torch.load(run2 / "checkpoints" / "best.pt", weights_only=True)["model"]
    for k in m1:
        torch.testing.assert_close(m1[k], m2[k], atol=2e-4, rtol=1e-3)
    assert "view train" in two.stdout and two.stdout.count("epoch   1") == 1  # one voice: rank 0 prints


def test_a_killed_ddp_run_resumes_as_an_uninterrupted_one(tmp_path, store):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(KILL_IN_EPOCH_3)
    full = _run(_config(tmp_path / "full", store, batch=8, sampler={"class_balanced": True}), 2)
    assert full.returncode == 0, full.stderr[-2000:]
    killed_cfg = _config(tmp_path / "killed", store, batch=8, sampler={"class_balanced": True})
    killed = _run(killed_cfg, 2, sitecustomize=site)
    assert killed.returncode != 0
    run_full, run_killed = tmp_path / "full" / "runs" / "toy", tmp_path / "killed" / "runs" / "toy"
    assert len(_csv(run_killed / "metrics_val.csv")) == 2
    last = torch.load(run_killed / "checkpoints" / "last.pt", weights_only=True)
    assert len(last["ranks"]) == 2  # every rank's RNG states
    single = _run(killed_cfg, 1, "--resume")  # another world size: refused in one line
    assert single.returncode == 2 and "written by 2 process(es), this run has 1" in single.stderr
    resumed = _run(killed_cfg, 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _csv(run_killed / "metrics_val.csv") == _csv(run_full / "metrics_val.csv")
    a = torch.load(run_full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run_killed / "checkpoints" / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


NAN_ON_RANK_1 = """
import torch
from mer import distributed
from mer.training.loop import Trainer
_orig = Trainer.total_loss
def total_loss(self, out, batch):
    loss = _orig(self, out, batch)
    return loss * float("nan") if distributed.world().rank == 1 and self.model.training else loss
Trainer.total_loss = total_loss
"""


def test_a_nan_on_one_rank_stops_every_rank_with_one_line(tmp_path, store):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NAN_ON_RANK_1)
    t0 = time.monotonic()
    proc = _run(_config(tmp_path / "nan", store, batch=8), 2, sitecustomize=site)
    assert proc.returncode != 0 and time.monotonic() - t0 < 120  # no rank left waiting in a collective
    # each rank stops at the same step with its one line (torchrun may end the second before it prints)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert lines and {ln.split(" at epoch")[0] for ln in lines} <= {
        "error: non-finite loss (nan)", "error: non-finite loss on another rank"}, proc.stderr[-2000:]
    assert all("at epoch 1, step 1; stopped." in ln for ln in lines)
    assert not (tmp_path / "nan" / "runs" / "toy" / "checkpoints" / "last.pt").exists()


def test_more_processes_than_gpus_is_one_line(monkeypatch):
    """torchrun --nproc_per_node 2 on a one-GPU node: rank 1 would ask for cuda:1; it is told why, in one line,
    before any process group is joined."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    from mer import distributed
    from mer.errors import UserError

    with pytest.raises(UserError, match=r"LOCAL_RANK=1 on a node with 1 CUDA device.*--nproc_per_node"):
        distributed.init("auto")
    assert not torch.distributed.is_initialized()
