"""Training and evaluating from WebDataset shards (`mer-builder shards` -> `data.shards`) on a tiny generated
corpus: every row round-trips; the items, an evaluation and a training run equal the folder's (the training run
with the order made equal: no shuffling); with shuffling, every training row is seen once per epoch across 2 ranks
x 2 workers, deterministically for a seed, and the loss falls; uneven rank splits keep the ranks in step; bad
shards (a missing folder, a corrupt member, a corrupt header, a truncated copy, another manifest) are one-line
errors."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers_manifest import make_tone_manifest
from torch.utils.data import DataLoader, SequentialSampler

from mer.cli import evaluate_frame as evaluate_cli
from mer.cli import train_frame as train_cli
from mer.data.manifest_dataset import ManifestDataset
from mer.data.shard_stream import ShardStream, deal, shuffled, step_counts
from mer.data.shards import ShardIndex
from mer.data.wave_batch import WaveCollator
from mer.distributed import World
from mer.errors import UserError, run_cli
from mer.schema import TaskConfig, ViewConfig
from mer.training import loop
from mer_builder.shards import write_shards

REPO = Path(__file__).resolve().parents[1]
LABELS = ["anger", "joy", "sadness", "neutral"]
TASK = TaskConfig(labels=LABELS)
TINY_FRAME = {"n_mels": 16, "n_fft": 256, "hop": 128, "cnn": {"channels": [4, 8], "pooling": "mean_std"}}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("shards")
    manifest = make_tone_manifest(root / "data", per_split={"train": 6, "val": 2, "test": 2})
    result = write_shards(manifest, root / "shards", shard_size=5)
    return {"root": root, "manifest": manifest, "shards": root / "shards", "index": result.index}


def rows_of(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def open_view(env, split: str, shards: bool, train: bool = False, mode: str = "A", max_audio_s: float = 0.5):
    return ManifestDataset(env["manifest"], ViewConfig(split=split), TASK, view_name=split, mode=mode, train=train,
                           max_audio_s=max_audio_s, shards=ShardIndex.open(env["shards"]) if shards else None)


def stream_ids(stream: ShardStream, epoch: int, workers: int) -> list[str]:
    stream.epoch = epoch
    loader = DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=lambda item: item)
    return [stream.dataset.ids[item["index"]] for item in loader]


# ---------------------------------------------------------------------------------------------- (a) round trip
def test_every_row_round_trips_through_the_shards(env):
    rows = {r["id"]: r for r in rows_of(env["manifest"])}
    base = env["manifest"].parent
    found = {}
    for entry in env["index"]["shards"]:
        with tarfile.open(env["shards"] / entry["name"]) as tar:
            names = tar.getnames()
            assert names == [f"{k}.{ext}" for k in entry["keys"] for ext in ("wav", "json")]
            for key, rid in zip(entry["keys"], entry["ids"], strict=True):
                found[rid] = (tar.extractfile(f"{key}.wav").read(), json.loads(tar.extractfile(f"{key}.json").read()))
    assert set(found) == set(rows)
    for rid, (wav, row) in found.items():
        assert wav == (base / rows[rid]["audio_path"]).read_bytes()
        assert row == rows[rid]
    index = ShardIndex.open(env["shards"])  # the seek-based reader gives the same bytes, checked by sha256
    for rid, row in rows.items():
        assert index.clip(rid).read() == (base / row["audio_path"]).read_bytes()


# ---------------------------------------------------------------------------------------------- (b) same items, same eval
@pytest.mark.parametrize("mode", ["A", "AT"])
def test_items_from_the_shards_equal_the_folders(env, mode):
    for split in ("train", "val", "test"):
        folder, shards = open_view(env, split, False, mode=mode), open_view(env, split, True, mode=mode)
        assert folder.ids == shards.ids and np.array_equal(folder.lengths, shards.lengths)
        for i in range(len(folder)):
            a, b = folder[i], shards[i]
            assert np.array_equal(a["audio"], b["audio"]) and a["text"] == b["text"] and a["label"] == b["label"]


def test_streamed_items_equal_the_datasets_items(env):
    ds = open_view(env, "train", True, mode="AT", max_audio_s=5.0)  # no crop: a streamed item equals ds[i]
    stream = ShardStream(ds, ShardIndex.open(env["shards"]), batch_size=4, shuffle_buffer=0)
    stream.epoch = 1
    items = list(stream)
    assert [it["index"] for it in items] == list(range(len(ds)))  # buffer 0, one rank: manifest order
    for it in items:
        ref = ds[it["index"]]
        assert np.array_equal(it["audio"], ref["audio"]) and {k: v for k, v in it.items() if k != "audio"} == \
            {k: v for k, v in ref.items() if k != "audio"}


def write_config(path: Path, env: dict, **sections) -> Path:
    cfg = {
        "run": {"name": "toy", "output_root": str(path.parent / "runs"), "seed": 3},
        "data": {"manifest": str(env["manifest"]), "task": {"labels": LABELS},
                 "views": {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
                 "eval_views": ["test"], "batch_size": 6, "eval_batch_size": 16, "max_audio_s": 1.0,
                 "bucket_batches": 1},
        "model": {"name": "cnn_small", "mode": "A", "dropout": 0.1, "frame": TINY_FRAME},
        "train": {"epochs": 3, "lr": 1e-2, "progress": False, "scheduler": {"name": "none"}},
    }
    for key, value in sections.items():
        cfg[key].update(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_csv(path: Path, drop=("time_s",)) -> list[dict]:
    with path.open(newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def eval_metrics(run: Path) -> dict:
    m = json.loads((run / "eval_test" / "metrics_eval.json").read_text())
    return {k: v for k, v in m.items() if k not in ("run", "run_name", "created", "seconds")}


@pytest.fixture(scope="module")
def folder_run(env, tmp_path_factory) -> Path:
    """A frame run trained from the folder with the rows in manifest order (the order a stream without
    shuffling reads): the reference of the equality tests."""
    tmp = tmp_path_factory.mktemp("folder_run")
    cfg = write_config(tmp / "c.yaml", env)
    mp = pytest.MonkeyPatch()
    mp.setattr(loop, "build_sampler", lambda labels, datasets, cfg, gen: SequentialSampler(range(len(labels))))
    try:
        assert run_cli(train_cli.main, ["--config", str(cfg)]) == 0
    finally:
        mp.undo()
    return tmp / "runs" / "toy"


def test_a_folder_run_evaluates_the_same_from_the_shards(env, folder_run, tmp_path):
    moved = tmp_path / "run"
    shutil.copytree(folder_run, moved)
    shutil.rmtree(moved / "eval_test")
    cfg = yaml.safe_load((moved / "config_resolved.yaml").read_text())
    cfg["data"]["shards"] = str(env["shards"])
    (moved / "config_resolved.yaml").write_text(yaml.safe_dump(cfg))
    assert run_cli(evaluate_cli.main, ["--run", str(moved), "--view", "test", "--quiet"]) == 0
    assert read_csv(moved / "eval_test" / "predictions.csv") == read_csv(folder_run / "eval_test" / "predictions.csv")
    assert eval_metrics(moved) == eval_metrics(folder_run)


# ---------------------------------------------------------------------------------------------- (d) training
def test_training_from_the_shards_in_order_equals_the_folder_run(env, folder_run, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", env, data={"shards": str(env["shards"]), "shuffle_buffer": 0})
    assert run_cli(train_cli.main, ["--config", str(cfg)]) == 0
    assert "shards      " in capsys.readouterr().out
    run = tmp_path / "runs" / "toy"
    for name in ("metrics_train.csv", "metrics_val.csv"):
        assert read_csv(run / name) == read_csv(folder_run / name)  # the same losses and metrics, epoch by epoch
    assert read_csv(run / "eval_test" / "predictions.csv") == read_csv(folder_run / "eval_test" / "predictions.csv")
    assert eval_metrics(run) == eval_metrics(folder_run)


def test_shuffled_training_from_the_shards_with_workers_learns_and_resumes_exactly(env, tmp_path, monkeypatch):
    """With a shuffle buffer and 2 workers the order differs from the folder run's (so do the numbers); the loss
    falls, and a run killed in epoch 2 and resumed ends as the uninterrupted one (an epoch's stream depends on the
    seed and the epoch alone; the workers' seeds come from the run's generator, restored from last.pt)."""
    sections = {"data": {"shards": str(env["shards"]), "shuffle_buffer": 8, "num_workers": 2, "bucket_batches": 2},
                "train": {"epochs": 3, "lr": 1e-2, "progress": False, "scheduler": {"name": "none"}}}
    full_cfg = write_config(tmp_path / "full" / "c.yaml", env, **sections)
    assert run_cli(train_cli.main, ["--config", str(full_cfg)]) == 0
    killed_cfg = write_config(tmp_path / "killed" / "c.yaml", env, **sections)
    real_epoch = loop.Trainer._train_epoch

    def killed_in_epoch_2(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(loop.Trainer, "_train_epoch", killed_in_epoch_2)
    assert run_cli(train_cli.main, ["--config", str(killed_cfg)]) == 130
    monkeypatch.setattr(loop.Trainer, "_train_epoch", real_epoch)
    assert run_cli(train_cli.main, ["--config", str(killed_cfg), "--resume"]) == 0
    full, resumed = tmp_path / "full" / "runs" / "toy", tmp_path / "killed" / "runs" / "toy"
    train = read_csv(full / "metrics_train.csv")
    assert len(train) == 3 and float(train[-1]["loss"]) < float(train[0]["loss"])
    for name in ("metrics_train.csv", "metrics_val.csv"):
        assert read_csv(resumed / name) == read_csv(full / name)
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- (c) ranks x workers
def test_one_epoch_sees_every_training_row_once_across_2_ranks_x_2_workers(env):
    ds = open_view(env, "train", True, train=True)
    index = ShardIndex.open(env["shards"])
    epochs = {}
    for epoch in (1, 2):
        per_rank = [stream_ids(ShardStream(ds, index, batch_size=4, seed=7, shuffle_buffer=6, world=World(r, 2)),
                               epoch, workers=2) for r in range(2)]
        seen = per_rank[0] + per_rank[1]
        assert sorted(seen) == sorted(ds.ids)  # each row exactly once over the ranks and their workers
        assert not set(per_rank[0]) & set(per_rank[1])
        epochs[epoch] = per_rank
    assert epochs[1] != epochs[2]  # a new order each epoch
    again = [stream_ids(ShardStream(ds, index, batch_size=4, seed=7, shuffle_buffer=6, world=World(r, 2)), 1, 2)
             for r in range(2)]
    assert again == epochs[1]  # deterministic for a seed


def test_uneven_rank_splits_take_the_same_steps_with_zero_weight_padding(env):
    ds = open_view(env, "train", True, train=True)  # 24 rows in shards of 5, 5, 5, 5, 4
    index = ShardIndex.open(env["shards"])
    streams = [ShardStream(ds, index, batch_size=4, seed=1, shuffle_buffer=3, world=World(r, 3), epochs=4)
               for r in range(3)]
    for epoch in range(1, 5):
        loaded = [s.epoch_loader(epoch, WaveCollator()) for s in streams]
        samples = streams[0].rank_samples(epoch)
        assert sum(samples) == 24 and max(samples) - min(samples) <= 5 and len(set(samples)) > 1
        steps = streams[0].steps(epoch)
        assert steps == max(-(-n // 4) for n in samples) >= streams[0].steps_per_epoch
        seen = []
        for r, (batches, counts, totals) in enumerate(loaded):
            assert len(batches) == steps and counts == step_counts(samples[r], 4, steps) and sum(counts) == samples[r]
            assert totals == [sum(c) for c in zip(*(ld[1] for ld in loaded), strict=True)] and min(totals) > 0
            got = list(batches)
            assert len(got) == steps
            for batch, n in zip(got, counts, strict=True):
                assert batch["label"].shape[0] == max(n, 1)  # a padding step holds one item of weight 0
                seen += [ds.ids[i] for i in batch["index"][:n].tolist()]
        assert sorted(seen) == sorted(ds.ids)
    more_ranks = [ShardStream(ds, index, batch_size=4, shuffle_buffer=0, world=World(r, 8)) for r in range(8)]
    assert more_ranks[7].rank_samples(1)[7] == 0  # more ranks than shards: a rank with none only pads
    batches, counts, _ = more_ranks[7].epoch_loader(1, WaveCollator())
    assert counts == [0] * len(batches) and all(b["label"].shape[0] == 1 for b in batches)


def test_the_helpers_deal_shuffle_and_count():
    assert deal([5, 5, 4, 1], [0, 1, 2, 3], 2) == [[0, 2], [1, 3]]
    rng = np.random.default_rng(0)
    out = list(shuffled(range(20), 5, rng))
    assert sorted(out) == list(range(20)) and out != list(range(20))
    assert list(shuffled(range(5), 0, rng)) == list(range(5))
    assert step_counts(10, 4, 4) == [4, 4, 2, 0]


# ---------------------------------------------------------------------------------------------- (e) bad input
def copy_shards(env, tmp_path: Path) -> Path:
    return Path(shutil.copytree(env["shards"], tmp_path / "copy"))


def first_train_member(env) -> tuple[str, int, int]:
    entry = env["index"]["shards"][0]
    offset, size = entry["wav"][0]
    return entry["name"], offset, size


def test_a_missing_shard_folder_or_index_is_one_line(env, tmp_path, one_line_error):
    cfg = write_config(tmp_path / "c.yaml", env, data={"shards": str(tmp_path / "nowhere")})
    assert run_cli(train_cli.main, ["--config", str(cfg)]) == 2
    err = one_line_error()
    assert "shard folder" in err and "nowhere" in err and "mer-builder shards" in err
    assert not (tmp_path / "runs").exists()  # refused before a run folder exists
    copy = copy_shards(env, tmp_path)
    (copy / "index.json").unlink()
    with pytest.raises(UserError, match="index.json: not found.*not a complete shard set"):
        ShardIndex.open(copy)


def test_a_corrupt_member_is_one_line_when_read_and_when_streamed(env, tmp_path, one_line_error):
    copy = copy_shards(env, tmp_path)
    name, offset, size = first_train_member(env)
    with open(copy / name, "r+b") as fh:  # flip bytes inside the first WAV's samples: the tar stays valid
        fh.seek(offset + size - 8)
        fh.write(b"\x01\x02\x03\x04\x05\x06\x07\x08")
    index = ShardIndex.open(copy)
    rid = env["index"]["shards"][0]["ids"][0]
    with pytest.raises(UserError, match=rf"{name}:.*\.wav: corrupt shard member .*row {rid}"):
        index.clip(rid).read()
    ds = ManifestDataset(env["manifest"], ViewConfig(split="val"), TASK, mode="A", shards=index)  # unaffected view
    assert len(ds) == 8
    stream = ShardStream(ManifestDataset(env["manifest"], ViewConfig(split="train"), TASK, mode="A", shards=index,
                                         train=True), index, batch_size=4, shuffle_buffer=0)
    with pytest.raises(UserError, match="corrupt shard member"):
        list(stream)
    batches, _, _ = stream.epoch_loader(1, WaveCollator(), num_workers=1)
    with pytest.raises(UserError) as err:  # found in a DataLoader worker: still one line
        list(batches)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{copy / name}:") and "corrupt" in str(err.value)
    cfg = write_config(tmp_path / "c.yaml", env, data={"shards": str(copy)})
    assert run_cli(train_cli.main, ["--config", str(cfg)]) == 2  # the frame track's clip screen reads it first
    assert "corrupt shard member" in one_line_error()


def test_a_corrupt_tar_header_or_a_truncated_copy_is_one_line(env, tmp_path):
    entry = env["index"]["shards"][1]
    name = entry["name"]
    for where, expected in ((0, rf"{name}: corrupt shard \(.*\); copy it again or rebuild"),
                            (entry["wav"][1][0] - 512, rf"{name}: 1 of the 5 samples index.json lists .*truncated")):
        copy = copy_shards(env, tmp_path / str(where))
        data = bytearray((copy / name).read_bytes())
        data[where + 148:where + 156] = b"garbage!"  # a member header's checksum: the first, or the second sample's
        (copy / name).write_bytes(bytes(data))
        index = ShardIndex.open(copy)
        ds = ManifestDataset(env["manifest"], ViewConfig(split="train"), TASK, mode="A", shards=index, train=True)
        with pytest.raises(UserError, match=expected):
            list(ShardStream(ds, index, batch_size=4, shuffle_buffer=0))
    (copy / name).write_bytes(bytes(data[:4096]))
    with pytest.raises(UserError, match=rf"{name}: 4096 bytes, index.json records \d+ \(a partial copy"):
        ShardIndex.open(copy)


def test_shards_of_another_manifest_are_one_line(env, tmp_path):
    rows = rows_of(env["manifest"])
    other = env["manifest"].parent / "other_manifest.jsonl"  # one clip rewritten: its sha256 changed
    changed = dict(rows[2], sha256=hashlib.sha256(b"other audio").hexdigest())
    other.write_text("".join(json.dumps(r) + "\n" for r in [*rows[:2], changed, *rows[3:]]))
    with pytest.raises(UserError) as err:
        ManifestDataset(other, ViewConfig(split="train"), TASK, mode="A", shards=ShardIndex.open(env["shards"]))
    msg = str(err.value)
    assert "\n" not in msg and f"manifest row {rows[2]['id']}" in msg and "has other audio" in msg
    assert "built from another manifest" in msg and "rebuild them: mer-builder shards" in msg
    extra = dict(rows[0], id="TOYACT/train/new_row")
    other.write_text("".join(json.dumps(r) + "\n" for r in [*rows, extra]))
    with pytest.raises(UserError, match="manifest row TOYACT/train/new_row .* is not in the shards"):
        ManifestDataset(other, ViewConfig(split="train"), TASK, mode="A", shards=ShardIndex.open(env["shards"]))
    other.unlink()


def test_configs_that_do_not_fit_shards_are_one_line(env, tmp_path, capsys, one_line_error):
    cases = [({"shards": str(env["shards"]), "wave_cache": True}, "data.shards' and 'data.wave_cache'"),
             ({"shards": str(env["shards"]), "shuffle_buffer": -1}, "data.shuffle_buffer': expected >= 0")]
    for i, (data, expected) in enumerate(cases):
        cfg = write_config(tmp_path / f"c{i}.yaml", env, data=data)
        assert run_cli(train_cli.main, ["--config", str(cfg)]) == 2
        assert expected in one_line_error()
    cfg = write_config(tmp_path / "s.yaml", env, data={"shards": str(env["shards"])},
                       train={"sampler": {"class_balanced": True}, "progress": False})
    assert run_cli(train_cli.main, ["--config", str(cfg)]) == 2
    assert "config key 'train.sampler'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- torchrun
RECORD_BATCHES = """
import json, os
from mer.data import shard_stream as S
_orig = S.ShardStream.epoch_loader
def epoch_loader(self, epoch, collate_fn, num_workers=0):
    batches, counts, totals = _orig(self, epoch, collate_fn, num_workers)
    make = batches._batches_of
    def record(seed):
        seen = []
        for batch, n in zip(make(seed), counts):
            seen.append(batch["index"][:n].tolist())
            yield batch
        path = os.path.join(os.environ["SEEN_DIR"], f"rank{self.world.rank}_epoch{epoch}.json")
        with open(path, "w") as fh:
            json.dump({"counts": counts, "totals": totals, "seen": seen}, fh)
    batches._batches_of = record
    return batches, counts, totals
