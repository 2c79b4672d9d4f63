"""The written batch contract (mer.data.batch) holds for every track: each dataset is a `LabelledDataset`, and the
batches its collator makes carry exactly the declared keys, with the declared dtypes and shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_hf import make_tiny_roberta, make_tiny_wavlm
from helpers_manifest import make_tone_manifest
from helpers_store import make_store

from mer.data.batch import (
    AudioTextBatch,
    CommonBatch,
    FeatureBatch,
    LabelledDataset,
    LengthsDataset,
    TargetsBatch,
    WaveBatch,
)
from mer.data.manifest_dataset import HFCollator, ManifestDataset
from mer.data.targets import Targets
from mer.data.wave_batch import WaveCollator
from mer.features.dataset import FeatureDataset, collate_batch
from mer.features.hf_encoders import load_encoder
from mer.features.memmap import MemmapStore
from mer.schema import TaskConfig, ViewConfig

LABELS = ["anger", "joy", "sadness", "neutral"]
INT_KEYS = {"label", "index", "gender", "input_ids", "audio_attention_mask", "text_attention_mask"}
BOOL_KEYS = {"audio_mask", "text_mask", "dims_mask"}


def keys_of(*types) -> tuple[set[str], set[str]]:
    """(required keys, allowed keys) of the TypedDicts."""
    required, allowed = set(), set()
    for t in types:
        required |= set(t.__required_keys__)
        allowed |= set(t.__annotations__)
    return required, allowed


def check(batch: dict, n: int, *types) -> None:
    required, allowed = keys_of(CommonBatch, TargetsBatch, *types)
    assert required <= set(batch) <= allowed, (sorted(batch), sorted(allowed))
    for key, value in batch.items():
        assert value.shape[0] == n, key
        if key in INT_KEYS:
            assert value.dtype == torch.int64, key
        elif key in BOOL_KEYS:
            assert value.dtype == torch.bool, key
        else:
            assert value.dtype == torch.float32, key
    for a, b in (("input_values", "audio_attention_mask"), ("input_ids", "text_attention_mask")):
        if a in batch:
            assert batch[a].shape == batch[b].shape


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    return {"root": root, "manifest": make_tone_manifest(root / "data", per_split={"train": 2, "val": 1, "test": 1}),
            "store": make_store(root, 40, 6, 5, memmap=True)}


def test_feature_batches_follow_the_contract(env):
    ds = FeatureDataset(MemmapStore(env["store"]), ViewConfig(split="train"), TaskConfig())
    assert isinstance(ds, LabelledDataset)
    ds.targets = Targets(ds.meta, ["arousal"], {}, True, require=False)
    batch = collate_batch(ds.__getitems__([0, 1, 2]))
    check(batch, 3, FeatureBatch)
    assert batch["audio"].shape == (3, 6) and batch["text"].shape == (3, 5)


@pytest.mark.parametrize("mode", ["A", "T", "AT"])
def test_end_to_end_batches_follow_the_contract(env, mode):
    wavlm, roberta = make_tiny_wavlm(env["root"] / "wavlm"), make_tiny_roberta(env["root"] / "roberta")
    ds = ManifestDataset(env["manifest"], ViewConfig(split="train"), TaskConfig(labels=LABELS), mode=mode)
    assert isinstance(ds, LengthsDataset) and len(ds.lengths) == len(ds)
    fe = load_encoder(str(wavlm), "audio")[1] if "A" in mode else None
    tok = load_encoder(str(roberta), "text")[1] if "T" in mode else None
    batch = HFCollator(fe, tok, mode, max_text_tokens=32, min_audio_samples=400)([ds[i] for i in range(4)])
    check(batch, 4, AudioTextBatch)
    assert ("input_values" in batch) == ("A" in mode) and ("input_ids" in batch) == ("T" in mode)


def test_frame_batches_follow_the_contract(env):
    items = _frame_items(env, 5)
    batch = WaveCollator(min_samples=400)(items)
    check(batch, 5, WaveBatch)
    lengths = batch["audio_attention_mask"].sum(1).numpy()
    assert np.array_equal(lengths, [max(400, len(it["audio"])) for it in items])  # right padding, real samples


def test_moving_a_batch_to_the_device_leaves_the_host_side_keys_on_the_cpu(env):
    """The loop moves a batch's tensors to the model's device, except `index` (`HOST_KEYS`): the evaluator and the
    conv feature cache read it without waiting for the device."""
    from mer.training.loop import HOST_KEYS, move_to_device

    batch = WaveCollator(min_samples=400)(_frame_items(env, 3))
    moved = move_to_device(batch, torch.device("meta"))
    assert "index" in HOST_KEYS and moved["index"].device.type == "cpu"
    assert all(v.device.type == "meta" for k, v in moved.items() if isinstance(v, torch.Tensor) and k != "index")
    assert torch.equal(moved["index"], batch["index"])


def _frame_items(env, n: int) -> list[dict]:
    ds = ManifestDataset(env["manifest"], ViewConfig(split="train"), TaskConfig(labels=LABELS), mode="A")
    ds.targets = Targets(ds.meta, [], {}, True, require=False)
    return [ds[i] for i in range(n)]
