"""Optional tracking from the one loop (`train.tracking`): TensorBoard scalars and Weights & Biases offline runs mirror
the metric CSVs exactly; W&B needs no login and reaches no network; under torchrun rank 0 alone writes; a backend
that is not installed is a one-line error before a run folder exists."""

from __future__ import annotations

import csv
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from helpers_store import make_store

from mer.cli import train as train_cli
from mer.errors import run_cli

REPO = Path(__file__).resolve().parents[1]
WANDB_BLOCK = 32768  # the .wandb file is a LevelDB-style log of 32 KiB blocks

# A sitecustomize that records every name lookup and every non-Unix-socket connect of the process (appended to the
# file named by MER_NET_LOG); the W&B service process is covered by the proxy listener of `_no_network_env`.
NETWORK_GUARD = """
import os, socket
_log, _gai, _connect = os.environ["MER_NET_LOG"], socket.getaddrinfo, socket.socket.connect
def _note(what):
    with open(_log, "a") as fh:
        fh.write(what + "\\n")
def getaddrinfo(host, *a, **k):
    _note(f"lookup {host}")
    return _gai(host, *a, **k)
def connect(self, address):
    if self.family != getattr(socket, "AF_UNIX", None):
        _note(f"connect {address}")
    return _connect(self, address)
socket.getaddrinfo, socket.socket.connect = getaddrinfo, connect
"""


