"""export.py --summary: every track's model as a per-layer table (type, parameters, trainable or not, output shape
from one forward pass with hooks), totals, input and output shapes; --graph renders with Graphviz when installed
and otherwise writes the DOT source with a one-line message."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from helpers_hf import make_tiny_roberta, make_tiny_wavlm
from helpers_manifest import make_tone_manifest
from helpers_store import make_store

from mer.cli import export as export_cli
from mer.cli import train as train_cli
from mer.cli import train_frame as train_frame_cli
from mer.cli import train_hf as train_hf_cli
from mer.errors import run_cli
from mer.serving.summary import shape_of, summarize, to_dot

LABELS = ["anger", "joy", "sadness", "neutral"]
VIEWS = {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}


def train(tmp: Path, name: str, data: dict, model: dict, cli) -> Path:
    cfg = {"run": {"name": name, "output_root": str(tmp / "runs"), "seed": 1},
           "data": {"views": VIEWS, "eval_views": ["test"], "batch_size": 16, **data},
           "model": model, "train": {"epochs": 1, "lr": 1e-2, "progress": False, "scheduler": {"name": "none"}}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert run_cli(cli.main, ["--config", str(path)]) == 0
    return tmp / "runs" / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("summary")
    store = make_store(root / "store", 120, 12, 8, learnable=True, memmap=True)
    manifest = make_tone_manifest(root / "data", per_split={"train": 2, "val": 1, "test": 1})
    wave = {"manifest": str(manifest), "max_audio_s": 1.0, "task": {"labels": LABELS}}
    return {
        "features": train(root, "fat", {"store": str(store)}, {"name": "flexible_at", "mode": "AT", "hidden_dim": 16},
                          train_cli),
        "frame": train(root, "cnn", wave, {"name": "cnn_small", "mode": "A", "frame": {
            "n_mels": 16, "n_fft": 256, "hop": 128, "cnn": {"channels": [4, 8]}}}, train_frame_cli),
        "end_to_end": train(root, "hf", wave, {"name": "hf_at", "mode": "AT", "hidden_dim": 16, "fusion": {
            "layers": 1, "heads": 2}, "hf": {"audio_encoder": str(make_tiny_wavlm(root / "wavlm")),
                                             "text_encoder": str(make_tiny_roberta(root / "roberta")),
                                             "freeze": "feature_encoder"}}, train_hf_cli),
    }


@pytest.mark.parametrize("track", ["features", "frame", "end_to_end"])
def test_summary_counts_every_parameter_once_and_records_shapes(runs, track):
    s = summarize(runs[track])
    model_row = s.layers[0]
    assert model_row.name == "" and s.output == f"[2, {len(s.labels)}]" == model_row.output
    assert model_row.params == s.total > 0
    # what each module holds itself adds up to the total (nothing counted twice or missed), and a module's count
    # is its own plus its direct children's
    assert sum(r.own for r in s.layers) == s.total
    for r in s.layers:
        children = [o for o in s.layers if o.name and o.depth == r.depth + 1
                    and (o.name.rsplit(".", 1)[0] if "." in o.name else "") == r.name]
        assert r.params == r.own + sum(o.params for o in children), r.name
    assert next(r for r in s.layers if r.name == "head").output == s.output  # the classifier ran in the example
    if track == "features":
        assert s.inputs["audio"] == [2, 12] and s.inputs["text"] == [2, 8] and s.trainable == s.total
    elif track == "frame":
        assert s.inputs["input_values"] == [2, 16000]
        assert any(r.type == "Conv2d" and re.fullmatch(r"\[2, \d+, \d+, \d+\]", r.output) for r in s.layers)
    else:
        assert s.inputs["input_values"] == [2, 16000] and s.inputs["input_ids"][0] == 2
        frozen = next(r for r in s.layers if r.name == "audio_encoder.feature_extractor")
        assert frozen.trainable == "no" and 0 < s.trainable < s.total
        assert next(r for r in s.layers if r.name == "audio_encoder").trainable == "partly"
        assert next(r for r in s.layers if r.name == "head").output == "[2, 4]"


def test_the_cli_prints_the_table_to_a_depth_and_a_graph_without_graphviz_is_one_line(runs, tmp_path, capsys,
                                                                                     monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no dot binary, whatever this machine has
    image = tmp_path / "model.png"
    assert run_cli(export_cli.main, ["--run", str(runs["end_to_end"]), "--summary", "--depth", "1",
                                     "--graph", str(image)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("model       hf_at/AT (end_to_end track), 4 classes")
    table = [line for line in out if line.startswith("  ")]
    assert {line.split()[0] for line in table} >= {"audio_encoder", "text_encoder", "fusion", "head"}
    assert not any(line.startswith("    ") for line in table)  # depth 1: no grandchildren
    assert any(line.startswith("parameters ") and "trainable" in line and "not shown" in line for line in out)
    graph = [line for line in out if line.startswith("graph ")]
    assert len(graph) == 1 and "Graphviz is not installed" in graph[0] and not image.exists()
    dot = Path(str(image) + ".dot").read_text()
    assert dot.startswith("digraph model {") and dot.count("->") == len(table)  # one edge per shown child


def test_dot_escapes_and_links_children_to_parents(runs):
    s = summarize(runs["features"])
    dot = to_dot(s)
    assert dot.count("->") == len(s.layers) - 1 and '\\"' not in dot and "\\n" in dot
    assert shape_of({"a": __import__("torch").zeros(2, 3), "b": None}) == "{a: [2, 3]}"


def test_graph_image_goes_through_graphviz_when_it_is_there(runs, tmp_path, monkeypatch):
    """With the graphviz package and dot present (here a stand-in that records the DOT it gets), the image is
    Graphviz's output in the asked format, and no DOT file is left."""
    import sys
    import types

    from mer.serving.summary import graph_image

    got = {}

    class Source:
        def __init__(self, dot):
            got["dot"] = dot

        def pipe(self, format):
            got["format"] = format
            return b"<svg/>"

    monkeypatch.setitem(sys.modules, "graphviz", types.SimpleNamespace(Source=Source))
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/dot")
    s = summarize(runs["features"])
    line = graph_image(s, tmp_path / "m.svg", depth=1)
    assert (tmp_path / "m.svg").read_bytes() == b"<svg/>" and got["format"] == "svg"
    assert got["dot"] == to_dot(s, 1) and line.startswith(f"graph       {tmp_path / 'm.svg'} (svg")
    assert not list(tmp_path.glob("*.dot")) and not list(tmp_path.glob("*.tmp"))


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot binary is not installed")
def test_graph_image_with_graphviz(runs, tmp_path):
    pytest.importorskip("graphviz")
    from mer.serving.summary import graph_image

    line = graph_image(summarize(runs["frame"]), tmp_path / "m.png")
    assert line.startswith("graph ") and (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


def test_a_bad_depth_or_run_is_one_line(runs, tmp_path, capsys, one_line_error):
    assert run_cli(export_cli.main, ["--run", str(runs["frame"]), "--summary", "--depth", "-1"]) == 2
    one_line_error()
    assert run_cli(export_cli.main, ["--run", str(tmp_path / "nope"), "--summary"]) == 2
    assert "run directory not found" in capsys.readouterr().err
