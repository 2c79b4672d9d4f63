"""Export a trained run's (or a package's) model to ONNX and TorchScript, with what it needs in `export.json`.

    export_run("runs/my_run", "exported/my_run")  ->  model.onnx, model.torchscript.pt, export.json

Graph inputs and outputs (every batch axis dynamic; the sample and token axes too):

- feature models (flexible_at, robust_at, linear): one input per modality the model reads, `audio` [batch, Da]
  and/or `text` [batch, Dt], *after* normalization: apply `export.json`'s `normalization` first (speaker
  normalization when `speaker_norm` is on: the speaker's own statistics, else `speaker_norm_fallback`; then
  `feature_stats`: (x - mean) / std). `extractors` holds the feature store settings that made the vectors.
- frame-level models (cnn_small, resnet18_mel, ecapa_tdnn, ssl_bilstm_asp, whisper_prompt): `input_values`
  [batch, samples] float32 (16 kHz mono, raw, right-padded with zeros) and `attention_mask` [batch, samples] int64
  (1 = a real sample). STFTs run as a convolution with the DFT basis (ONNX has no complex tensors), equal to
  torch.stft within float rounding; ssl_bilstm_asp's packed BiLSTM runs as the equal masked computation
  (`mer.serving.export_hf`).
- hf_at (modes A, T, AT): `input_values` + `audio_attention_mask` (raw samples: the feature extractor's per-clip
  normalization is in the graph) and / or `input_ids` + `text_attention_mask` [batch, tokens] int64 (tokenized
  outside with the tokenizer saved in `tokenizer/`, at most `text.max_text_tokens` tokens); in AT a mask row of 0s
  = no audio / no transcript for that clip. `mer.serving.export_inputs.ClipInputs` builds these from clips.

Outputs: `logits` [batch, C] and `probs` [batch, C] = softmax(logits / T), T the run's temperature (in the graph
and in `export.json`; 1 when the run has no calibration). `export.json` also holds the labels (the class order),
the run, and the parity check made at export time (ONNX Runtime and TorchScript vs PyTorch probabilities, max abs
difference, at batch sizes 1 and 5; the waveform and hf_at kinds against the Predictor's own path on clips of
uneven lengths): an export whose check exceeds 1e-4 is refused.
"""

from __future__ import annotations

import copy
import json
import shutil
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mer.errors import UserError
from mer.io import atomic_write_text
from mer.models.frame_registry import MEL_MODELS
from mer.models.frontend import lengths_to_mask, reflect_index
from mer.serving.export_hf import HFGraph, SSLGraph, WhisperGraph, audio_normalization, dft_basis
from mer.serving.export_inputs import ClipInputs
from mer.serving.predict import Clip, Predictor, store_settings

PARITY_TOL = 1e-4
ONNX_FILE, TS_FILE, EXPORT_JSON = "model.onnx", "model.torchscript.pt", "export.json"
FORMATS = ("onnx", "torchscript")
FRAME_EXPORTS = (*MEL_MODELS, "ssl_bilstm_asp", "whisper_prompt")
TOKENIZER_DIR = "tokenizer"
_SAMPLES, _TOKENS = {0: "batch", 1: "samples"}, {0: "batch", 1: "tokens"}
AXES = {"input_values": _SAMPLES, "attention_mask": _SAMPLES, "audio_attention_mask": _SAMPLES,
        "input_ids": _TOKENS, "text_attention_mask": _TOKENS}
CHECK_TEXTS = ("i am so happy to see you again today", "no", "why did you do that to me", "", "okay then")


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
    fe.register_buffer("dft_basis", dft_basis(fe), persistent=False)
    fe.forward = types.MethodType(_export_frontend_forward, fe)
    return model


def _feature_inputs(p: Predictor, batch: int, seed: int) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    dims = {"audio": p.audio_dim, "text": p.text_dim}
    return tuple(torch.randn(batch, dims[m], generator=g) for m in _modalities(p))


