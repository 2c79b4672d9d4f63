"""Tests for mer.config: YAML loading, `base:` inheritance, `--set` overrides, validation, run folders."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from mer.config import (
    RESOLVED_NAME,
    add_config_args,
    check_resume_compatible,
    config_from_args,
    dump_yaml,
    load_config,
    make_run_dir,
    prepare_run,
    to_dict,
    validate,
    write_resolved,
)
from mer.errors import UserError
from mer.schema import ExperimentConfig, ViewConfig

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- base inheritance


def test_base_relative_to_naming_file_from_subfolder(tmp_path):
    write(tmp_path / "shared" / "common.yaml", "run: {seed: 7}\ntrain: {lr: 0.01, epochs: 3}\n")
    write(tmp_path / "exps" / "sub" / "exp.yaml", "base: ../../shared/common.yaml\ntrain: {epochs: 9}\n")
    cfg = load_config(tmp_path / "exps" / "sub" / "exp.yaml").cfg
    assert (cfg.run.seed, cfg.train.lr, cfg.train.epochs) == (7, 0.01, 9)


def test_base_chain_resolves_each_path_against_its_own_file(tmp_path):
    write(tmp_path / "a" / "root.yaml", "model: {hidden_dim: 64}\n")
    write(tmp_path / "a" / "mid.yaml", "base: root.yaml\nmodel: {dropout: 0.5}\n")
    write(tmp_path / "b" / "exp.yaml", "base: ../a/mid.yaml\nmodel: {mode: A}\n")
    model = load_config(tmp_path / "b" / "exp.yaml").cfg.model
    assert (model.hidden_dim, model.dropout, model.mode) == (64, 0.5, "A")


def test_deep_merge_of_nested_sections_and_list_replace(tmp_path):
    write(
        tmp_path / "base.yaml",
        "train:\n  scheduler: {name: cosine, warmup_epochs: 1.5}\n  lr_overrides: {encoder: 1.0e-5}\n"
        "data:\n  eval_views: [test, val]\n  task: {labels: [a, b, c]}\n",
    )
    write(
        tmp_path / "exp.yaml",
        "base: base.yaml\ntrain:\n  scheduler: {patience: 4}\n  lr_overrides: {head: 0.01}\n"
        "data:\n  eval_views: [val]\n  task: {labels: [x]}\n",
    )
    raw = load_config(tmp_path / "exp.yaml").raw
    sched = raw["train"]["scheduler"]
    assert (sched["name"], sched["warmup_epochs"], sched["patience"]) == ("cosine", 1.5, 4)
    assert raw["train"]["lr_overrides"] == {"encoder": 1e-5, "head": 0.01}
    assert raw["data"]["eval_views"] == ["val"]  # lists replace, never append
    assert raw["data"]["task"]["labels"] == ["x"]
    assert raw["train"]["epochs"] == 30  # defaults filled in


def test_multiple_bases_merge_in_order(tmp_path):
    write(tmp_path / "one.yaml", "run: {seed: 1, name: one}\ntrain: {lr: 0.1}\n")
    write(tmp_path / "two.yaml", "run: {seed: 2}\nmodel: {hidden_dim: 32}\n")
    write(tmp_path / "exp.yaml", "base: [one.yaml, two.yaml]\ntrain: {epochs: 2}\n")
    cfg = load_config(tmp_path / "exp.yaml").cfg
    assert (cfg.run.seed, cfg.run.name, cfg.train.lr, cfg.model.hidden_dim, cfg.train.epochs) == (
        2, "one", 0.1, 32, 2,
    )


def test_shared_base_twice_is_not_a_cycle(tmp_path):
    write(tmp_path / "root.yaml", "run: {seed: 3}\n")
    write(tmp_path / "l.yaml", "base: root.yaml\n")
    write(tmp_path / "r.yaml", "base: root.yaml\n")
    write(tmp_path / "exp.yaml", "base: [l.yaml, r.yaml]\n")
    assert load_config(tmp_path / "exp.yaml").cfg.run.seed == 3


def test_cycle_is_reported_with_the_chain(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    msg = error_of(load_config, tmp_path / "a.yaml")
    assert "a.yaml -> b.yaml -> a.yaml" in msg
    write(tmp_path / "self.yaml", "base: self.yaml\n")
    assert "self.yaml -> self.yaml" in error_of(load_config, tmp_path / "self.yaml")


def test_missing_base_names_the_file_and_who_named_it(tmp_path):
    write(tmp_path / "exp.yaml", "base: nope.yaml\n")
    msg = error_of(load_config, tmp_path / "exp.yaml")
    assert "config file not found" in msg and "nope.yaml" in msg and "exp.yaml" in msg


def test_bad_base_value(tmp_path):
    write(tmp_path / "exp.yaml", "base: {a: 1}\n")
    assert "'base' must be a path or a list of paths" in error_of(load_config, tmp_path / "exp.yaml")


def test_shipped_base_features_fragment(tmp_path):
    exp = write(
        tmp_path / "exp.yaml",
        f"base: {REPO / 'configs' / 'base_features.yaml'}\nrun: {{name: demo}}\ndata: {{store: s}}\n",
    )
    cfg = load_config(exp).cfg
    assert cfg.run.output_root == "runs"
    assert cfg.data.views["testA"] == ViewConfig(split="test", domain="acted")
    assert cfg.data.views["testB"] == ViewConfig(split="test", dataset="MELD")
    assert set(cfg.data.views) >= {"train", "val", "test"}
    assert cfg.data.eval_views == ["testA", "testB"]


# ---------------------------------------------------------------- file errors


def test_missing_config_file(tmp_path):
    msg = error_of(load_config, tmp_path / "missing.yaml")
    assert msg == f"config file not found: {tmp_path / 'missing.yaml'}"


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = write(tmp_path / "bad.yaml", "run:\n  name: x\n  seed: [1, 2\ntrain: {}\n")
    msg = error_of(load_config, path)
    assert msg.startswith(f"{path}:4:") and "invalid YAML" in msg
    assert "flow sequence at line 3:9" in msg  # where the unclosed bracket opened


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path / "list.yaml", "- a\n- b\n")
    msg = error_of(load_config, path)
    assert str(path) in msg and "mapping" in msg and "list" in msg


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path / "dup.yaml", "train:\n  lr: 0.1\n  lr: 0.2\n")
    msg = error_of(load_config, path)
    assert msg.startswith(f"{path}:3:3") and "duplicate key 'lr'" in msg


def test_empty_file_means_all_defaults(tmp_path):
    path = write(tmp_path / "empty.yaml", "# nothing set\n")
    assert load_config(path).cfg == ExperimentConfig()


def test_exponent_floats_in_files_are_floats(tmp_path):
    path = write(tmp_path / "exp.yaml", "train: {lr: 3e-4, weight_decay: 1E-2}\n")
    train = load_config(path).cfg.train
    assert (train.lr, train.weight_decay) == (3e-4, 1e-2)


# ---------------------------------------------------------------- --set overrides


@pytest.fixture
def exp_file(tmp_path):
    return write(tmp_path / "exp.yaml", "run: {name: base_run}\ntrain: {lr: 0.1}\n")


def test_set_value_typing(exp_file):
    loaded = load_config(
        exp_file,
        [
            "train.lr=1e-4",
            "train.epochs=3",
            "train.ema.enabled=true",
            "train.grad_clip=null",
            "data.eval_views=[a, b]",
            "run.name='42'",
            "data.views.extra.split=[train, val]",
            "train.sampler.dataset_factors={MELD: 3}",
        ],
    )
    cfg = loaded.cfg
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1e-4
    assert cfg.train.epochs == 3 and type(cfg.train.epochs) is int
    assert cfg.train.ema.enabled is True
    assert cfg.train.grad_clip is None
    assert cfg.data.eval_views == ["a", "b"]
    assert cfg.run.name == "42"
    assert cfg.data.views["extra"] == ViewConfig(split=["train", "val"])
    assert cfg.train.sampler.dataset_factors == {"MELD": 3.0}
    assert type(cfg.train.sampler.dataset_factors["MELD"]) is float
    assert loaded.raw["train"]["lr"] == 1e-4 and loaded.raw["data"]["views"]["extra"]["domain"] is None


@pytest.mark.parametrize("text,value", [("1e-4", 1e-4), ("-2.5E+3", -2500.0), ("1.0e5", 1e5), (".5e1", 5.0)])
def test_set_exponent_forms_become_floats(exp_file, text, value):
    lr = load_config(exp_file, [f"train.lr={text}"]).cfg.train.lr
    assert lr == value and isinstance(lr, float)


def test_set_later_override_wins_and_file_is_untouched(exp_file):
    cfg = load_config(exp_file, ["train.lr=0.5", "train.lr=0.25"]).cfg
    assert cfg.train.lr == 0.25
    assert load_config(exp_file).cfg.train.lr == 0.1


def test_set_without_equals_is_an_error(exp_file):
    msg = error_of(load_config, exp_file, ["train.lr"])
    assert "bad --set 'train.lr'" in msg and "KEY=VALUE" in msg
    assert "bad --set" in error_of(load_config, exp_file, ["train..lr=1"])


def test_set_value_that_is_not_yaml_is_a_one_line_error(exp_file):
    msg = error_of(load_config, exp_file, ["data.views.train.speaker_regex=["])
    assert msg.startswith("bad --set value for 'data.views.train.speaker_regex': '[' is not valid YAML (")
    assert "quote the value" in msg


def test_set_unknown_key_is_validated_like_any_key(exp_file):
    assert error_of(load_config, exp_file, ["train.lrr=1e-4"]) == (
        "unknown config key 'train.lrr' (did you mean 'train.lr'?)"
    )


def test_set_below_a_value_is_an_error(exp_file):
    msg = error_of(load_config, exp_file, ["train.lr.x=1"])
    assert "'train.lr' is a value, not a section" in msg


def test_add_config_args_and_config_from_args(exp_file):
    parser = add_config_args(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--config", str(exp_file), "--set", "train.lr=1e-4", "model.fusion.layers=2", "--set", "train.epochs=4"]
    )
    assert args.overrides == ["train.lr=1e-4", "model.fusion.layers=2", "train.epochs=4"]
    assert args.resume is False
    cfg = config_from_args(args).cfg
    assert (cfg.train.lr, cfg.model.fusion.layers, cfg.train.epochs) == (1e-4, 2, 4)
    args = parser.parse_args(["--config", str(exp_file), "--resume"])
    assert args.resume is True and args.overrides == []
    with pytest.raises(SystemExit):
        parser.parse_args(["--set", "train.lr=1"])  # --config is required


# ---------------------------------------------------------------- validation


def test_unknown_key_top_level_and_nested():
    assert error_of(validate, {"trian": {}}, ExperimentConfig) == (
        "unknown config key 'trian' (did you mean 'train'?)"
    )
    assert error_of(validate, {"train": {"scheduler": {"patiense": 3}}}, ExperimentConfig) == (
        "unknown config key 'train.scheduler.patiense' (did you mean 'train.scheduler.patience'?)"
    )
    assert error_of(validate, {"data": {"views": {"x": {"splt": "test"}}}}, ExperimentConfig) == (
        "unknown config key 'data.views.x.splt' (did you mean 'data.views.x.split'?)"
    )


def test_unknown_key_with_nothing_close_lists_valid_keys():
    assert error_of(validate, {"eval": {"zzz": 1}}, ExperimentConfig) == (
        "unknown config key 'eval.zzz' (valid keys: checkpoint)"
    )


def test_wrong_type_names_key_value_and_expected_type():
    assert error_of(validate, {"train": {"epochs": "ten"}}, ExperimentConfig) == (
        "config key 'train.epochs': expected int, got 'ten' (str)"
    )
    assert error_of(validate, {"train": {"grad_clip": "big"}}, ExperimentConfig) == (
        "config key 'train.grad_clip': expected float, got 'big' (str)"
    )
    assert error_of(validate, {"data": {"eval_views": ["a", 3]}}, ExperimentConfig) == (
        "config key 'data.eval_views[1]': expected str, got 3 (int) (quote it to keep it a string)"
    )
    assert error_of(validate, {"data": {"views": {"x": {"split": 5}}}}, ExperimentConfig) == (
        "config key 'data.views.x.split': expected str | list[str] | None, got 5 (int)"
    )
    assert error_of(validate, {"train": {"scheduler": 3}}, ExperimentConfig) == (
        "config key 'train.scheduler': expected a mapping, got 3 (int)"
    )
    assert "config key 'train.sampler.dataset_factors.MELD': expected float" in error_of(
        validate, {"train": {"sampler": {"dataset_factors": {"MELD": "x"}}}}, ExperimentConfig
    )


def test_literal_error_names_allowed_values():
    assert error_of(validate, {"model": {"mode": "B"}}, ExperimentConfig) == (
        "config key 'model.mode': expected one of 'A', 'T', 'AT', got 'B' (str)"
    )


def test_bool_is_not_an_int_or_float_and_int_is_a_float():
    assert error_of(validate, {"train": {"epochs": True}}, ExperimentConfig) == (
        "config key 'train.epochs': expected int, got True (bool)"
    )
    assert "expected float, got False (bool)" in error_of(validate, {"train": {"lr": False}}, ExperimentConfig)
    assert "expected bool, got 1 (int)" in error_of(validate, {"train": {"progress": 1}}, ExperimentConfig)
    cfg = validate({"train": {"lr": 1}}, ExperimentConfig)
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float
    assert error_of(validate, {"train": {"epochs": 2.5}}, ExperimentConfig).endswith("got 2.5 (float)")


def test_missing_keys_take_defaults_and_empty_section_is_defaults():
    cfg = validate({"train": None, "model": {"fusion": {"heads": 8}}}, ExperimentConfig)
    assert cfg.train == ExperimentConfig().train
    assert cfg.model.fusion.heads == 8 and cfg.model.fusion.layers == 2
    assert cfg.data.views == ExperimentConfig().data.views


@dataclass
class Inner:
    kind: Literal["x", "y"] = "x"
    sizes: list[int] = field(default_factory=list)


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    table: dict[str, list[float]] = field(default_factory=dict)
    maybe: int | None = None


def test_validate_other_schema():
    out = validate({"inner": {"kind": "y", "sizes": [1, 2]}, "table": {"a": [1, 2.5]}, "maybe": 3}, Outer)
    assert out == Outer(Inner("y", [1, 2]), {"a": [1.0, 2.5]}, 3)
    assert error_of(validate, {"inner": {"sizes": [1, "2"]}}, Outer) == (
        "config key 'inner.sizes[1]': expected int, got '2' (str)"
    )


# ---------------------------------------------------------------- resolved YAML


def test_resolved_yaml_round_trips(tmp_path):
    exp = write(
        tmp_path / "exp.yaml",
        "run: {name: '1e5'}\ntrain: {lr: 1.0e-10, lr_overrides: {enc: 3e-5}}\n"
        "data: {views: {a: {split: [train, val], speaker_regex: '^IEMOCAP/Ses0[1-4]'}}}\n",
    )
    loaded = load_config(exp, ["model.mode=T"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = write_resolved(loaded, run_dir)
    assert path == run_dir / RESOLVED_NAME
    assert list(run_dir.iterdir()) == [path]  # no temp file left behind
    text = path.read_text()
    assert list(yaml.safe_load(text)) == ["run", "data", "model", "train", "eval"]  # schema order
    again = load_config(path)
    assert again.cfg == loaded.cfg and again.cfg.run.name == "1e5"
    assert again.raw == loaded.raw == to_dict(loaded.cfg)


def test_dump_yaml_failure_leaves_no_file(tmp_path):
    with pytest.raises(yaml.representer.RepresenterError):
        dump_yaml({"a": object()}, tmp_path / "x.yaml")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- run directories


def test_run_dir_naming(tmp_path):
    first = make_run_dir(tmp_path / "runs", "exp")
    assert first == tmp_path / "runs" / "exp" and first.is_dir()
    assert make_run_dir(tmp_path / "runs", "exp") == first  # still empty: reused
    (first / "metrics_train.csv").write_text("x")
    second = make_run_dir(tmp_path / "runs", "exp")
    assert second == tmp_path / "runs" / "exp_2"
    (second / "f").write_text("x")
    assert make_run_dir(tmp_path / "runs", "exp") == tmp_path / "runs" / "exp_3"


def test_run_dir_skips_a_file_with_the_name(tmp_path):
    write(tmp_path / "exp", "not a folder")
    assert make_run_dir(tmp_path, "exp") == tmp_path / "exp_2"


def test_run_dir_unwritable_is_one_line_error(tmp_path):
    blocker = write(tmp_path / "blocker", "a file, not a folder")
    msg = error_of(make_run_dir, blocker / "runs", "exp")
    assert msg.startswith(f"cannot create run folder {blocker / 'runs' / 'exp'}")


def test_run_dir_rejects_escaping_names(tmp_path):
    assert "run.name" in error_of(make_run_dir, tmp_path, "../x")
    assert "run.name" in error_of(make_run_dir, tmp_path, "")


def test_resume_rules(tmp_path):
    root = tmp_path / "runs"
    assert error_of(make_run_dir, root, "exp", resume=True) == (
        f"cannot resume: {root / 'exp' / 'checkpoints' / 'last.pt'} not found"
    )
    run = make_run_dir(root, "exp")
    (run / "checkpoints").mkdir()
    assert "cannot resume" in error_of(make_run_dir, root, "exp", resume=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    assert make_run_dir(root, "exp", resume=True) == run
    assert make_run_dir(root, "exp") == root / "exp_2"  # without resume: never reuse a used folder


def test_resume_compatibility(tmp_path):
    exp = write(tmp_path / "exp.yaml", f"run: {{name: exp, output_root: {tmp_path / 'runs'}}}\n")
    loaded = load_config(exp)
    run = prepare_run(loaded)
    assert run == tmp_path / "runs" / "exp" and (run / RESOLVED_NAME).is_file()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"x")

    check_resume_compatible(load_config(exp, ["train.epochs=50", "train.progress=false"]), run)
    resumed = prepare_run(load_config(exp, ["train.epochs=50"]), resume=True)
    assert resumed == run
    assert load_config(run / RESOLVED_NAME).cfg.train.epochs == 50  # the snapshot follows the resume

    msg = error_of(check_resume_compatible, load_config(exp, ["train.lr=1e-4"]), run)
    assert "config key 'train.lr'" in msg and "0.0001" in msg and "0.001" in msg
    msg = error_of(check_resume_compatible, load_config(exp, ["data.views.extra.split=test"]), run)
    assert "config key 'data.views.extra" in msg
    msg = error_of(prepare_run, load_config(exp, ["model.fusion.layers=3"]), resume=True)
    assert "config key 'model.fusion.layers'" in msg
    assert load_config(run / RESOLVED_NAME).cfg.model.fusion.layers == 2  # failed resume wrote nothing

    (run / RESOLVED_NAME).unlink()
    assert error_of(check_resume_compatible, loaded, run) == f"cannot resume: {run / RESOLVED_NAME} not found"
