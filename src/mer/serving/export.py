"""Export a trained run's (or a package's) model to ONNX and TorchScript, with what it needs in `export.json`.

    export_run("runs/my_run", "exported/my_run")  ->  model.onnx, model.torchscript.pt, export.json

Graph inputs and outputs (every batch axis dynamic; the frame models' sample axis too):

- feature models (flexible_at, robust_at, linear): one input per modality the model reads, `audio` [batch, Da]
  and/or `text` [batch, Dt], *after* normalization: apply `export.json`'s `normalization` first (speaker
  normalization when `speaker_norm` is on: the speaker's own statistics, else `speaker_norm_fallback`; then
  `feature_stats`: (x - mean) / std). `extractors` holds the feature store settings that made the vectors.
- frame-level models with the log-mel front end (cnn_small, resnet18_mel, ecapa_tdnn): `input_values` [batch,
  samples] float32 (16 kHz mono, right-padded with zeros) and `attention_mask` [batch, samples] int64 (1 = a real
  sample). The STFT runs as a convolution with the DFT basis (ONNX has no complex tensors), equal to torch.stft
  within float rounding.

Outputs: `logits` [batch, C] and `probs` [batch, C] = softmax(logits / T), T the run's temperature (in the graph
and in `export.json`; 1 when the run has no calibration). `export.json` also holds the labels (the class order),
the run, and the parity check made at export time (ONNX Runtime and TorchScript vs PyTorch probabilities, max abs
difference, at two batch sizes): an export whose check exceeds 1e-4 is refused.
"""

from __future__ import annotations

import copy
import json
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mer.errors import UserError
from mer.io import atomic_write_text
from mer.models.frontend import lengths_to_mask, reflect_index
from mer.serving.predict import Predictor, store_settings

PARITY_TOL = 1e-4
ONNX_FILE, TS_FILE, EXPORT_JSON = "model.onnx", "model.torchscript.pt", "export.json"
FORMATS = ("onnx", "torchscript")
LOGMEL_MODELS = ("cnn_small", "resnet18_mel", "ecapa_tdnn")


class FeatureGraph(nn.Module):
    """(audio[, text]) normalized feature vectors -> (logits, probs)."""

    def __init__(self, model: nn.Module, modalities: list[str], temperature: float) -> None:
        super().__init__()
        self.model, self.modalities = model, list(modalities)
        self.register_buffer("inv_t", torch.tensor(1.0 / temperature, dtype=torch.float32))

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(dict(zip(self.modalities, inputs, strict=True)))
        logits = logits["logits"] if isinstance(logits, dict) else logits
        return logits, torch.softmax(logits * self.inv_t, dim=-1)


class WaveGraph(nn.Module):
    """(input_values, attention_mask) -> (logits, probs)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("inv_t", torch.tensor(1.0 / temperature, dtype=torch.float32))

    def forward(self, input_values: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model({"input_values": input_values, "audio_attention_mask": attention_mask})
        logits = logits["logits"] if isinstance(logits, dict) else logits
        return logits, torch.softmax(logits * self.inv_t, dim=-1)


def _dft_basis(fe) -> Tensor:
    """[2K, 1, n_fft]: the windowed cos and -sin rows of the real DFT (K = n_fft // 2 + 1), as a conv1d weight."""
    n_fft = int(fe.n_fft)
    window = torch.zeros(n_fft, dtype=torch.float64)
    w = fe.window.to(torch.float64)
    left = (n_fft - w.numel()) // 2  # torch.stft centres a shorter window inside n_fft
    window[left:left + w.numel()] = w
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64).unsqueeze(1)
    n = torch.arange(n_fft, dtype=torch.float64).unsqueeze(0)
    angle = 2 * torch.pi * k * n / n_fft
    basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window], dim=0)
    return basis.to(torch.float32).unsqueeze(1)


