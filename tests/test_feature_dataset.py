"""FeatureDataset: view selection, task mapping, batches, masks, DataLoader paths, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_store import make_store, store_arrays
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from mer.errors import UserError
from mer.features.dataset import FeatureDataset, collate_batch
from mer.features.memmap import MemmapStore
from mer.schema import EMOTIONS_7, TaskConfig, ViewConfig

TASK7 = TaskConfig()


@pytest.fixture(scope="module")
def mm_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("ds"), 70, 6, 4, memmap=True)


def test_view_rows_labels_and_order(mm_store):
    meta, audio, text = store_arrays(70, 6, 4)
    ds = FeatureDataset(mm_store, ViewConfig(split="train"), TASK7, view_name="train")
    want = [i for i, m in enumerate(meta) if m["split"] == "train"]
    assert len(ds) == len(want) and ds.store_indices.tolist() == want
    assert ds.ids == [meta[i]["id"] for i in want]
    assert ds.meta == [{k: meta[i][k] for k in ds.meta[0]} for i in want]
    assert ds.label_ids.dtype == np.int64
    assert ds.label_ids.tolist() == [EMOTIONS_7.index(meta[i]["label"]) for i in want]
    assert ds.labels == EMOTIONS_7 and ds.dropped == {}
    assert (ds.audio_dim, ds.text_dim) == (6, 4)
    assert ds.class_counts().sum() == len(ds)


def test_getitems_batch(mm_store):
    meta, audio, text = store_arrays(70, 6, 4)
    ds = FeatureDataset(mm_store, ViewConfig(split="train"), TASK7)
    pos = [7, 0, 3, 3, len(ds) - 1]
    b = ds.__getitems__(pos)
    assert set(b) == {"audio", "text", "label", "index", "audio_mask", "text_mask"}
    assert b["audio"].dtype == torch.float32 and b["audio"].shape == (5, 6)
    assert b["text"].dtype == torch.float32 and b["text"].shape == (5, 4)
    assert b["label"].dtype == torch.int64 and b["index"].dtype == torch.int64
    assert b["audio_mask"].dtype == torch.bool and b["audio_mask"].all() and b["text_mask"].all()
    rows = ds.store_indices[pos]
    np.testing.assert_array_equal(b["audio"].numpy(), audio[rows])
    np.testing.assert_array_equal(b["text"].numpy(), text[rows])
    assert b["index"].tolist() == pos
    assert b["label"].tolist() == ds.label_ids[pos].tolist()
    item = ds[3]
    assert item["audio"].shape == (6,) and item["label"].shape == () and item["audio_mask"].item() is True
    np.testing.assert_array_equal(item["audio"].numpy(), audio[ds.store_indices[3]])
    with pytest.raises(IndexError):
        ds[len(ds)]


def assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        assert set(x) == set(y)
        for k in x:
            assert x[k].dtype == y[k].dtype, k
            assert torch.equal(x[k], y[k]), k


def test_dataloader_paths_give_the_same_batches(mm_store):
    ds = FeatureDataset(mm_store, None, TASK7)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = BatchSampler(order, batch_size=16, drop_last=False)
    via_getitems = list(DataLoader(ds, batch_sampler=sampler, collate_fn=collate_batch))
    via_list_index = list(DataLoader(ds, sampler=sampler, batch_size=None))  # ds[list] -> default_convert
    via_items = [collate_batch([ds[i] for i in batch]) for batch in sampler]  # per-item default collation
    assert_batches_equal(via_getitems, via_list_index)
    assert_batches_equal(via_getitems, via_items)
    assert via_getitems[-1]["audio"].shape == (70 % 16, 6)
    seq = list(DataLoader(ds, batch_size=32, shuffle=False, collate_fn=collate_batch))
    assert torch.cat([b["index"] for b in seq]).tolist() == list(range(70))
    assert_batches_equal(seq, list(DataLoader(ds, batch_sampler=BatchSampler(SequentialSampler(ds), 32, False),
                                              collate_fn=collate_batch)))


def test_dataloader_worker_process(mm_store):
    ds = FeatureDataset(mm_store, ViewConfig(split="test"), TASK7)
    main = list(DataLoader(ds, batch_size=8, collate_fn=collate_batch))
    worker = list(DataLoader(ds, batch_size=8, collate_fn=collate_batch, num_workers=1))
    assert_batches_equal(main, worker)


def test_store_folder_memmap_and_preload_agree(tmp_path):
    store = make_store(tmp_path, 40, 5, 3, shard_size=7)
    mm = make_store(tmp_path, 40, 5, 3, shard_size=7, name="store2", memmap=True)
    view = ViewConfig(split=["train", "val"])
    a = FeatureDataset(store, view, TASK7)
    b = FeatureDataset(MemmapStore(mm), view, TASK7)  # an opened store works too
    c = FeatureDataset(mm, view, TASK7, preload=True)
    pos = list(range(len(a)))[::-1]
    assert_batches_equal([a.__getitems__(pos)], [b.__getitems__(pos)])
    assert_batches_equal([a.__getitems__(pos)], [c.__getitems__(pos)])


def test_iemocap4_mapping_from_source_label(tmp_path):
    src = ["neu", "hap", "exc", "sad", "ang", "fru", "xxx", "neu", "exc", "fru", "sur", "ang"]
    rows = [{"source_label": s, "split": "train"} for s in src]
    store = make_store(tmp_path, len(src), 3, 2, rows=rows)
    task = TaskConfig(
        labels=["neutral", "happy", "sad", "angry"],
        source_field="source_label",
        mapping={"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"},
    )
    ds = FeatureDataset(store, ViewConfig(split="train"), task)
    assert ds.dropped == {"fru": 2, "sur": 1, "xxx": 1}
    assert ds.store_indices.tolist() == [0, 1, 2, 3, 4, 7, 8, 11]
    assert [ds.labels[i] for i in ds.label_ids] == ["neutral", "happy", "happy", "sad", "angry", "neutral", "happy",
                                                    "angry"]
    assert ds.class_counts().tolist() == [2, 3, 1, 2]
    # an unmapped value that already is a task label is kept as is
    ds2 = FeatureDataset(store, None, TaskConfig(labels=["neu", "sad"], source_field="source_label"))
    assert ds2.store_indices.tolist() == [0, 3, 7] and ds2.label_ids.tolist() == [0, 1, 0]


def test_empty_view_error_names_view_and_filters(mm_store):
    with pytest.raises(UserError, match=r"view 'TestB' \(split=tset, dataset=MELD\) of .* selects no rows "
                                        r"\(split values in the store: test, train, val; dataset values in the store: "
                                        r"CREMA-D, MELD, RAVDESS\)"):
        FeatureDataset(mm_store, ViewConfig(split="tset", dataset="MELD"), TASK7, view_name="TestB")
    with pytest.raises(UserError, match=r"view 'x' \(split=test\) .* selects 14 rows but none has a task label"):
        FeatureDataset(mm_store, ViewConfig(split="test"), TaskConfig(labels=["calm"]), view_name="x")


def test_missing_modality_gives_empty_tensor_and_false_mask(tmp_path):
    store = make_store(tmp_path, 20, 0, 5, memmap=True)
    ds = FeatureDataset(store, None, TASK7)
    b = next(iter(DataLoader(ds, batch_size=8, collate_fn=collate_batch)))
    assert b["audio"].shape == (8, 0) and b["audio"].dtype == torch.float32
    assert not b["audio_mask"].any() and b["text_mask"].all() and b["text"].shape == (8, 5)


def nearest_mean_accuracy(store) -> float:
    ds = FeatureDataset(store, None, TASK7)
    b = ds.__getitems__(list(range(len(ds))))
    x, y = torch.cat([b["audio"], b["text"]], 1), b["label"]
    means = torch.stack([x[y == k].mean(0) for k in range(7)])
    return (torch.cdist(x, means).argmin(1) == y).float().mean().item()


def test_learnable_toy_task_is_separable(tmp_path):
    assert nearest_mean_accuracy(make_store(tmp_path, 140, 8, 4, learnable=True, memmap=True)) > 0.95
    assert nearest_mean_accuracy(make_store(tmp_path, 140, 8, 4, name="noise", memmap=True)) < 0.7
