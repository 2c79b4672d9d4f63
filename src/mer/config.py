"""Experiment configs (DESIGN.md, Contract 2): YAML, `base:` inheritance, `--set` overrides, validation.

    loaded = load_config("configs/exp.yaml", ["train.lr=1e-4", "model.fusion.layers=2"])
    run_dir = prepare_run(loaded, resume=False)   # <output_root>/<run_name>[_N]/config_resolved.yaml

Every mistake in a config is a `UserError` with a one-line message naming the file or the dotted key.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from mer.errors import UserError
from mer.io import atomic_write_text
from mer.schema import ExperimentConfig

RESOLVED_NAME = "config_resolved.yaml"
RESUME_MUTABLE_KEYS = frozenset({"train.epochs", "train.progress", "run.device", "data.num_workers",
                                 "data.wave_cache", "model.hf.conv_cache_mb"})  # may change between a run and its resume

# YAML 1.1 (PyYAML) reads `1e-4` as a string: its float needs a dot and a signed exponent. Accept any
# decimal number with an exponent as a float, when loading and when deciding what to quote on dumping.
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")
_FLOAT_TAG = "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float and rejects duplicate keys in a mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key_node.value}'", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes strings `_Loader` would read back as something else (e.g. '1e5')."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(_FLOAT_TAG, _EXP_FLOAT, list("-+.0123456789"))


@dataclass
class LoadedConfig:
    cfg: Any  # the validated schema instance (ExperimentConfig by default)
    raw: dict  # the fully merged plain dict, all defaults filled in
    source: Path
    overrides: tuple[str, ...] = ()


# ---------------------------------------------------------------- loading


def _read_yaml(path: Path, named_by: Path | None = None) -> dict:
    where = f" (base of {named_by})" if named_by else ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}{where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path}{where}: {exc}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        ctx = exc.context_mark
        started = f" ({exc.context} at line {ctx.line + 1}:{ctx.column + 1})" if ctx and ctx is not mark else ""
        raise UserError(f"{path}{pos}: invalid YAML: {exc.problem or exc.context}{started}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:  # an empty file (or only comments): all defaults
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """`over` on top of `base`: mappings merge recursively, anything else (lists included) replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_tree(path: Path, chain: tuple[Path, ...] = (), named_by: Path | None = None) -> dict:
    """The plain dict of the config at `path` with its `base:` chain merged in (not validated)."""
    real = path.resolve()
    if real in chain:
        names = [_short(p, chain[0]) for p in (*chain[chain.index(real) :], real)]
        raise UserError(f"config inheritance cycle: {' -> '.join(names)}")
    data = _read_yaml(path, named_by)
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise UserError(f"{path}: 'base' must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    for base in bases:
        merged = deep_merge(merged, load_tree(path.parent / base, (*chain, real), named_by=path))
    return deep_merge(merged, data)


def _short(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return str(path)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a', 'b', 'c'], value typed as YAML: 1e-4 float, 3 int, true, null, [a, b])."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise UserError(f"bad --set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.lr=1e-4")
    try:
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"bad --set value for '{key.strip()}': {text!r} is not valid YAML ({why}; quote the "
                        "value if it is a string)") from None
    return [p.strip() for p in parts], value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Return a copy of `data` with each dotted `KEY=VALUE` set (intermediate sections are created)."""
    out = deep_merge({}, data)
    for item in overrides:
        parts, value = parse_override(item)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, Mapping):
                raise UserError(f"bad --set {item!r}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return out


def load_config(path: str | Path, overrides: Sequence[str] = (), schema: type = ExperimentConfig) -> LoadedConfig:
    """Read `path`, resolve `base:` inheritance, apply `--set` overrides, validate against `schema`."""
    path = Path(path)
    merged = apply_overrides(load_tree(path, ()), overrides)
    cfg = validate(merged, schema)
    return LoadedConfig(cfg=cfg, raw=to_dict(cfg), source=path, overrides=tuple(overrides))


# ---------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin is dict:
        return f"dict[{_type_name(args[0])}, {_type_name(args[1])}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _type_error(key: str, tp: Any, value: Any) -> UserError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    hint = ""
    if tp is str and isinstance(value, (int, float, bool)):
        hint = " (quote it to keep it a string)"
    label = f"config key '{key}'" if key else "config"
    return UserError(f"{label}: expected {_type_name(tp)}, got {shown} ({type(value).__name__}){hint}")


def _check(value: Any, tp: Any, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _check_dataclass({} if value is None else value, tp, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # `X | None`: X's own, more precise error
            return _check(value, options[0], key)
        for option in options:
            try:
                return _check(value, option, key)
            except UserError:
                continue
        raise _type_error(key, tp, value)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _type_error(key, tp, value)
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(key, tp, value)
        return [_check(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(key, tp, value)
        out = {}
        for k, v in value.items():
            sub = f"{key}.{k}" if key else str(k)
            out[_check(k, args[0], sub)] = _check(v, args[1], sub)
        return out
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise _type_error(key, tp, value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _type_error(key, tp, value)


def _check_dataclass(value: Any, cls: type, key: str) -> Any:
    if not isinstance(value, Mapping):
        raise _type_error(key, cls, value)
    hints = get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for name, item in value.items():
        sub = f"{key}.{name}" if key else str(name)
        if name not in fields:
            close = difflib.get_close_matches(str(name), fields, n=1)
            prefix = f"{key}." if key else ""
            why = f"did you mean '{prefix}{close[0]}'?" if close else "valid keys: " + ", ".join(fields)
            raise UserError(f"unknown config key '{sub}' ({why})")
        kwargs[name] = _check(item, hints[name], sub)
    return cls(**kwargs)


def validate(data: Mapping, schema_cls: type = ExperimentConfig) -> Any:
    """Check `data` against the dataclass `schema_cls`; return an instance (missing keys take defaults)."""
    return _check_dataclass(data, schema_cls, "")


def to_dict(instance: Any) -> dict:
    """A schema instance as plain dicts, lists and scalars (YAML-serialisable, in schema order)."""
    return dataclasses.asdict(instance)


def dump_yaml(data: Mapping | Any, path: str | Path) -> Path:
    """Write `data` (a dict or a schema instance) as YAML atomically: temp file, then os.replace."""
    path = Path(path)
    if dataclasses.is_dataclass(data):
        data = to_dict(data)
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    atomic_write_text(path, text)
    return path


# ---------------------------------------------------------------- run directories


def make_run_dir(output_root: str | Path, run_name: str, resume: bool = False) -> Path:
    """`<output_root>/<run_name>/`, or the first free `<run_name>_2`, `_3`, ... when that one is in use.

    With `resume`, the existing folder, which must hold `checkpoints/last.pt`.
    """
    if not run_name or Path(run_name).is_absolute() or ".." in Path(run_name).parts:
        raise UserError(f"config key 'run.name': expected a folder name, got {run_name!r}")
    base = Path(output_root) / run_name
    if resume:
        if not (base / "checkpoints" / "last.pt").is_file():
            raise UserError(f"cannot resume: {base / 'checkpoints' / 'last.pt'} not found")
        return base
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            if candidate.is_dir() and not any(candidate.iterdir()):
                if not os.access(candidate, os.W_OK):
                    raise UserError(f"cannot write to run folder {candidate}") from None
                return candidate
        except OSError as exc:
            raise UserError(f"cannot create run folder {candidate}: {exc.strerror or exc}") from None
        n += 1
        candidate = base.with_name(f"{base.name}_{n}")


def write_resolved(loaded: LoadedConfig, run_dir: str | Path) -> Path:
    """Write the full validated config (defaults included) to `<run_dir>/config_resolved.yaml`."""
    return dump_yaml(to_dict(loaded.cfg), Path(run_dir) / RESOLVED_NAME)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping) and (data or not prefix):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def check_resume_compatible(loaded: LoadedConfig, run_dir: str | Path) -> None:
    """Raise UserError if the run's stored config differs from `loaded` in a key other than
    `RESUME_MUTABLE_KEYS` (train.epochs, train.progress)."""
    stored_path = Path(run_dir) / RESOLVED_NAME
    if not stored_path.is_file():
        raise UserError(f"cannot resume: {stored_path} not found")
    stored_raw = _read_yaml(stored_path)
    try:
        stored = _flatten(to_dict(validate(stored_raw, type(loaded.cfg))))
    except UserError as exc:
        raise UserError(f"cannot resume from {stored_path}: {exc}") from None
    now = _flatten(to_dict(loaded.cfg))
    for key in sorted(set(stored) | set(now)):
        if key in RESUME_MUTABLE_KEYS or stored.get(key, "<absent>") == now.get(key, "<absent>"):
            continue
        raise UserError(
            f"cannot resume: config key '{key}' is {now.get(key, '<absent>')!r} but the run at {run_dir} "
            f"used {stored.get(key, '<absent>')!r} (only {', '.join(sorted(RESUME_MUTABLE_KEYS))} may change)"
        )


def prepare_run(loaded: LoadedConfig, resume: bool = False) -> Path:
    """Make (or, with `resume`, check) the run folder and write its `config_resolved.yaml`."""
    run = loaded.cfg.run
    run_dir = make_run_dir(run.output_root, run.name, resume=resume)
    if resume:
        check_resume_compatible(loaded, run_dir)
    write_resolved(loaded, run_dir)
    return run_dir


# ---------------------------------------------------------------- command line


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--config PATH`, `--set KEY=VALUE ...` (repeatable) and `--resume` to an entry point's parser."""
    parser.add_argument("--config", required=True, metavar="PATH", help="experiment YAML config")
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.lr=1e-4 model.fusion.layers=2 (values are YAML)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run named by the config from its checkpoints/last.pt",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> LoadedConfig:
    """Load the config named by `--config` with the `--set` overrides applied."""
    return load_config(args.config, getattr(args, "overrides", None) or ())


def add_eval_args(parser: argparse.ArgumentParser, source_flag: str, source_help: str) -> argparse.ArgumentParser:
    """The arguments every evaluation entry point takes: --run, --view, --checkpoint, a data source override
    (`--store` or `--manifest`), --batch-size, --device, --quiet."""
    parser.add_argument("--run", required=True, help="run directory (config_resolved.yaml, checkpoints/, ...)")
    parser.add_argument("--view", required=True, nargs="+", help="view name(s) from the config's data.views")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    parser.add_argument(source_flag, help=source_help)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default=None, help="override run.device (auto, cpu, cuda)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser
