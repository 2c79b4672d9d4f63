"""mer.evaluation.reports: eval output files, training curves, per-epoch CSV rows."""

from __future__ import annotations

import csv
import json
import os
import warnings

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from mer.errors import UserError
from mer.evaluation.metrics import compute_metrics
from mer.evaluation.reports import plot_curves, write_eval_outputs
from mer.training.history import append_csv_row, truncate_csv

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELS = ["anger", "joy", "neutral"]


def _read_csv(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 1000, path


def _tiny_case():
    ids = ["RAVDESS/Actor_01/a", "MELD/test/dia0_utt1", "CREMA-D/1001_x"]
    y_true = np.array([0, 1, 2])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.25, 0.5]], dtype=np.float32)
    return ids, y_true, probs


def test_write_eval_outputs_tiny_case(tmp_path):
    ids, y_true, probs = _tiny_case()
    out = tmp_path / "run1" / "eval_TestA"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = write_eval_outputs(
            out,
            ids=ids,
            y_true=y_true,
            probs=probs,
            labels=LABELS,
            run_name="run1",
            view_name="TestA",
            checkpoint="checkpoints/best.pt",
            extra={"epoch": np.int64(4), "seconds": 1.5},
        )
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.csv",
        "confusion_matrix.png",
        "metrics_eval.json",
        "predictions.csv",
        "reliability_diagram.png",
    ]  # and no temp files left behind

    assert _read_csv(out / "predictions.csv") == [
        ["id", "label", "pred", "prob_anger", "prob_joy", "prob_neutral"],
        ["RAVDESS/Actor_01/a", "anger", "anger", *(str(float(p)) for p in probs[0])],
        ["MELD/test/dia0_utt1", "joy", "neutral", *(str(float(p)) for p in probs[1])],
        ["CREMA-D/1001_x", "neutral", "neutral", *(str(float(p)) for p in probs[2])],
    ]
    # Probabilities round-trip exactly.
    rows = _read_csv(out / "predictions.csv")[1:]
    np.testing.assert_array_equal(
        np.array([[float(v) for v in r[3:]] for r in rows], dtype=np.float32), probs
    )

    saved = json.loads((out / "metrics_eval.json").read_text(encoding="utf-8"))
    assert saved == result
    expected = compute_metrics(y_true, probs.argmax(1), LABELS)
    assert {k: saved[k] for k in expected} == expected
    assert saved["acc"] == pytest.approx(2 / 3)
    assert (saved["run"], saved["view"], saved["checkpoint"]) == ("run1", "TestA", "checkpoints/best.pt")
    assert (saved["epoch"], saved["seconds"]) == (4, 1.5)
    assert saved["labels"] == LABELS and saved["n"] == 3

    assert _read_csv(out / "confusion_matrix.csv") == [
        ["true\\pred", "anger", "joy", "neutral"],
        ["anger", "1", "0", "0"],
        ["joy", "0", "0", "1"],
        ["neutral", "0", "0", "1"],
    ]
    _assert_png(out / "confusion_matrix.png")


def test_confusion_csv_equals_sklearn(tmp_path):
    rng = np.random.default_rng(0)
    labels = ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]
    n = 80
    y_true = rng.choice([0, 1, 2, 3, 4, 6], size=n)  # surprise absent from the view
    probs = rng.dirichlet(np.ones(7), size=n)
    ids = [f"DS/utt{i:03d}" for i in range(n)]
    write_eval_outputs(
        tmp_path,
        ids=ids,
        y_true=y_true,
        probs=probs,
        labels=labels,
        run_name="r",
        view_name="v",
        checkpoint="c",
    )
    rows = _read_csv(tmp_path / "confusion_matrix.csv")
    assert rows[0] == ["true\\pred", *labels]
    assert [r[0] for r in rows[1:]] == labels
    cm = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_array_equal(cm, confusion_matrix(y_true, probs.argmax(1), labels=list(range(7))))
    preds = _read_csv(tmp_path / "predictions.csv")
    assert [r[0] for r in preds[1:]] == ids
    assert [r[2] for r in preds[1:]] == [labels[i] for i in probs.argmax(1)]


def test_write_eval_outputs_bad_input(tmp_path):
    ids, y_true, probs = _tiny_case()
    common = dict(labels=LABELS, run_name="r", view_name="TestB", checkpoint="c")
    with pytest.raises(ValueError, match=r"probs: expected shape \[n, 3\]"):
        write_eval_outputs(tmp_path, ids=ids, y_true=y_true, probs=probs[:, :2], **common)
    with pytest.raises(ValueError, match="differ in length"):
        write_eval_outputs(tmp_path, ids=ids[:2], y_true=y_true, probs=probs, **common)
    with pytest.raises(ValueError, match="duplicate id 'CREMA-D/1001_x'"):
        write_eval_outputs(tmp_path, ids=[ids[0], ids[2], ids[2]], y_true=y_true, probs=probs, **common)
    with pytest.raises(ValueError, match="extra: key 'acc' clashes"):
        write_eval_outputs(tmp_path, ids=ids, y_true=y_true, probs=probs, extra={"acc": 1}, **common)
    with pytest.raises(UserError, match="view 'TestB' of run 'r' has no samples"):
        write_eval_outputs(tmp_path, ids=[], y_true=np.array([], int), probs=np.zeros((0, 3)), **common)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def _write_rows(path, rows):
    for row in rows:
        append_csv_row(path, row)