S.ShardStream.epoch_loader = epoch_loader
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")
def test_two_gloo_ranks_stream_every_training_row_once_per_epoch_with_uneven_shards(env, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(RECORD_BATCHES)
    (tmp_path / "seen").mkdir()
    cfg = write_config(tmp_path / "c.yaml", env, run={"name": "toy", "output_root": str(tmp_path / "runs"),
                                                     "seed": 3, "device": "cpu"},
                       data={"shards": str(env["shards"]), "shuffle_buffer": 4, "batch_size": 4, "num_workers": 1})
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "train_frame.py"), "--config", str(cfg)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "SEEN_DIR": str(tmp_path / "seen"),
             "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])},
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = open_view(env, "train", True).ids
    for epoch in (1, 2, 3):
        ranks = [json.loads((tmp_path / "seen" / f"rank{r}_epoch{epoch}.json").read_text()) for r in range(2)]
        assert len(ranks[0]["seen"]) == len(ranks[1]["seen"])  # the same steps on both ranks
        assert [len(s) for r in ranks for s in r["seen"]] == ranks[0]["counts"] + ranks[1]["counts"]
        assert ranks[0]["totals"] == [a + b for a, b in zip(ranks[0]["counts"], ranks[1]["counts"], strict=True)]
        assert min(ranks[0]["totals"]) > 0
        seen = [ids[i] for r in ranks for s in r["seen"] for i in s]
        assert sorted(seen) == sorted(ids)  # every training row once per epoch across the ranks
        # 24 rows in shards of 5, 5, 5, 5, 4: one rank holds 14 or 15, the other 10, so it pads its last step
        assert sorted(sum(r["counts"]) for r in ranks) in ([10, 14], [10, 15])
        assert 0 in ranks[0]["counts"] + ranks[1]["counts"]
    run = tmp_path / "runs" / "toy"
    train = read_csv(run / "metrics_train.csv")
    assert len(train) == 3 and (run / "eval_test" / "metrics_eval.json").is_file()
    assert proc.stdout.count("epoch   1") == 1  # one voice


