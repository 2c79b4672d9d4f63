"""Fold schemes: speaker-disjoint train/val/test, every row tested once, deterministic, one-line errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from mer.data.folds import make_folds, parse_scheme, write_fold_file
from mer.errors import UserError

LABELS = ["anger", "joy", "sadness", "neutral"]


def _rows(n_speakers: int = 10, per: int = 8, sessions: int = 5) -> list[dict]:
    rows = []
    for s in range(n_speakers):
        for i in range(per + s % 3):
            rows.append({
                "id": f"D/s{s:02d}/u{i:02d}", "speaker": f"D/{s:02d}",
                "label": LABELS[(i + s) % len(LABELS)] if s != 3 else "anger",
                "session": f"Ses{s % sessions + 1}", "dataset": "D",
            })
    return rows


def _check_protocol(rows: list[dict], folds) -> None:
    by_id = {r["id"]: r for r in rows}
    for f in folds:
        parts = {"train": f.train_ids, "val": f.val_ids, "test": f.test_ids}
        spk = {k: {by_id[i]["speaker"] for i in v} for k, v in parts.items()}
        assert not spk["train"] & spk["val"] and not spk["train"] & spk["test"] and not spk["val"] & spk["test"]
        assert spk["train"] == set(f.train_speakers) and spk["val"] == set(f.val_speakers)
        assert spk["test"] == set(f.test_speakers)
        ids = f.train_ids + f.val_ids + f.test_ids + f.excluded_ids
        assert sorted(ids) == sorted(by_id)  # a partition of the rows
    tested = Counter(i for f in folds for i in f.test_ids)
    assert set(tested) == set(by_id) and set(tested.values()) == {1}


@pytest.mark.parametrize("scheme", ["speakers:5", "speakers:3", "loso", "group:session"])
def test_schemes_are_speaker_disjoint_and_test_every_row_once(scheme):
    rows = _rows()
    folds = make_folds(rows, scheme, seed=1)
    _check_protocol(rows, folds)
    assert all(f.val_ids for f in folds)
    expected = {"speakers:5": 5, "speakers:3": 3, "loso": 10, "group:session": 5}[scheme]
    assert len(folds) == expected and [f.name for f in folds] == sorted(f.name for f in folds)


def test_speaker_folds_deterministic_for_a_seed_and_row_order():
    rows = _rows(12)
    a = make_folds(rows, "speakers:4", seed=7)
    b = make_folds(list(reversed(rows)), "speakers:4", seed=7)
    assert a == b
    others = [make_folds(rows, "speakers:4", seed=s) for s in range(8)]
    assert any([f.test_speakers for f in o] != [f.test_speakers for f in a] for o in others)


def test_speaker_folds_are_stratified():
    # 8 speakers, each with one label only (two per label): stratified 2-fold puts one of each pair in each fold
    rows = [{"id": f"s{s}/{i}", "speaker": f"s{s}", "label": LABELS[s % 4]} for s in range(8) for i in range(10)]
    by_id = {r["id"]: r for r in rows}
    for seed in range(3):
        for f in make_folds(rows, "speakers:2", seed=seed, val=1):
            assert Counter(by_id[i]["label"] for i in f.test_ids) == {lab: 10 for lab in LABELS}


def test_validation_count_fraction_next_and_none():
    rows = _rows()
    one = make_folds(rows, "loso", val=1)
    assert all(len(f.val_speakers) == 1 for f in one)
    frac = make_folds(rows, "speakers:5", val=0.25)
    assert all(len(f.val_speakers) == round(0.25 * (10 - len(f.test_speakers))) for f in frac)
    nxt = make_folds(rows, "speakers:5", val="next")
    for k, f in enumerate(nxt):
        assert f.val_speakers == nxt[(k + 1) % 5].test_speakers
    none = make_folds(rows, "loso", val=0)
    assert all(not f.val_ids for f in none)
    _check_protocol(rows, none)


def test_validation_speaker_is_label_balanced():
    rows = _rows()  # speaker D/03 has only anger: never the one validation speaker of a fold
    folds = make_folds(rows, "loso", val=1, seed=3)
    assert all(f.val_speakers != ["D/03"] for f in folds)


def test_group_field_excludes_test_speakers_rows_elsewhere():
    rows = _rows(4, per=6)
    for i, r in enumerate(rows):
        r["session"] = f"S{i % 2}"  # every speaker in both sessions
    rows += [{"id": f"X/{i}", "speaker": f"X/{i % 3}", "label": LABELS[i % 4], "session": "S2"} for i in range(12)]
    folds = make_folds(rows, "group:session", val=1)
    _check_protocol(rows, folds)
    s0 = folds[0]
    assert s0.held_out == ["S0"] and s0.excluded_ids and set(s0.train_speakers) | set(s0.val_speakers) <= {
        "X/0", "X/1", "X/2"}


def test_fold_file_assignments(tmp_path):
    rows = _rows()
    spk_json = tmp_path / "speakers.json"
    spk_json.write_text(json.dumps({f"D/{s:02d}": s // 2 + 1 for s in range(10)}))
    folds = make_folds(rows, f"file:{spk_json}", val="next")
    _check_protocol(rows, folds)
    assert [f.test_speakers for f in folds][:2] == [["D/00", "D/01"], ["D/02", "D/03"]]
    assert folds[0].val_speakers == ["D/02", "D/03"] and folds[0].held_out == ["1"]
    id_csv = tmp_path / "ids.csv"
    id_csv.write_text("id,fold\n" + "".join(f"{r['id']},{'ab'[int(r['speaker'][-2:]) % 2]}\n" for r in rows))
    folds = make_folds(rows, str(id_csv), val=1)
    assert len(folds) == 2
    _check_protocol(rows, folds)


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_written_fold_file_reads_back_the_same(tmp_path, suffix):
    rows = _rows()
    folds = make_folds(rows, "speakers:5", seed=3)
    path = write_fold_file(folds, tmp_path / f"folds{suffix}", scheme="speakers:5", seed=3, rows=rows)
    again = make_folds(rows, f"file:{path}")
    assert [(f.name, f.train_ids, f.val_ids, f.test_ids, f.val_speakers) for f in again] == [
        (f.name, f.train_ids, f.val_ids, f.test_ids, f.val_speakers) for f in folds]


def test_errors(tmp_path):
    rows = _rows()
    for bad in ["speakers", "speakers:x", "speakers:1", "kfold:5", "group:"]:
        with pytest.raises(UserError, match="fold scheme"):
            parse_scheme(bad)
    with pytest.raises(UserError, match="only 10 speakers"):
        make_folds(rows, "speakers:11")
    with pytest.raises(UserError, match="no 'room' field"):
        make_folds(rows, "group:room")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({**{r["id"]: 1 for r in rows}, "D/ghost/u01": 2}))
    with pytest.raises(UserError, match="unknown ids.*D/ghost/u01"):
        make_folds(rows, f"file:{unknown}")
    partial = tmp_path / "partial.csv"
    partial.write_text("speaker,fold\nD/00,1\nD/01,2\n")
    with pytest.raises(UserError, match="no fold for 8 speakers"):
        make_folds(rows, f"file:{partial}")
    two = _rows(2)
    with pytest.raises(UserError, match="too few to hold out"):
        make_folds(two, "loso", val=1)
    with pytest.raises(UserError, match="no training speakers"):
        make_folds(two, "loso", val="next")
    shared = [{"id": f"{spk}{ses}{i}", "speaker": spk, "label": LABELS[i], "session": ses}
              for spk, ses in [("A", "S1"), ("A", "S2"), ("B", "S3"), ("C", "S3")] for i in range(3)]
    with pytest.raises(UserError, match="fold1 has no validation speakers"):
        make_folds(shared, "group:session", val="next")  # the next fold's only speaker is this fold's test speaker
    with pytest.raises(UserError, match="'speaker'"):
        make_folds([{"id": "a", "label": "joy"}], "loso")
    with pytest.raises(UserError, match="not found"):
        make_folds(rows, f"file:{tmp_path / 'nope.json'}")
    with pytest.raises(UserError, match="val="):
        make_folds(rows, "loso", val=1.5)
    with pytest.raises(UserError) as info:
        make_folds(rows, "speakers:11")
    assert "\n" not in str(info.value)
