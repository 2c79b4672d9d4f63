"""A trained run's model as a self-contained folder (a "package"): everything prediction needs, no pickle.

    write_package("runs/my_run", "packages/my_run")      # export.py --run runs/my_run --format package
    load_predictor("packages/my_run")                     # predict.py --run packages/my_run ...: no run folder

The folder (every file listed in `mer_package.json` with its size and sha256):

- `mer_package.json`: labels (class order and label -> index), the task, track / model / mode, the model config,
  the feature dims, heads and rating scales, the calibration temperature, the normalization switches, the feature
  extractor settings of each feature store (what predict re-creates the extractor from: `store.json`'s settings),
  the encoders' origin, the evaluation metrics, the training class counts and the source run;
- `config.json`: the run's resolved config; `model.safetensors`: the evaluation weights of the checkpoint (best.pt's
  are already the EMA weights when the run had EMA; for `last`, its EMA weights);
- `normalization.safetensors` (feature runs; speaker-normalized frame runs): the z-scoring statistics
  (`feature_stats.*`) and the speaker-norm fallback (`speaker_norm_fallback.mean/std`, its count in `mer_package.json`);
- `encoders/` (end-to-end and pretrained frame runs): the run's encoder configs, feature extractor and tokenizer
  files (no weights: those are in model.safetensors);
- `calibration.json`, `task_report.json` (the training data summary), `metrics/<view>.json` (each eval view's
  metrics_eval.json) when the run has them; `README.md`: a model card with the metrics; with `--format package onnx
  torchscript` also the graph exports and `export.json` (`mer.serving.export`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mer.config import load_config, to_dict, validate
from mer.errors import UserError
from mer.evaluation.calibration import read_calibration
from mer.io import atomic_folder, atomic_write_text
from mer.schema import ExperimentConfig
from mer.training.checkpoint import (
    AUDIO_DIM_KEY,
    FEATURE_STATS_KEY,
    LABELS_KEY,
    MODEL_CFG_KEY,
    MODEL_KEY,
    TEXT_DIM_KEY,
    TRAIN_COUNTS_KEY,
    VAL_METRICS_KEY,
    eval_weights,
    load_checkpoint,
)

PACKAGE_JSON, CONFIG_JSON, WEIGHTS, NORM, CARD = ("mer_package.json", "config.json", "model.safetensors",
                                                  "normalization.safetensors", "README.md")
ENCODERS_DIR, METRICS_DIR = "encoders", "metrics"
PACKAGE_FORMAT, PACKAGE_VERSION = "mer-package", 1
SPEAKER_NORM_KEY = "speaker_norm_fallback"  # = mer.recipes.features.SPEAKER_NORM_KEY (the checkpoint's entry)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
METRIC_COLUMNS = ("n", "acc", "macro_f1", "weighted_f1", "uar", "ece", "ece_calibrated")


def is_package(path: str | Path) -> bool:
    return (Path(path) / PACKAGE_JSON).is_file()


def _track(model_name: str | None) -> str:
    from mer.models.frame_registry import is_frame_model

    if model_name == "hf_at":
        return "end_to_end"
    return "frame" if model_name is not None and is_frame_model(model_name) else "features"


def _tensors(state_dict: dict, what: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise UserError(f"{what}: entry {k!r} is a {type(v).__name__}, not a tensor; cannot write it as safetensors")
        out[k] = v.detach().cpu().contiguous().clone()  # clone: safetensors refuses tensors sharing storage
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_out(run_dir: Path, out: Path, overwrite: bool) -> None:
    r, o = run_dir.resolve(), out.resolve()
    if o == r or o in r.parents:
        raise UserError(f"--out {out}: the run folder {run_dir} is inside it; give a folder of its own")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out}: exists and is not empty; give --overwrite to replace it, or another --out")
        if not (is_package(out) or (out / "export.json").is_file()):
            raise UserError(f"--out {out}: not a MER package or export folder; refusing to replace it (--overwrite "
                            "replaces only those)")


def _store_infos(cfg: ExperimentConfig) -> list[dict]:
    from mer.serving.predict import store_settings

    out = []
    for store in [cfg.data.store, *cfg.data.stores]:
        try:
            info = store_settings(store)
            out.append({"store": str(store), "settings": info.get("settings") or {},
                        "audio_dim": int(info["audio_dim"]), "text_dim": int(info["text_dim"])})
        except (UserError, KeyError, TypeError, ValueError):
            out.append({"store": str(store), "settings": None})  # predict from the package says so, one line
    return out


def write_package(run_dir: str | Path, out_dir: str | Path | None = None, *, checkpoint: str = "best",
                  overwrite: bool = False, formats: tuple[str, ...] = (), opset: int = 17) -> dict:
    """Write the package of a run (see the module doc) into `out_dir` (default `<run>/package`), through a temp
    folder beside it renamed at the end; `formats` ("onnx", "torchscript") adds the graph exports. Returns the
    `mer_package.json` record."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if is_package(run_dir):
        raise UserError(f"{run_dir}: already a package (export a run folder)")
    cfg_path = run_dir / "config_resolved.yaml"
    if not cfg_path.is_file():
        raise UserError(f"not a run directory (no config_resolved.yaml): {run_dir}")
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not ckpt.is_file():
        raise UserError(f"{run_dir}: no checkpoints/{checkpoint}.pt (training never finished an epoch?); nothing to "
                        "package")
    out = Path(out_dir) if out_dir else run_dir / "package"
    _check_out(run_dir, out, overwrite)
    cfg = load_config(cfg_path).cfg
    state = load_checkpoint(ckpt, map_location="cpu")
    model_cfg = dict(state.get(MODEL_CFG_KEY) or {})
    if not model_cfg.get("name"):
        raise UserError(f"{ckpt}: no {MODEL_CFG_KEY} entry; not written by a MER trainer")
    track, mode = _track(model_cfg.get("name")), str(model_cfg.get("mode", "AT"))
    calib = read_calibration(run_dir)
    calib = calib if calib and calib.get("checkpoint") in (None, checkpoint) else None
    with atomic_folder(out) as tmp:  # a failure leaves no half-written package
        if formats:  # the graph exports first: a model they cannot take stops here, before any file is moved
            from mer.serving.export import export_run

            export_run(run_dir, tmp, checkpoint=checkpoint, formats=formats, opset=opset)
        save_file(_tensors(eval_weights(state, checkpoint), str(ckpt)), str(tmp / WEIGHTS),
                  metadata={"format": "pt", "mer": PACKAGE_FORMAT, "checkpoint": checkpoint})
        norm: dict = {"standardize": bool(cfg.data.standardize), "feature_stats": False,
                      "speaker_norm": False, "speaker_norm_min_clips": int(cfg.data.speaker_norm_min_rows)}
        tensors = {}
        if track == "features":
            tensors = {f"feature_stats.{k}": v for k, v in (state.get(FEATURE_STATS_KEY) or {}).items()}
            norm["feature_stats"] = bool(tensors)
        if cfg.data.speaker_norm and SPEAKER_NORM_KEY in state:  # feature vectors', or the frame front end's
            g = state[SPEAKER_NORM_KEY]
            tensors.update({f"{SPEAKER_NORM_KEY}.mean": g["mean"], f"{SPEAKER_NORM_KEY}.std": g["std"]})
            norm.update(speaker_norm=True, speaker_norm_fallback_count=int(g["count"]))
        if tensors:
            save_file(_tensors(tensors, str(ckpt)), str(tmp / NORM), metadata={"format": "pt"})
        atomic_write_text(tmp / CONFIG_JSON, json.dumps(to_dict(cfg), indent=1) + "\n")
        encoders = _copy_encoders(run_dir, tmp, track, model_cfg)
        if calib:
            shutil.copyfile(run_dir / "calibration.json", tmp / "calibration.json")
        if (run_dir / "task_report.json").is_file():
            shutil.copyfile(run_dir / "task_report.json", tmp / "task_report.json")
        metrics = {}
        for m in sorted(run_dir.glob("eval_*/metrics_eval.json")):
            view = m.parent.name[len("eval_"):]
            (tmp / METRICS_DIR).mkdir(exist_ok=True)
            shutil.copyfile(m, tmp / METRICS_DIR / f"{view}.json")
            metrics[view] = json.loads(m.read_text(encoding="utf-8"))
        labels = list(state[LABELS_KEY])
        record = {
            "format": PACKAGE_FORMAT, "format_version": PACKAGE_VERSION,
            "model_id": f"{run_dir.name}/{checkpoint}@{int(ckpt.stat().st_mtime)}", "run_name": run_dir.name,
            "source_run": str(run_dir.resolve()), "checkpoint": checkpoint,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "track": track, "model": str(model_cfg["name"]), "mode": mode, "labels": labels,
            "label_to_index": {c: i for i, c in enumerate(labels)}, "task": to_dict(cfg.data.task),
            "temperature": float(calib["temperature"]) if calib else 1.0, "calibrated": calib is not None,
            "model_cfg": model_cfg, "audio_dim": state.get(AUDIO_DIM_KEY), "text_dim": state.get(TEXT_DIM_KEY),
            "heads": to_dict(cfg.model.heads), "rating_scales": dict(cfg.data.rating_scales),
            "normalization": norm, "extractors": _store_infos(cfg) if track == "features" else None,
            "encoders": encoders, "sample_rate": 16000, "max_audio_s": cfg.data.max_audio_s,
            "context_turns": int(cfg.data.context_turns), "protocol": {"speakers": cfg.data.protocol,
                                                                       "speaker_norm": bool(cfg.data.speaker_norm)},
            "train_class_counts": ({c: int(n) for c, n in zip(labels, state[TRAIN_COUNTS_KEY], strict=False)}
                                   if state.get(TRAIN_COUNTS_KEY) is not None else None),
            "val_metrics": state.get(VAL_METRICS_KEY),
            "metrics": {v: {k: m.get(k) for k in (*METRIC_COLUMNS, "checkpoint")} for v, m in metrics.items()},
        }
        atomic_write_text(tmp / CARD, model_card(record, metrics, tmp, out.name))
        for f in (tmp / WEIGHTS, tmp / NORM):  # safetensors writes 0600; a package is meant to be shared
            if f.is_file():
                f.chmod(0o644)
        record["files"] = {str(f.relative_to(tmp)): {"bytes": f.stat().st_size, "sha256": _sha256(f)}
                           for f in sorted(tmp.rglob("*")) if f.is_file()}
        atomic_write_text(tmp / PACKAGE_JSON, json.dumps(record, indent=1) + "\n")
    return record