def _check_clips(p: Predictor, lengths: list[int], seed: int) -> list[Clip]:
    """Clips of `lengths` samples (0: no audio) with transcripts of uneven lengths: in AT one clip without a
    transcript (and, where a length is 0, one without audio); one with a previous turn."""
    rng = np.random.default_rng(seed)
    clips = []
    for i, n in enumerate(lengths):
        wave = (0.1 * rng.standard_normal(n)).astype(np.float32) if n else None
        text = CHECK_TEXTS[i % len(CHECK_TEXTS)] if p.uses_text else ""
        if p.uses_text and not p.uses_audio and not text:
            text = "fine"
        clips.append(Clip(wave, text, ["so what happened next"] if i == 2 else []))
    return clips


def _modalities(p: Predictor) -> list[str]:
    from mer.models.registry import MODE_MODALITIES

    return list(MODE_MODALITIES[p.mode])


def graph_of(p: Predictor) -> tuple[nn.Module, list[str], dict]:
    """The module to export, its input names and their dynamic axes."""
    t = p.temperature or 1.0
    if p.track == "features":
        names = _modalities(p)
        return FeatureGraph(p.model.cpu().eval(), names, t).eval(), names, {n: {0: "batch"} for n in names}
    wave_names = ["input_values", "attention_mask"]
    if p.track == "frame" and p.speaker_norm:
        raise UserError(f"{p.run_dir}: a speaker-normalized frame run (data.speaker_norm) needs each clip's speaker "
                        "statistics, which the exported graphs do not take; serve it with predict.py or mer.serve "
                        "(the run or its --format package)")
    if p.track == "frame" and p.model_name in MEL_MODELS:
        graph, names = WaveGraph(exportable_frame_model(p.model.cpu()), t), wave_names
    elif p.track == "frame" and p.model_name == "ssl_bilstm_asp":
        graph, names = SSLGraph(p.model.cpu(), t), wave_names
    elif p.track == "frame" and p.model_name == "whisper_prompt":
        graph, names = WhisperGraph(p.model.cpu(), t), wave_names
    elif p.track == "end_to_end":
        normalize, pad = (audio_normalization(p.collator.feature_extractor, str(p.run_dir)) if p.uses_audio
                          else (False, 0.0))
        graph = HFGraph(p.model.cpu(), t, normalize=normalize, padding_value=pad,
                        min_samples=p.collator.min_audio_samples)
        names = graph.input_names()
    else:
        raise UserError(f"{p.run_dir}: export of {p.model_name} ({p.track} track) is not supported; exported: the "
                        f"feature models, hf_at and the frame models ({', '.join(FRAME_EXPORTS)})")
    return graph.eval(), names, {n: AXES[n] for n in names}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def _tensors(feed: dict[str, np.ndarray], names: list[str]) -> tuple[Tensor, ...]:
    return tuple(torch.from_numpy(feed[n]) for n in names)


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
    if p.track == "features":
        example = _feature_inputs(p, 2, 0)
        checks = [_feature_inputs(p, 1, 1), _feature_inputs(p, 5, 2)]
        with torch.no_grad():
            refs = [tuple(y.numpy() for y in graph(*x)) for x in checks]
        wave_meta: dict = {}
    else:  # the reference: the Predictor's own path (collator, feature extractor, tokenizer, model) on clips
        wave_meta = _wave_meta(p, names)
        feeder = ClipInputs(wave_meta, tokenizer=getattr(p.collator, "tokenizer", None))
        example = _tensors(feeder(_check_clips(p, [9000, 6000], 0)), names)
        no_audio = 0 if p.uses_text else 23456
        clips = [_check_clips(p, [12000], 1), _check_clips(p, [16000, 5000, no_audio, 12000, 800], 2)]
        checks = [_tensors(feeder(c), names) for c in clips]
        refs = [(o.logits, o.probs) for o in map(p.predict, clips)]
    parity: dict[str, float] = {}
    logit_parity: dict[str, float] = {}

    def compare(fmt: str, outputs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        pairs = list(zip(outputs, refs, strict=True))
        logit_parity[fmt] = max(_max_diff(o[0], r[0]) for o, r in pairs)
        parity[fmt] = max(_max_diff(o[1], r[1]) for o, r in pairs)

    written: list[Path] = []  # temp files, renamed once the check passes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and legacy-exporter notices
            if "torchscript" in formats:
                traced = torch.jit.trace(graph, example, check_trace=False)
                written.append(out / (TS_FILE + ".tmp"))
                traced.save(str(written[-1]))
                loaded = torch.jit.load(str(written[-1]))
                with torch.no_grad():
                    compare("torchscript", [tuple(y.numpy() for y in loaded(*x)) for x in checks])
            if "onnx" in formats:
                ort = onnxruntime()
                written.append(out / (ONNX_FILE + ".tmp"))
                torch.onnx.export(graph, example, str(written[-1]), input_names=names,
                                  output_names=["logits", "probs"], opset_version=opset, dynamo=False,
                                  dynamic_axes={**axes, "logits": {0: "batch"}, "probs": {0: "batch"}})
                sess = ort.InferenceSession(str(written[-1]), providers=["CPUExecutionProvider"])
                feeds = [{n: v.numpy() for n, v in zip(names, x, strict=True)} for x in checks]
                compare("onnx", [tuple(sess.run(["logits", "probs"], f)) for f in feeds])
        worst = max(parity.values())
        if worst > PARITY_TOL:
            raise UserError(f"export of {run_dir}: exported probabilities differ from PyTorch's by {worst:.2e} "
                            f"(> {PARITY_TOL:g}): {parity}")
        for tmp in written:
            tmp.replace(tmp.with_suffix(""))
    finally:  # a failed export leaves no temp file behind
        for tmp in written:
            tmp.unlink(missing_ok=True)
    record = {"format": "mer-export", "format_version": 1, "model_id": p.model_id, "run": str(p.run_dir),
              "checkpoint": checkpoint, "track": p.track, "model": p.model_name, "mode": p.mode,
              "labels": p.labels, "temperature": p.temperature or 1.0, "calibrated": p.temperature is not None,
              "files": {f: (ONNX_FILE if f == "onnx" else TS_FILE) for f in formats}, "opset": opset,
              "inputs": _input_spec(p, names), "outputs": {"logits": ["batch", len(p.labels)],
                                                           "probs": ["batch", len(p.labels)]},
              "parity_max_abs_diff": parity, "parity_tolerance": PARITY_TOL,
              "parity_logits_max_abs_diff": logit_parity}
    if p.track == "features":
        record["normalization"] = _normalization(p)
        record["extractors"] = ([{"store": e["store"], **e["settings"]} if e.get("settings") is not None else None
                                 for e in p.package.store_infos()] if p.package is not None
                                else [_settings_or_none(s) for s in [p.cfg.data.store, *p.cfg.data.stores]])
    else:
        record.update({k: v for k, v in wave_meta.items() if k not in record})
        if "text" in wave_meta:
            _save_tokenizer(p.collator.tokenizer, out / TOKENIZER_DIR)
    atomic_write_text(out / EXPORT_JSON, json.dumps(record, indent=1) + "\n")
    return record


def _wave_meta(p: Predictor, names: list[str]) -> dict:
    """What a consumer needs to turn clips into the graph's inputs (`ClipInputs` reads it from export.json)."""
    min_samples = getattr(p.collator, "min_samples", getattr(p.collator, "min_audio_samples", 0))
    meta = {"track": p.track, "inputs": _input_spec(p, names), "sample_rate": 16000, "max_audio_s": p.max_audio_s,
            "min_samples": int(min_samples) if "input_values" in names else 0}
    if p.track == "end_to_end" and "input_values" in names:
        normalize = audio_normalization(p.collator.feature_extractor, str(p.run_dir))[0]
        meta["audio_normalization"] = ("in the graph: each clip to zero mean and unit variance over its own samples"
                                       if normalize else "none (the feature extractor does not normalize)")
    if "input_ids" in names:
        meta["text"] = {"tokenizer": TOKENIZER_DIR, "max_text_tokens": int(p.collator.max_text_tokens),
                        "context_turns": int(p.cfg.data.context_turns), "context_sep": p.context_sep,
                        "truncation": "the oldest context turns first, then the transcript on the right"}
    return meta


def _save_tokenizer(tokenizer, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tokenizer.save_pretrained(str(tmp))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def _settings_or_none(store: str) -> dict | None:
    try:
        return {"store": str(store), **(store_settings(store).get("settings") or {})}
    except UserError:
        return None


INPUT_SPECS = {
    "input_values": (["batch", "samples"], "float32", "raw 16 kHz mono samples, right-padded with zeros"),
    "attention_mask": (["batch", "samples"], "int64", "1 = a real sample"),
    "audio_attention_mask": (["batch", "samples"], "int64", "1 = a real sample; a row of 0s: no audio for that clip"),
    "input_ids": (["batch", "tokens"], "int64", "token ids of tokenizer/ (special tokens included), right-padded "
                  "with its pad id"),
    "text_attention_mask": (["batch", "tokens"], "int64", "1 = a real token; a row of 0s: no transcript for that "
                            "clip"),
}


def _input_spec(p: Predictor, names: list[str]) -> dict:
    if p.track == "features":
        dims = {"audio": p.audio_dim, "text": p.text_dim}
        return {n: {"shape": ["batch", dims[n]], "dtype": "float32"} for n in names}
    return {n: dict(zip(("shape", "dtype", "meaning"), INPUT_SPECS[n], strict=True)) for n in names}


def _normalization(p: Predictor) -> dict:
    norm: dict = {"feature_stats": None, "speaker_norm": p.speaker_norm}
    if p.stats is not None:
        norm["feature_stats"] = {k: [float(v) for v in arr] for k, arr in p.stats.items()}
    if p.normalizer is not None:
        g = p.normalizer.global_stats
        norm["speaker_norm_fallback"] = {"mean": g.mean.tolist(), "std": g.std.tolist(), "count": g.count}
        norm["speaker_norm_min_clips"] = p.min_speaker_rows
    return norm


def onnxruntime():
    """The `onnxruntime` module with its telemetry off: its native library otherwise sends usage events to
    Microsoft from a background thread (through any proxy set in the environment); MER runs offline."""
    import onnxruntime as ort

    ort.disable_telemetry_events()
    return ort


class OnnxModel:
    """An exported folder run with ONNX Runtime: `probs(**inputs)` -> [batch, C] (inputs as numpy arrays)."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        ort = onnxruntime()
        folder = Path(folder)
        self.meta = json.loads((folder / EXPORT_JSON).read_text(encoding="utf-8"))
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / ONNX_FILE), opts, providers=["CPUExecutionProvider"])
        self.labels = self.meta["labels"]
        self.folder, self._inputs = folder, None

    def probs(self, **inputs: np.ndarray) -> np.ndarray:
        return self.session.run(["probs"], inputs)[0]

    def inputs(self, clips: list[Clip]) -> dict[str, np.ndarray]:
        """The graph's inputs for `clips` (waveform and hf_at exports; a feature export: a one-line UserError)."""
        if self._inputs is None:
            self._inputs = ClipInputs(self.meta, self.folder)
        return self._inputs(clips)

    def predict(self, clips: list[Clip]) -> np.ndarray:
        """Calibrated probabilities [n, C] of `clips` (raw 16 kHz audio and / or transcripts), as
        `Predictor.predict` gives them."""
        return self.probs(**self.inputs(clips))
