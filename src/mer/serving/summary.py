"""A summary of any run's model (every track): layers, parameter counts, input and output shapes.

    s = summarize("runs/my_run")            # one forward pass on an example input, forward hooks on every module
    print("\n".join(s.lines(depth=3)))      # export.py --run runs/my_run --summary [--depth 3] [--graph model.png]

The example input goes through the Predictor's own path (the run's collator, feature extractor and tokenizer; the
feature track: random vectors of the store's widths, normalized as prediction normalizes them): two clips of 1.0 s
and 0.6 s with transcripts. Each row: the module's name (indented by depth), type, output shape (of its last
call; `xN` when it ran N times; `-`: never called as a module, e.g. a ModuleList, or a Linear whose weights an
attention function reads), parameters (its own and its children's), and whether they train (`yes`, `no`, `partly`,
or `-` without parameters). `graph_image(s, "model.png")` renders the module tree with each layer's output
shape through Graphviz (the `graphviz` package and its `dot` binary) when both are installed; otherwise it writes
the DOT source beside the asked path and says so in one line.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mer.errors import UserError
from mer.io import atomic_write_text
from mer.serving.predict import Clip, Predictor

EXAMPLE_TEXTS = ("i am so happy to see you again", "okay")


@dataclass
class Layer:
    name: str  # dotted path below the model ("" = the model itself)
    type: str
    depth: int
    params: int  # its own and its children's
    trainable: str  # yes / no / partly / -
    own: int = 0  # held by the module itself (not its children): these add up to the model's total
    output: str = "-"  # shape of the last call's output
    calls: int = 0


@dataclass
class Summary:
    run: str
    track: str
    model: str
    mode: str
    labels: list[str]
    layers: list[Layer]
    inputs: dict[str, list[int]]
    output: str
    total: int
    trainable: int
    example: str
    notes: list[str] = field(default_factory=list)

    def lines(self, depth: int | None = None) -> list[str]:
        """The printed summary; `depth`: show layers down to this depth (0 = the model alone; None = all)."""
        rows = [r for r in self.layers if depth is None or r.depth <= depth]
        width = min(60, max(len(self._label(r)) for r in rows))
        head = f"{'layer':<{width}}  {'type':<28} {'output shape':<36} {'params':>12}  trainable"
        out = [f"model       {self.model}/{self.mode} ({self.track} track), {len(self.labels)} classes: "
               f"{', '.join(self.labels)}", f"run         {self.run}", f"example     {self.example}",
               "inputs      " + ", ".join(f"{k} {v}" for k, v in self.inputs.items()),
               f"output      {self.output}", "", head, "-" * len(head)]
        for r in rows:
            shape = r.output + (f" x{r.calls}" if r.calls > 1 else "")
            out.append(f"{self._label(r)[:width]:<{width}}  {r.type[:28]:<28} {shape[:36]:<36} {r.params:>12,}  "
                       f"{r.trainable}")
        hidden = len(self.layers) - len(rows)
        out += ["-" * len(head), f"parameters  {self.total:,} total, {self.trainable:,} trainable, "
                f"{self.total - self.trainable:,} frozen ({len(self.layers)} modules"
                + (f", {hidden} below depth {depth} not shown" if hidden else "") + ")", *self.notes]
        return out

    @staticmethod
    def _label(r: Layer) -> str:
        return "  " * r.depth + (r.name.rsplit(".", 1)[-1] if r.name else "(model)")


def shape_of(x, limit: int = 2) -> str:
    """A compact shape: `[2, 4]`; tuples / lists / dicts (HF outputs) of tensors as `([..], [..])` / `{k: [..]}`,
    the first `limit` entries (dicts: 1) and `...`."""
    if isinstance(x, Tensor):
        return str(list(x.shape))
    if isinstance(x, dict):
        items = [(k, v) for k, v in x.items() if isinstance(v, (Tensor, tuple, list))]
        text = ", ".join(f"{k}: {shape_of(v, limit)}" for k, v in items[:1])
        return "{" + text + (", ..." if len(items) > 1 else "") + "}"
    if isinstance(x, (tuple, list)):
        parts = [shape_of(v, limit) for v in x if v is not None]
        return "(" + ", ".join(parts[:limit]) + (", ..." if len(parts) > limit else "") + ")"
    return "-"


def _trainable(params: list[nn.Parameter]) -> str:
    if not params:
        return "-"
    on = sum(p.requires_grad for p in params)
    return "yes" if on == len(params) else "no" if on == 0 else "partly"


def summarize(run_dir: str | Path, checkpoint: str = "best") -> Summary:
    """The summary of a run's (or a package's) model from one forward pass on an example input (module doc)."""
    p = Predictor(run_dir, checkpoint, "cpu", extractor=False)
    model = p.model
    layers: dict[nn.Module, Layer] = {}
    for name, module in model.named_modules():
        if module in layers:  # a module shared under two names: its first name
            continue
        params = list(module.parameters())
        layers[module] = Layer(name, type(module).__name__, name.count(".") + 1 if name else 0,
                               sum(q.numel() for q in params), _trainable(params),
                               sum(q.numel() for q in module.parameters(recurse=False)))
    seen: dict[str, list[int]] = {}

    def record(module: nn.Module, _args, output) -> None:
        row = layers[module]
        row.output, row.calls = shape_of(output), row.calls + 1

    def inputs_of(_module: nn.Module, args) -> None:
        batch = args[0] if args and isinstance(args[0], dict) else {}
        seen.update({k: list(v.shape) for k, v in batch.items() if isinstance(v, Tensor) and k not in ("index",
                                                                                                          "label")})

    hooks = [m.register_forward_hook(record) for m in layers]
    hooks.append(model.register_forward_pre_hook(inputs_of))
    try:
        with torch.no_grad():
            if p.track == "features":
                rng = np.random.default_rng(0)
                a = rng.standard_normal((2, p.audio_dim)).astype(np.float32)
                t = rng.standard_normal((2, p.text_dim)).astype(np.float32)
                p.predict_features(a, t, [None, None])
                example = f"2 random feature vectors (audio {p.audio_dim}, text {p.text_dim} dims), normalized"
            else:
                rng = np.random.default_rng(0)
                clips = [Clip((0.1 * rng.standard_normal(n)).astype(np.float32), text)
                         for n, text in zip((16000, 9600), EXAMPLE_TEXTS, strict=True)]
                p.predict(clips)
                parts = (["2 clips of 1.0 s and 0.6 s"] if p.uses_audio else []) + (
                    [f"transcripts {EXAMPLE_TEXTS[0]!r}, {EXAMPLE_TEXTS[1]!r}"] if p.uses_text else [])
                example = " with ".join(parts) + " (through the predictor's collator)"
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{run_dir}: the example forward pass failed ({str(exc).splitlines()[0]})") from None
    finally:
        for h in hooks:
            h.remove()
    rows = list(layers.values())
    total = sum(q.numel() for q in model.parameters())
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    return Summary(str(p.run_dir), p.track, p.model_name, p.mode, list(p.labels), rows, seen, rows[0].output,
                   total, trainable, example)


def to_dot(s: Summary, depth: int | None = None) -> str:
    """The module tree (down to `depth`) as Graphviz DOT: one box per module (name, type, output shape, params)."""
    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace('"', '\\"')

    rows = [r for r in s.layers if depth is None or r.depth <= depth]
    ids = {r.name: f"n{i}" for i, r in enumerate(rows)}
    lines = ["digraph model {", '  rankdir="LR";', '  node [shape=box, fontname="Helvetica", fontsize=10];']
    for r in rows:
        label = "\\n".join(esc(x) for x in (r.name or s.model, r.type, f"out {r.output}", f"{r.params:,} params"))
        frozen = ', style=filled, fillcolor="#e8e8e8"' if r.trainable == "no" else ""
        lines.append(f'  {ids[r.name]} [label="{label}"{frozen}];')
        if r.name:
            parent = r.name.rsplit(".", 1)[0] if "." in r.name else ""
            lines.append(f"  {ids[parent]} -> {ids[r.name]};")
    return "\n".join([*lines, "}"]) + "\n"


def graph_image(s: Summary, path: str | Path, depth: int | None = None) -> str:
    """Render the module tree to `path` (its suffix: png, svg, pdf) with Graphviz when installed; else write the DOT
    source to `<path>.dot`. Returns the one line saying which."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    dot = to_dot(s, depth)
    try:
        import graphviz
    except ImportError:
        graphviz = None
    need = (["pip install graphviz"] if graphviz is None else []) + (
        ["the dot binary, from the system package graphviz"] if shutil.which("dot") is None else [])
    if need:
        atomic_write_text(path.with_suffix(path.suffix + ".dot"), dot)
        return f"graph       no image: Graphviz is not installed ({'; '.join(need)}); wrote the DOT source to {path}.dot"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        image = graphviz.Source(dot).pipe(format=fmt)
    except Exception as exc:  # Graphviz's own errors (an unknown format, a broken install): one line
        raise UserError(f"--graph {path}: Graphviz could not render it ({str(exc).strip().splitlines()[0]})") \
            from None
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(image)
    tmp.replace(path)
    return f"graph       {path} ({fmt}, {len([r for r in s.layers if depth is None or r.depth <= depth])} modules)"


def summary_lines(run_dir: str | Path, checkpoint: str = "best", *, depth: int | None = None,
                  graph: str | Path | None = None) -> list[str]:
    """What `export.py --summary` prints: the table, and with `graph` the line of `graph_image`."""
    if depth is not None and depth < 0:
        raise UserError(f"--depth {depth}: expected 0 (the model alone) or more")
    s = summarize(run_dir, checkpoint)
    return s.lines(depth) + ([graph_image(s, graph, depth)] if graph else [])