def _export_frontend_forward(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """LogMelFrontend.forward with the STFT as a convolution (same arithmetic otherwise)."""
    lengths = lengths.to(torch.long).clamp(0, wave.shape[1])
    x = wave.float()
    sample_mask = lengths_to_mask(lengths, x.shape[1])
    x = torch.where(sample_mask, x, torch.zeros((), dtype=x.dtype))
    pad = self.n_fft // 2
    if self.pad_mode == "constant":
        x = nn.functional.pad(x, (pad, pad))
    else:
        index = torch.arange(-pad, x.shape[1] + pad, device=x.device).unsqueeze(0).expand(x.shape[0], -1)
        x = torch.gather(x, 1, reflect_index(index, lengths))
    ri = nn.functional.conv1d(x.unsqueeze(1), self.dft_basis, stride=self.hop)  # [B, 2K, F]
    k = self.dft_basis.shape[0] // 2
    power = ri[:, :k].square() + ri[:, k:].square()
    spec = power if self.power == 2.0 else power.sqrt().pow(self.power)
    mel = torch.matmul(self.mel_fb, spec)
    feats = torch.log(mel + self.log_offset)
    frame_lengths = self.frame_lengths(lengths)
    frame_mask = lengths_to_mask(frame_lengths, feats.shape[-1]).unsqueeze(1)
    feats = torch.where(frame_mask, feats, torch.zeros((), dtype=feats.dtype))
    if self.normalize != "none":
        count = frame_lengths.clamp_min(1).to(feats.dtype).view(-1, 1, 1)
        mean = feats.sum(-1, keepdim=True) / count
        feats = torch.where(frame_mask, feats - mean, torch.zeros((), dtype=feats.dtype))
        if self.normalize == "mean_var":
            var = feats.square().sum(-1, keepdim=True) / count
            feats = feats / var.clamp_min(self.norm_eps).sqrt()
    return feats, frame_lengths


def exportable_frame_model(model: nn.Module) -> nn.Module:
    """A copy of a log-mel frame model whose front end computes the STFT with a convolution."""
    model = copy.deepcopy(model).eval()
    fe = model.frontend
    fe.register_buffer("dft_basis", _dft_basis(fe), persistent=False)
    fe.forward = types.MethodType(_export_frontend_forward, fe)
    return model


def _example_inputs(p: Predictor, batch: int, seed: int, samples: int = 16000) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    if p.track == "features":
        dims = {"audio": p.audio_dim, "text": p.text_dim}
        return tuple(torch.randn(batch, dims[m], generator=g) for m in _modalities(p))
    x = 0.1 * torch.randn(batch, samples, generator=g)
    mask = torch.ones(batch, samples, dtype=torch.long)
    if batch > 1:  # a shorter clip: padding must not change its output
        mask[-1, samples // 2:] = 0
        x[-1, samples // 2:] = 0
    return x, mask


def _modalities(p: Predictor) -> list[str]:
    from mer.models.registry import MODE_MODALITIES

    return list(MODE_MODALITIES[p.mode])


def graph_of(p: Predictor) -> tuple[nn.Module, list[str], dict]:
    """The module to export, its input names and their dynamic axes."""
    t = p.temperature or 1.0
    if p.track == "features":
        names = _modalities(p)
        return FeatureGraph(p.model.cpu().eval(), names, t).eval(), names, {n: {0: "batch"} for n in names}
    if p.track == "frame" and p.model_name in LOGMEL_MODELS:
        axes = {0: "batch", 1: "samples"}
        return (WaveGraph(exportable_frame_model(p.model.cpu()), t).eval(), ["input_values", "attention_mask"],
                {"input_values": axes, "attention_mask": axes})
    if p.track == "end_to_end":
        raise UserError(f"{p.run_dir}: hf_at cannot be exported to ONNX / TorchScript by tracing: its encoders' "
                        "padding handling (a per-clip GroupNorm over each clip's frames, frame masks from the "
                        "sample lengths) runs Python over the batch's lengths, so a traced graph holds one batch's "
                        "shapes; export it with --format package (safetensors) and predict.py --run")
    raise UserError(f"{p.run_dir}: export of {p.model_name} ({p.track} track) is not supported yet; exported: the "
                    f"feature models (flexible_at, robust_at, linear) and {', '.join(LOGMEL_MODELS)}")


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def export_run(run_dir: str | Path, out_dir: str | Path | None = None, *, checkpoint: str = "best",
               formats: tuple[str, ...] = FORMATS, opset: int = 17) -> dict:
    """Export a run (see the module doc); returns the `export.json` record."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"export format {bad[0] if bad else '(none)'!r}: expected one or more of {', '.join(FORMATS)}")
    p = Predictor(run_dir, checkpoint, "cpu", extractor=False)
    graph, names, axes = graph_of(p)
    out = Path(out_dir) if out_dir else Path(run_dir) / "export"
    out.mkdir(parents=True, exist_ok=True)
    example = _example_inputs(p, 2, 0)
    checks = [_example_inputs(p, 1, 1, 12000), _example_inputs(p, 5, 2, 20000)]
    with torch.no_grad():
        refs = [graph(*x)[1].numpy() for x in checks]
    parity: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and legacy-exporter notices
        if "torchscript" in formats:
            traced = torch.jit.trace(graph, example, check_trace=False)
            tmp = out / (TS_FILE + ".tmp")
            traced.save(str(tmp))
            loaded = torch.jit.load(str(tmp))
            with torch.no_grad():
                parity["torchscript"] = max(_max_diff(loaded(*x)[1].numpy(), r) for x, r in zip(checks, refs,
                                                                                               strict=True))
            tmp.replace(out / TS_FILE)
        if "onnx" in formats:
            import onnxruntime as ort

            tmp = out / (ONNX_FILE + ".tmp")
            torch.onnx.export(graph, example, str(tmp), input_names=names, output_names=["logits", "probs"],
                              dynamic_axes={**axes, "logits": {0: "batch"}, "probs": {0: "batch"}},
                              opset_version=opset, dynamo=False)
            sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            parity["onnx"] = max(_max_diff(sess.run(["probs"], {n: v.numpy() for n, v in zip(names, x, strict=True)})[0],
                                           r) for x, r in zip(checks, refs, strict=True))
            tmp.replace(out / ONNX_FILE)
    worst = max(parity.values())
    if worst > PARITY_TOL:
        raise UserError(f"export of {run_dir}: exported probabilities differ from PyTorch's by {worst:.2e} "
                        f"(> {PARITY_TOL:g}): {parity}")
    record = {"format": "mer-export", "format_version": 1, "model_id": p.model_id, "run": str(p.run_dir),
              "checkpoint": checkpoint, "track": p.track, "model": p.model_name, "mode": p.mode,
              "labels": p.labels, "temperature": p.temperature or 1.0, "calibrated": p.temperature is not None,
              "files": {f: (ONNX_FILE if f == "onnx" else TS_FILE) for f in formats}, "opset": opset,
              "inputs": _input_spec(p, names), "outputs": {"logits": ["batch", len(p.labels)],
                                                           "probs": ["batch", len(p.labels)]},
              "parity_max_abs_diff": parity, "parity_tolerance": PARITY_TOL}
    if p.track == "features":
        record["normalization"] = _normalization(p)
        record["extractors"] = ([{"store": e["store"], **e["settings"]} if e.get("settings") is not None else None
                                 for e in p.package.store_infos()] if p.package is not None
                                else [_settings_or_none(s) for s in [p.cfg.data.store, *p.cfg.data.stores]])
    else:
        record.update(sample_rate=16000, max_audio_s=p.max_audio_s,
                      min_samples=int(getattr(p.model, "min_clip_samples", 0)))
    atomic_write_text(out / EXPORT_JSON, json.dumps(record, indent=1) + "\n")
    return record


def _settings_or_none(store: str) -> dict | None:
    try:
        return {"store": str(store), **(store_settings(store).get("settings") or {})}
    except UserError:
        return None


def _input_spec(p: Predictor, names: list[str]) -> dict:
    if p.track == "features":
        dims = {"audio": p.audio_dim, "text": p.text_dim}
        return {n: {"shape": ["batch", dims[n]], "dtype": "float32"} for n in names}
    return {"input_values": {"shape": ["batch", "samples"], "dtype": "float32"},
            "attention_mask": {"shape": ["batch", "samples"], "dtype": "int64"}}


def _normalization(p: Predictor) -> dict:
    norm: dict = {"feature_stats": None, "speaker_norm": p.speaker_norm}
    if p.stats is not None:
        norm["feature_stats"] = {k: [float(v) for v in arr] for k, arr in p.stats.items()}
    if p.normalizer is not None:
        g = p.normalizer.global_stats
        norm["speaker_norm_fallback"] = {"mean": g.mean.tolist(), "std": g.std.tolist(), "count": g.count}
        norm["speaker_norm_min_clips"] = p.min_speaker_rows
    return norm


class OnnxModel:
    """An exported folder run with ONNX Runtime: `probs(**inputs)` -> [batch, C] (inputs as numpy arrays)."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        self.meta = json.loads((folder / EXPORT_JSON).read_text(encoding="utf-8"))
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / ONNX_FILE), opts, providers=["CPUExecutionProvider"])
        self.labels = self.meta["labels"]

    def probs(self, **inputs: np.ndarray) -> np.ndarray:
        return self.session.run(["probs"], inputs)[0]