# ---------------------------------------------------------------------------------------------- end-to-end track
def test_end_to_end_training_from_the_shards_in_order_equals_the_folder_run(env, tmp_path, monkeypatch, capsys):
    from helpers_hf import make_tiny_roberta, make_tiny_wavlm

    from mer.cli import train_hf as train_hf_cli

    audio, text = make_tiny_wavlm(tmp_path / "enc" / "wavlm"), make_tiny_roberta(tmp_path / "enc" / "roberta")
    runs = {}
    for name, data in (("folder", {}), ("shards", {"shards": str(env["shards"]), "shuffle_buffer": 0})):
        cfg = {
            "run": {"name": name, "output_root": str(tmp_path / "runs"), "seed": 5},
            "data": {"manifest": str(env["manifest"]), "task": {"labels": LABELS},
                     "views": {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
                     "eval_views": ["test"], "batch_size": 8, "eval_batch_size": 16, "max_audio_s": 1.0,
                     "context_turns": 1, "bucket_batches": 1, **data},
            "model": {"name": "hf_at", "mode": "AT", "hidden_dim": 16, "dropout": 0.1,
                      "fusion": {"layers": 1, "heads": 2, "dropout": 0.1},
                      "hf": {"audio_encoder": str(audio), "text_encoder": str(text)}},
            "train": {"epochs": 2, "lr": 3e-3, "progress": False, "scheduler": {"name": "none"}},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        with monkeypatch.context() as mp:
            if name == "folder":  # the rows in manifest order, as a stream without shuffling reads them
                mp.setattr(loop, "build_sampler", lambda labels, d, c, g: SequentialSampler(range(len(labels))))
            assert run_cli(train_hf_cli.main, ["--config", str(path)]) == 0
        assert ("shards      " in capsys.readouterr().out) == (name == "shards")
        runs[name] = tmp_path / "runs" / name
    for name in ("metrics_train.csv", "metrics_val.csv"):
        assert read_csv(runs["shards"] / name) == read_csv(runs["folder"] / name)
    assert read_csv(runs["shards"] / "eval_test" / "predictions.csv") == \
        read_csv(runs["folder"] / "eval_test" / "predictions.csv")