def _copy_encoders(run_dir: Path, tmp: Path, track: str, model_cfg: dict) -> dict | None:
    from mer.models.frame_registry import PRETRAINED

    needed = track == "end_to_end" or model_cfg.get("name") in PRETRAINED
    src = run_dir / ENCODERS_DIR
    if not needed:
        return None
    if not (src / "audio" / "config.json").is_file() and not (src / "text" / "config.json").is_file():
        raise UserError(f"{run_dir}: no {ENCODERS_DIR}/ with the encoders' config files; a {model_cfg.get('name')} "
                        "package needs them")
    bad = [p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES]
    if bad:
        raise UserError(f"{bad[0]}: a binary/pickle file in the run's encoders/; a package holds JSON, text and "
                        "safetensors only")
    shutil.copytree(src, tmp / ENCODERS_DIR)
    info = src / "encoders.json"
    return json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}


# --------------------------------------------------------------------------- the model card


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def model_card(rec: dict, metrics: dict[str, dict], folder: Path, name: str = "THIS_FOLDER") -> str:
    """README.md of a package: what the model is, how to use it, its metrics, protocol and training data."""
    text_only = rec["mode"] == "T"
    pipeline = "text-classification" if text_only else "audio-classification"
    lines = ["---", "library_name: mer", f"pipeline_tag: {pipeline}",
             "tags:", "- speech-emotion-recognition", "- mer", f"- {rec['model']}", "---", "",
             f"# {rec['run_name']}: {rec['model']} ({rec['mode']}, {rec['track']} track)", "",
             f"A MER emotion recognition model over {len(rec['labels'])} classes ({', '.join(rec['labels'])}), "
             f"exported from run `{rec['run_name']}` (checkpoint `{rec['checkpoint']}`, model id "
             f"`{rec['model_id']}`). Probabilities are softmax(logits / T) with T = {rec['temperature']:.4f}"
             + ("" if rec["calibrated"] else " (the run has no calibration)") + ".", "",
             "## Use", "", "```bash",
             f"python predict.py --run {name} clips/ "
             + ("--text \"I can't believe it\" " if "T" in rec["mode"] else "") + "--out predictions.csv",
             "```", "",
             "or `mer.serving.predict.load_predictor(folder).predict([Clip(audio=wave_16k, text=...)])`; "
             "`python -m mer.serve --model FOLDER` serves it.", ""]
    if rec["track"] == "features":
        parts = ", ".join(str((e.get("settings") or {}).get("extractor", "unknown")) for e in rec["extractors"] or [])
        lines += [f"Inputs: 16 kHz audio{' and its transcript' if 'T' in rec['mode'] else ''}; the features ({parts}) "
                  "are re-created from the settings in `mer_package.json`, then normalized with "
                  "`normalization.safetensors`.", ""]
    else:
        lines += [f"Inputs: 16 kHz mono audio{' and its transcript' if 'T' in rec['mode'] else ''}"
                  + (f", cropped to the centre {rec['max_audio_s']} s" if rec["max_audio_s"] else "") + ".", ""]
    lines += ["## Evaluation", ""]
    if metrics:
        lines += ["| view | checkpoint | " + " | ".join(METRIC_COLUMNS) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in METRIC_COLUMNS) + " |"]
        lines += [f"| {v} | {m.get('checkpoint', '–')} | " + " | ".join(_fmt(m.get(k)) for k in METRIC_COLUMNS) + " |"
                  for v, m in metrics.items()]
        proto = next((m["protocol"] for m in metrics.values() if m.get("protocol")), rec["protocol"])
        lines += ["", f"Protocol: speakers {proto.get('speakers')}, speaker normalization "
                  f"{'on' if proto.get('speaker_norm') else 'off'}. Per-class figures: `metrics/<view>.json`.", ""]
    else:
        lines += ["The run has no evaluation views (no eval_<view>/metrics_eval.json).", ""]
    lines += ["## Training data", ""]
    report = folder / "task_report.json"
    views = json.loads(report.read_text(encoding="utf-8")).get("views", {}) if report.is_file() else {}
    cfg = json.loads((folder / CONFIG_JSON).read_text(encoding="utf-8"))
    source = cfg["data"].get("manifest") or cfg["data"].get("store")
    lines += [f"Source: `{source}`; training view `{cfg['data'].get('train_view')}`, validation view "
              f"`{cfg['data'].get('val_view')}`.", ""]
    if views:
        lines += ["| view | rows | " + " | ".join(rec["labels"]) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in rec["labels"]) + " |"]
        for v, r in views.items():
            counts = r.get("class_counts") or {}
            lines.append(f"| {v} | {r.get('rows', '–')} | " + " | ".join(str(counts.get(c, 0)) for c in rec["labels"])
                         + " |")
        lines.append("")
    elif rec["train_class_counts"]:
        lines += ["Training rows per class: " + ", ".join(f"{c} {n}" for c, n in rec["train_class_counts"].items()), ""]
    lines += ["## Files", "", "`mer_package.json` (labels, settings, file list with sha256), `config.json`, "
              "`model.safetensors`" + (", `normalization.safetensors`" if (folder / NORM).is_file() else "")
              + (", `encoders/`" if rec["encoders"] is not None else "") + ". No pickle: safetensors and JSON.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- reading a package


@dataclass
class Package:
    """A package read back: its record, config, and a checkpoint-like `state` (weights under MODEL_KEY, already
    the evaluation weights; labels, model config, dims, normalization statistics under the checkpoint's keys)."""

    folder: Path
    meta: dict
    cfg: ExperimentConfig
    state: dict

    @property
    def checkpoint(self) -> str:
        return str(self.meta["checkpoint"])

    @property
    def temperature(self) -> float | None:
        return float(self.meta["temperature"]) if self.meta.get("calibrated") else None

    def store_infos(self) -> list[dict]:
        return list(self.meta.get("extractors") or [])

    def model_and_encoders(self):
        """The end-to-end / frame model with the package's weights, and its encoders (None for the log-mel
        frame models); offline."""
        from mer.models.frame_registry import PRETRAINED, frame_encoder_from_files
        from mer.models.hf_at import encoders_from_files
        from mer.training.checkpoint import rebuild_model

        name, enc_dir = self.meta["model"], self.folder / ENCODERS_DIR
        encoders = (encoders_from_files(enc_dir, self.meta["mode"]) if name == "hf_at"
                    else frame_encoder_from_files(enc_dir) if name in PRETRAINED else None)
        model = rebuild_model(self.state, encoders=encoders)
        model.load_state_dict(self.state[MODEL_KEY])
        return model.eval(), encoders


def read_package(folder: str | Path) -> Package:
    """A package folder, checked: its json, every listed file present with its size (a missing or truncated file
    is a one-line error naming it)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / PACKAGE_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder}: not a MER package (no {PACKAGE_JSON})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{folder / PACKAGE_JSON}: corrupt ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != PACKAGE_FORMAT:
        raise UserError(f"{folder / PACKAGE_JSON}: not a MER package description (format {PACKAGE_FORMAT!r})")
    if int(meta.get("format_version") or 0) > PACKAGE_VERSION:
        raise UserError(f"{folder}: package format_version {meta.get('format_version')} (this MER reads up to "
                        f"{PACKAGE_VERSION})")
    for rel, info in (meta.get("files") or {}).items():
        path = folder / rel
        if not path.is_file():
            raise UserError(f"{folder}: the package is missing {rel} (listed in {PACKAGE_JSON}); copy the whole "
                            "folder or export it again")
        if path.stat().st_size != int(info.get("bytes", -1)):
            raise UserError(f"{path}: {path.stat().st_size} bytes, {PACKAGE_JSON} says {info.get('bytes')} (a "
                            "truncated or changed file); copy the whole folder or export it again")
    for rel in (CONFIG_JSON, WEIGHTS):
        if not (folder / rel).is_file():
            raise UserError(f"{folder}: the package is missing {rel}; export it again")
    cfg = validate(json.loads((folder / CONFIG_JSON).read_text(encoding="utf-8")), ExperimentConfig)
    try:
        weights = load_file(str(folder / WEIGHTS))
        norm = load_file(str(folder / NORM)) if (folder / NORM).is_file() else {}
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{folder}: cannot read its safetensors ({str(exc).splitlines()[0]})") from None
    state: dict = {MODEL_KEY: weights, LABELS_KEY: list(meta["labels"]), MODEL_CFG_KEY: meta["model_cfg"],
                   AUDIO_DIM_KEY: meta.get("audio_dim"), TEXT_DIM_KEY: meta.get("text_dim")}
    stats = {k.split(".", 1)[1]: v for k, v in norm.items() if k.startswith("feature_stats.")}
    state[FEATURE_STATS_KEY] = stats or None
    if (meta.get("normalization") or {}).get("speaker_norm"):
        state[SPEAKER_NORM_KEY] = {"mean": norm[f"{SPEAKER_NORM_KEY}.mean"], "std": norm[f"{SPEAKER_NORM_KEY}.std"],
                                   "count": int(meta["normalization"].get("speaker_norm_fallback_count", 0))}
    return Package(folder, meta, cfg, state)


# --------------------------------------------------------------------------- the Hugging Face Hub

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False) -> str:
    """Upload a package folder to the Hub model repo `repo_id` (created when missing; the token: HF_TOKEN or
    `huggingface-cli login`). Returns the repo's URL."""
    if not REPO_ID.fullmatch(repo_id or ""):
        raise UserError(f"--push-to-hub {repo_id!r}: expected a repo id such as user/name")
    folder = Path(folder)
    read_package(folder)  # never upload a broken folder
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise UserError("--push-to-hub needs huggingface_hub (pip install huggingface_hub)") from None
    api = HfApi()
    try:
        url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message=f"MER package of {folder.name}")
    except Exception as exc:  # HTTP, authentication, network: one line
        lines = str(exc).strip().splitlines()
        raise UserError(f"--push-to-hub {repo_id}: {lines[0] if lines else type(exc).__name__}") from None
    return str(url) if url else f"https://huggingface.co/{repo_id}"


