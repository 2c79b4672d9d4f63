"""The package's structure holds: imports point one way through the layers, CLIs are thin and independent, and
every shipped config validates."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mer.config import load_config

SRC = Path(__file__).resolve().parents[1] / "src" / "mer"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Lowest first: a module may import its own layer and the layers before it, never one after it.
LAYERS = ["base", "data", "features", "models", "training", "evaluation", "reporting", "recipes", "serving", "suites",
          "cli", "serve"]  # serve: the `python -m mer.serve` entry point (above the CLIs it starts)
BASE = {"errors", "io", "schema", "config", "runtime", "distributed", "__init__"}


def layer_of(module: str) -> str:
    """`mer.features.store` -> features; `mer.config` -> base."""
    parts = module.split(".")
    assert parts[0] == "mer", module
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def mer_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) of every `mer` import in a file, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "mer"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "mer":
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


MODULES = sorted(SRC.rglob("*.py"))


def test_every_package_is_a_known_layer():
    assert {layer_of(module_name(p)) for p in MODULES} <= set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_one_way_through_the_layers(path):
    here = module_name(path)
    rank = LAYERS.index(layer_of(here))
    back_edges = []
    for line, target, names in mer_imports(path):
        targets = [target] + [f"{target}.{n}" for n in names if (SRC.parent / f"{target}.{n}".replace(".", "/")).exists()
                              or (SRC.parent / (f"{target}.{n}".replace(".", "/") + ".py")).exists()]
        for t in targets:
            if LAYERS.index(layer_of(t)) > rank:
                back_edges.append(f"{path.name}:{line} imports {t} ({layer_of(t)} is above {layer_of(here)})")
    assert not back_edges, back_edges


@pytest.mark.parametrize("path", sorted((SRC / "cli").glob("*.py")), ids=lambda p: p.name)
def test_no_cli_imports_another_cli_module(path):
    for line, target, names in mer_imports(path):
        assert not target.startswith("mer.cli."), f"{path.name}:{line} imports {target}"
        if target == "mer.cli":
            assert all(not (SRC / "cli" / f"{n}.py").exists() for n in names), f"{path.name}:{line} imports {names}"


def test_no_module_imports_a_private_name_of_another():
    bad = [f"{p.relative_to(SRC)}:{line} imports {n} from {t}" for p in MODULES for line, t, names in mer_imports(p)
           for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


def test_the_cli_layer_is_thin():
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (SRC / "cli").glob("*.py")}
    assert sum(sizes.values()) < 1085, sizes  # well under half of the 2,170 lines it had before the recipes


def test_only_the_cli_finds_the_configs_folder():
    for path in MODULES:
        if module_name(path).startswith("mer.cli"):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not ("parents[" in line and "configs" in line), f"{path.relative_to(SRC)}:{n}: {line.strip()}"


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(config):
    loaded = load_config(config)
    cfg = loaded.cfg
    assert cfg.data.train_view in cfg.data.views and cfg.data.val_view in cfg.data.views
    for view in cfg.data.eval_views:
        assert view in cfg.data.views, f"{config.name}: eval view {view!r} is not defined in data.views"
    assert len(set(cfg.data.task.labels)) == len(cfg.data.task.labels) >= 2