def _config(tmp_path: Path, store: Path, name: str, epochs: int = 3, **tracking) -> Path:
    cfg = {"run": {"name": name, "output_root": str(tmp_path / "runs"), "device": "cpu"},
           "data": {"store": str(store), "eval_views": ["test"], "batch_size": 16},
           "model": {"name": "flexible_at", "mode": "A", "hidden_dim": 16},
           "train": {"epochs": epochs, "progress": False, "scheduler": {"name": "cosine"},
                     "tracking": tracking}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def wandb_history(run_dir: Path) -> tuple[list[dict], dict]:
    """The history rows (one per `log` call) and the run config of the one offline W&B run under `<run>/wandb/`,
    read from its .wandb file: a 7-byte header, then records (7-byte header: crc, length, type) in 32 KiB blocks,
    each a protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    data = files[0].read_bytes()
    assert data[:4] == b":W&B"
    rows, config, pos, chunk = [], {}, 7, b""
    while pos + 7 <= len(data):
        if WANDB_BLOCK - pos % WANDB_BLOCK < 7:  # a block's tail too short for a header is padding
            pos += WANDB_BLOCK - pos % WANDB_BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b""
            kind = record.WhichOneof("record_type")
            if kind == "history":
                rows.append({item.key or "/".join(item.nested_key): yaml.safe_load(item.value_json)
                             for item in record.history.item})
            elif kind in ("run", "config"):  # the config given to wandb.init, then any later updates
                items = record.run.config.update if kind == "run" else record.config.update
                config.update({item.key: yaml.safe_load(item.value_json) for item in items})
    return rows, config


def _no_network_env(tmp_path: Path, monkeypatch) -> tuple[Path, list]:
    """An environment in which any network use shows: W&B told to go online (the code must keep it offline), no
    API key or login, every proxy variable and W&B's server pointing at a local listener that records connections,
    W&B's own folders in tmp_path, and the network guard loaded into Python processes. (guard log, connections)"""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    hits: list = []

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            hits.append(conn.recv(200))
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    for key in ("WANDB_API_KEY", "NO_PROXY", "no_proxy", "WANDB_ERROR_REPORTING"):
        monkeypatch.delenv(key, raising=False)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "WANDB_BASE_URL"):
        monkeypatch.setenv(key, url)
    monkeypatch.setenv("WANDB_MODE", "online")
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb_home" / key.lower()))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NETWORK_GUARD)
    log = tmp_path / "network.log"
    monkeypatch.setenv("MER_NET_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(REPO / "src")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return log, hits


def _train(config: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    return subprocess.run([*launcher, str(REPO / "train.py"), "--config", str(config)], capture_output=True,
                          text=True, timeout=300, cwd=config.parent)


def test_tensorboard_tracking_mirrors_the_epoch_csv(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = make_store(tmp_path, 120, 6, 0, learnable=True, memmap=True)
    config = _config(tmp_path, store, "tb", tensorboard=True, every_steps=2)
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    run = tmp_path / "runs" / "tb"
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    rows = _csv(run / "metrics_val.csv")
    got = [e.value for e in acc.Scalars("val/macro_f1")]
    assert got == pytest.approx([float(r["macro_f1"]) for r in rows])
    steps = [e.step for e in acc.Scalars("step/loss")]
    assert steps == list(range(2, 2 * len(steps) + 1, 2)) and len(steps) >= 3  # every 2nd optimizer step
    # a resumed run continues the step count where the finished epochs left it
    assert run_cli(train_cli.main, ["--config", str(config), "--resume", "--set", "train.epochs=4"]) == 0
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("val/macro_f1")] == pytest.approx(
        [float(r["macro_f1"]) for r in _csv(run / "metrics_val.csv")])
    more = [e.step for e in acc.Scalars("step/loss")]
    assert more == list(range(2, 2 * len(more) + 1, 2)) and len(more) > len(steps)  # no step logged twice


def test_wandb_offline_run_mirrors_the_csvs_without_login_or_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb; it is in the dev extras)")
    store = make_store(tmp_path, 120, 6, 0, learnable=True, memmap=True)
    log, hits = _no_network_env(tmp_path, monkeypatch)
    config = _config(tmp_path, store, "wb", wandb=True, every_steps=2)
    proc = _train(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "wb"
    history, config = wandb_history(run)
    assert config["run"]["name"] == "wb" and config["train"]["tracking"]["wandb"] is True  # config_resolved.yaml
    epochs = [r for r in history if "epoch" in r]
    for prefix, name in (("train", "metrics_train.csv"), ("val", "metrics_val.csv")):
        rows = _csv(run / name)
        assert [r["epoch"] for r in epochs] == [int(r["epoch"]) for r in rows] == [1, 2, 3]
        for row, logged in zip(rows, epochs, strict=True):
            for key, value in row.items():
                if key != "epoch" and value != "":
                    assert logged[f"{prefix}/{key}"] == float(value), (prefix, key)  # exactly the CSV's value
    steps = [r for r in history if "global_step" in r]
    assert [r["global_step"] for r in steps] == list(range(2, len(steps) * 2 + 1, 2)) and len(steps) >= 3
    assert all(r["step/loss"] > 0 and r["step/lr"] > 0 for r in steps)
    assert not log.exists(), log.read_text()  # no name lookup, no connect from the training process
    assert hits == []  # nothing went to the proxies or the W&B server either (the W&B service process included)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")
def test_under_torchrun_rank_0_alone_tracks(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb; it is in the dev extras)")
    pytest.importorskip("tensorboard")
    store = make_store(tmp_path, 120, 6, 0, learnable=True, memmap=True)
    _, hits = _no_network_env(tmp_path, monkeypatch)
    config = _config(tmp_path, store, "ddp", epochs=2, wandb=True, tensorboard=True, every_steps=1)
    proc = _train(config, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # one W&B run, not one per rank
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    history, _ = wandb_history(run)
    assert [r["epoch"] for r in history if "epoch" in r] == [1, 2]  # each epoch once
    val = _csv(run / "metrics_val.csv")
    assert [r["val/macro_f1"] for r in history if "epoch" in r] == [float(r["macro_f1"]) for r in val]
    steps = [r["global_step"] for r in history if "global_step" in r]
    assert steps == list(range(1, len(steps) + 1))  # each optimizer step once
    assert hits == []  # (the guard log holds torchrun's own local rendezvous lookups)


@pytest.mark.parametrize(("key", "module"), [("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_tracking_backend_that_is_not_installed_is_one_line(tmp_path, monkeypatch, one_line_error, key,
                                                              module):
    monkeypatch.setitem(sys.modules, module, None)  # `import` of it now fails as when it is not installed
    store = make_store(tmp_path, 60, 6, 0, memmap=True)
    config = _config(tmp_path, store, "missing", **{key: True})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    err = one_line_error(prefix=f"error: config key 'train.tracking.{key}': needs the ")
    assert f"pip install {key}" in err
    assert not (tmp_path / "runs").exists()  # refused before a run folder exists


def test_a_negative_every_steps_is_one_line(tmp_path, capsys):
    store = make_store(tmp_path, 60, 6, 0, memmap=True)
    config = _config(tmp_path, store, "neg", every_steps=-1)
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    assert "config key 'train.tracking.every_steps': expected >= 0" in capsys.readouterr().err