def test_plot_curves(tmp_path):
    _write_rows(
        tmp_path / "metrics_train.csv",
        [{"epoch": e, "loss": 2.0 / e, "acc": 0.3 + 0.1 * e, "lr": 1e-3 / e} for e in (1, 2, 3)],
    )
    _write_rows(
        tmp_path / "metrics_val.csv",
        [
            {"epoch": e, "loss": 2.5 / e, "acc": 0.2 + 0.1 * e, "macro_f1": 0.1 * e, "uar": 0.15 * e}
            for e in (1, 2, 3)
        ],
    )
    written = plot_curves(tmp_path)
    assert written == {
        "loss": str(tmp_path / "plots" / "loss.png"),
        "metrics": str(tmp_path / "plots" / "metrics.png"),
        "lr": str(tmp_path / "plots" / "lr.png"),
    }
    for path in written.values():
        _assert_png(tmp_path / "plots" / os.path.basename(path))
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["loss.png", "lr.png", "metrics.png"]


def test_plot_curves_one_epoch_val_only_missing_columns(tmp_path):
    (tmp_path / "metrics_val.csv").write_text("epoch,loss,weighted_f1\n1,0.9,\n", encoding="utf-8")
    written = plot_curves(tmp_path)
    assert set(written) == {"loss"}  # weighted_f1 is empty and no lr: those plots are not written
    _assert_png(tmp_path / "plots" / "loss.png")
    assert not (tmp_path / "plots" / "metrics.png").exists()


def test_plot_curves_errors(tmp_path):
    with pytest.raises(UserError, match="neither metrics_train.csv nor metrics_val.csv"):
        plot_curves(tmp_path)
    (tmp_path / "metrics_val.csv").write_text("epoch,loss\n", encoding="utf-8")
    with pytest.raises(UserError, match="has any epoch rows"):
        plot_curves(tmp_path)
    (tmp_path / "metrics_train.csv").write_text('epoch,loss\n1,"0.5\n', encoding="utf-8")
    with pytest.raises(UserError, match="metrics_train.csv: not a readable metrics CSV"):
        plot_curves(tmp_path)


def test_append_csv_row_header_and_new_columns(tmp_path):
    path = tmp_path / "sub" / "metrics_val.csv"
    append_csv_row(path, {"epoch": 1, "loss": 0.5, "acc": np.float32(0.25)})
    append_csv_row(path, {"epoch": 2, "loss": 0.25})
    append_csv_row(path, {"epoch": 3, "loss": 0.125, "acc": 0.75, "uar": float("nan"), "lr": None})
    append_csv_row(path, {"epoch": 4, "loss": 0.0625, "acc": 0.5, "uar": 0.5, "lr": 1e-4})
    assert _read_csv(path) == [
        ["epoch", "loss", "acc", "uar", "lr"],
        ["1", "0.5", "0.25", "", ""],
        ["2", "0.25", "", "", ""],
        ["3", "0.125", "0.75", "", ""],
        ["4", "0.0625", "0.5", "0.5", "0.0001"],
    ]
    assert [p.name for p in path.parent.iterdir()] == ["metrics_val.csv"]


def test_truncate_csv(tmp_path):
    path = tmp_path / "metrics_train.csv"
    _write_rows(path, [{"epoch": e, "loss": 1.0 / e} for e in range(1, 6)])
    assert truncate_csv(path, 3) == 3
    assert _read_csv(path) == [["epoch", "loss"], ["1", "1.0"], ["2", "0.5"], ["3", "0.3333333333333333"]]
    append_csv_row(path, {"epoch": 4, "loss": 0.2})
    assert [r[0] for r in _read_csv(path)] == ["epoch", "1", "2", "3", "4"]
    assert truncate_csv(path, 0) == 0
    assert _read_csv(path) == [["epoch", "loss"]]
    assert truncate_csv(tmp_path / "missing.csv", 3) == 0
    assert not (tmp_path / "missing.csv").exists()


def test_truncate_csv_bad_files(tmp_path):
    no_epoch = tmp_path / "a.csv"
    no_epoch.write_text("step,loss\n1,0.5\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"a\.csv: no 'epoch' column"):
        truncate_csv(no_epoch, 1)
    bad_epoch = tmp_path / "b.csv"
    bad_epoch.write_text("epoch,loss\n1,0.5\nx,0.4\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"b\.csv, line 3: epoch 'x' is not a number"):
        truncate_csv(bad_epoch, 1)
    assert bad_epoch.read_text(encoding="utf-8") == "epoch,loss\n1,0.5\nx,0.4\n"  # untouched
    too_many = tmp_path / "c.csv"
    too_many.write_text("epoch,loss\n1,0.5,9\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"c\.csv, line 2: more cells than the 2 header columns"):
        append_csv_row(too_many, {"epoch": 2, "loss": 0.1})