def export_lines(run: str | Path, out: str | Path | None, *, formats: list[str] | None, checkpoint: str = "best",
                 opset: int = 17, overwrite: bool = False, hub_repo: str | None = None) -> list[str]:
    """What `export.py` does and prints: the graph exports (default onnx + torchscript into `<run>/export`), or
    with "package" in `formats` (or `hub_repo`) the package (into `<run>/package`) with any graph formats beside,
    then the upload."""
    from mer.serving.export import FORMATS, export_run

    formats = list(formats or ([] if hub_repo else FORMATS))
    graphs = tuple(f for f in formats if f != "package")
    if "package" not in formats and not hub_repo:
        rec = export_run(run, out, checkpoint=checkpoint, formats=graphs, opset=opset)
        out = out or f"{run}/export"
        head = (f"exported    {rec['model']}/{rec['mode']} ({rec['track']}), labels {', '.join(rec['labels'])}, "
                f"T = {rec['temperature']:.3f}{'' if rec['calibrated'] else ' (uncalibrated)'}")
        return [head, *[f"  {fmt:<12} {out}/{rec['files'][fmt]}  max |p - p_torch| {diff:.1e}"
                         for fmt, diff in rec["parity_max_abs_diff"].items()],
                f"  metadata     {out}/export.json (inputs, normalization, labels, temperature)"]
    out = Path(out) if out else Path(run) / "package"
    rec = write_package(run, out, checkpoint=checkpoint, overwrite=overwrite, formats=graphs, opset=opset)
    size = sum(f["bytes"] for f in rec["files"].values())
    lines = [f"packaged    {rec['model']}/{rec['mode']} ({rec['track']}), labels {', '.join(rec['labels'])}, "
             f"T = {rec['temperature']:.3f}{'' if rec['calibrated'] else ' (uncalibrated)'}",
             f"  folder       {out} ({len(rec['files'])} files, {size / 1e6:.1f} MB; predict.py --run {out})"]
    if hub_repo:
        lines.append(f"  hub          {push_to_hub(out, hub_repo)}")
    return lines
