"""Hugging Face speech and text encoders: loading, batching-safe forward passes, layer choice and pooling.

Shared by the offline extractor (`extract_at_features_hf.py`) and the end-to-end `HFAudioTextModel`.

Audio encoders are the wav2vec2 family (WavLM, HuBERT, wav2vec2, data2vec-audio): raw 16 kHz waveforms in,
frames out, one frame per `conv_stride` product of samples. Text encoders are BERT-like (RoBERTa, BERT, MiniLM).

Batching invariance (a clip's pooled vector must not depend on what it is batched with) needs three things,
all handled here:

1. the feature extractor normalises each clip over its own samples only (`prepare_audio` always asks it for an
   attention mask, which makes `Wav2Vec2FeatureExtractor` normalise under the mask);
2. the pooling ignores padded frames: the waveform mask becomes the encoder's frame mask through the encoder's
   own conv arithmetic (`frame_mask_from_waveform_mask`);
3. encoders whose first conv layer uses GroupNorm (`feat_extract_norm == "group"`, e.g. wavlm-base-plus,
   hubert-base, wav2vec2-base) normalise over the whole padded time axis, so padding leaks into every frame.
   `encode_audio` runs their conv feature encoder clip by clip on the clip's own samples and pads the conv
   features instead (the transformer still runs batched, with the frame mask).

Hidden-state indexing (`select_layer`): index 0 is the input of the first transformer layer, index i the output
of layer i, and the last index is the model's final output (`last_hidden_state`; for "stable layer norm"
encoders that is after the final LayerNorm). `"mean"` averages all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mer.errors import UserError
from mer.features.pooling import masked_mean, mean_std_pool

Kind = Literal["audio", "text"]
Layer = str | int
AUDIO_POOLINGS = ("mean", "mean_std")
TEXT_POOLINGS = ("cls", "mean")

# Model families whose position ids start after the padding index (RoBERTa: positions 2..513 of 514).
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer", "xlm-roberta-xl"}


# -- loading -----------------------------------------------------------------------------------------------------
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """True when Hugging Face downloads are switched off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        pass
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and weight-loading progress bars while loading."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _offline_message(name: str, kind: Kind, reason: str) -> str:
    proc = "AutoFeatureExtractor" if kind == "audio" else "AutoTokenizer"
    folder = name.rstrip("/").split("/")[-1]
    return (
        f"{kind} model {name!r}: not a local folder, not in the Hugging Face cache, and it cannot be downloaded "
        f"here ({reason}). On a machine with network access run: python -c \"from transformers import AutoModel, "
        f"{proc}; AutoModel.from_pretrained('{name}').save_pretrained('{folder}'); "
        f"{proc}.from_pretrained('{name}').save_pretrained('{folder}')\", copy the folder '{folder}' here and "
        f"pass its path instead of the hub name (or copy the Hugging Face cache folder to HF_HOME)"
    )


def load_encoder(name_or_dir: str | Path, kind: Kind) -> tuple[nn.Module, object]:
    """Load an encoder and its processor (feature extractor for audio, tokenizer for text), in eval mode.

    `name_or_dir` is a folder written by `save_pretrained` or a hub name. A hub name is looked up in the local
    Hugging Face cache first and downloaded only when that misses and downloads are allowed; when neither works
    (offline mode, no network, unknown name) the error is a UserError saying how to provide a local folder.
    """
    from transformers import AutoFeatureExtractor, AutoModel, AutoTokenizer

    if kind not in ("audio", "text"):
        raise ValueError(f"kind must be 'audio' or 'text', got {kind!r}")
    proc_cls = AutoFeatureExtractor if kind == "audio" else AutoTokenizer
    article = "an" if kind == "audio" else "a"
    name = str(name_or_dir)
    local = Path(name).expanduser()

    def load(src: str, **kw) -> tuple[nn.Module, object]:
        model = AutoModel.from_pretrained(src, **kw)
        if kind == "audio" and not hasattr(model, "_get_feat_extract_output_lengths"):
            raise UserError(
                f"{name}: a {type(model).__name__} is not a waveform encoder of the wav2vec2 family "
                "(WavLM, HuBERT, wav2vec2, data2vec-audio); pass one as the audio model"
            )
        processor = proc_cls.from_pretrained(src, **kw)
        if kind == "text" and not hasattr(processor, "pad"):
            raise UserError(f"{name}: its processor {type(processor).__name__} is not a tokenizer")
        return model, processor

    with quiet_transformers():
        if local.is_dir():
            try:
                model, processor = load(str(local.resolve()))
            except (OSError, ValueError, KeyError) as exc:
                what = "preprocessor_config.json" if kind == "audio" else "the tokenizer files"
                raise UserError(
                    f"{local}: cannot load {article} {kind} encoder from this folder ({_first_line(exc)}); "
                    f"expected config.json, the weights and {what} written by save_pretrained"
                ) from None
        elif local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise UserError(f"{name}: {kind} model folder not found (expected a save_pretrained folder or a hub name)")
        else:
            try:  # the cache first: no network request at all when the files are there
                model, processor = load(name, local_files_only=True)
            except (OSError, ValueError) as cache_exc:
                if hub_offline():
                    raise UserError(_offline_message(name, kind, "HF_HUB_OFFLINE is set")) from None
                try:
                    model, processor = load(name)
                except (OSError, ValueError) as exc:
                    reason = _first_line(exc) or _first_line(cache_exc)
                    raise UserError(_offline_message(name, kind, reason)) from None
    model.eval()
    return model, processor


def encoder_fingerprint(model: nn.Module) -> str:
    """`<name_or_path>@sha256:<hex>`: the model's name or folder and the SHA-256 of its config JSON.

    Private keys (`_name_or_path`, attention implementation, ...), `transformers_version` and the dtype are left
    out of the hash, so the same encoder gives the same fingerprint across library versions and load options.
    """
    cfg = model.config.to_dict()
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("transformers_version", "dtype",
                                                                              "torch_dtype")}
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode("utf-8")).hexdigest()
    name = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "") or type(model).__name__
    return f"{name}@sha256:{digest}"


# -- audio ---------------------------------------------------------------------------------------------------
def audio_output_lengths(model: nn.Module, lengths: Tensor | int) -> Tensor:
    """Frames the encoder makes from `lengths` samples (its own conv arithmetic), never negative."""
    # a tensor stays the same tensor (no as_tensor: under torch.jit.trace a length read from a shape is a traced
    # value, and as_tensor would freeze it into the graph as a constant)
    lengths = lengths.long() if isinstance(lengths, Tensor) else torch.as_tensor(lengths, dtype=torch.long)
    out = model._get_feat_extract_output_lengths(lengths)
    return (out.long() if isinstance(out, Tensor) else torch.as_tensor(out, dtype=torch.long)).clamp_min(0)


def min_audio_samples(model: nn.Module) -> int:
    """The shortest input (in samples) that gives the encoder at least one frame: its receptive field."""
    n = 1
    for kernel, stride in zip(reversed(model.config.conv_kernel), reversed(model.config.conv_stride), strict=True):
        n = (n - 1) * stride + kernel
    return int(n)


def frame_mask_from_waveform_mask(model: nn.Module, attention_mask: Tensor) -> Tensor:
    """Waveform mask [B, S] (1 = a real, right-padded sample) -> the encoder's frame mask [B, T], bool.

    T is the frame count of the padded batch, `model._get_feat_extract_output_lengths(S)`; row b keeps its first
    `_get_feat_extract_output_lengths(attention_mask[b].sum())` frames (a row without samples keeps none).
    Traceable: under `torch.jit.trace` the batch and sample axes stay dynamic (no Python int of a tensor).
    """
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be [B, S], got shape {tuple(attention_mask.shape)}")
    lengths = audio_output_lengths(model, attention_mask.sum(-1).long())
    total = audio_output_lengths(model, attention_mask.shape[1])  # a traced value under torch.jit.trace
    return torch.arange(total, device=attention_mask.device).unsqueeze(0) < lengths.unsqueeze(1)


@contextlib.contextmanager
def _clipwise_feature_encoder(model: nn.Module, lengths: list[int]) -> Iterator[None]:
    """While active, `model.feature_extractor` runs each clip alone on its first `lengths[b]` samples and pads
    the conv features to the batch's frame count with zeros (masked out downstream)."""
    fe = model.feature_extractor
    original = fe.forward

    def forward(input_values: Tensor) -> Tensor:
        total = int(audio_output_lengths(model, input_values.shape[-1]))
        feats = [original(input_values[b : b + 1, :n]) for b, n in enumerate(lengths)]  # [1, C, t_b] each
        return torch.cat([F.pad(f, (0, total - f.shape[-1])) for f in feats], dim=0)

    fe.forward = forward
    try:
        yield
    finally:
        del fe.forward  # back to the class's forward


def hidden_states_of(out, with_all: bool) -> tuple[Tensor, ...]:
    """The model output as a hidden-state tuple whose last entry is the final output (see module doc)."""
    if not with_all:
        return (out.last_hidden_state,)
    return (*tuple(out.hidden_states)[:-1], out.last_hidden_state)


def encode_audio(
    model: nn.Module, input_values: Tensor, attention_mask: Tensor, layer: Layer = "last"
) -> tuple[Tensor, Tensor]:
    """Run the audio encoder on a padded batch: hidden states of `layer` [B, T, H] and the frame mask [B, T].

    Rows must be right-padded, each at least `min_audio_samples(model)` long. Differentiable (no no_grad here):
    wrap in `torch.inference_mode()` for extraction.
    """
    lengths = attention_mask.sum(-1).long()
    short = int(lengths.min()) if lengths.numel() else 0
    need = min_audio_samples(model)
    if short < need:
        raise ValueError(f"a clip has {short} samples; the encoder needs at least {need} (its receptive field)")
    frame_mask = frame_mask_from_waveform_mask(model, attention_mask)
    with_all = layer != "last"
    group_norm = getattr(model.config, "feat_extract_norm", None) == "group"
    padded = bool((lengths < input_values.shape[-1]).any())
    ctx = _clipwise_feature_encoder(model, lengths.tolist()) if group_norm and padded else contextlib.nullcontext()
    with ctx, warnings.catch_warnings():
        # torch warns about WavLM's mixed bool key-padding mask and float position bias; the result is right.
        warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask and attn_mask.*")
        out = model(input_values, attention_mask=attention_mask, output_hidden_states=with_all)
    hidden = select_layer(hidden_states_of(out, with_all), layer)
    if hidden.shape[1] != frame_mask.shape[1]:
        raise RuntimeError(
            f"the encoder gave {hidden.shape[1]} frames, its conv arithmetic says {frame_mask.shape[1]}"
        )
    return hidden, frame_mask


# -- text ----------------------------------------------------------------------------------------------------
def text_max_length(model: nn.Module, tokenizer) -> int:
    """The longest token sequence (special tokens included) the text encoder accepts."""
    cfg = model.config
    limit = int(getattr(cfg, "max_position_embeddings", 512) or 512)
    if getattr(cfg, "model_type", "") in _OFFSET_POSITION_MODELS:
        limit -= int(getattr(cfg, "pad_token_id", 1) or 0) + 1
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limit = min(limit, tok_max)
    return max(limit, 2)


def encode_text(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, layer: Layer = "last") -> Tensor:
    """Run the text encoder on a right-padded batch: hidden states of `layer` [B, L, H]."""
    with_all = layer != "last"
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=with_all)
    return select_layer(hidden_states_of(out, with_all), layer)


# -- layers and pooling ----------------------------------------------------------------------------------------
def parse_layer(value: str | int) -> Layer:
    """`"last"`, `"mean"` or an integer (a string of digits, possibly negative, becomes an int)."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text in ("last", "mean"):
        return text
    try:
        return int(text)
    except ValueError:
        msg = f"layer {value!r}: expected 'last', 'mean' or a layer index (0 = the input of the first layer)"
        raise UserError(msg) from None


def check_layer(model: nn.Module, layer: Layer) -> None:
    """UserError unless `layer` exists in this encoder (0..num_hidden_layers, negatives from the end)."""
    if layer in ("last", "mean"):
        return
    n = int(model.config.num_hidden_layers) + 1
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
        raise UserError(
            f"layer {layer!r} does not exist: {getattr(model, 'name_or_path', '') or type(model).__name__} has "
            f"{n - 1} layers (valid: 0..{n - 1}, -{n}..-1, 'last', 'mean' or 'weighted')"
        )


def select_layer(hidden_states: Sequence[Tensor], layer: Layer) -> Tensor:
    """One hidden state [B, T, H] from the encoder's tuple: `"last"`, an index (negative from the end) or `"mean"`
    (the average over every entry of the tuple)."""
    n = len(hidden_states)
    if n == 0:
        raise ValueError("no hidden states to select from")
    if layer == "last":
        return hidden_states[-1]
    if layer == "mean":
        return torch.stack(list(hidden_states), dim=0).mean(dim=0)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"layer must be 'last', 'mean' or an int, got {layer!r}")
    if not -n <= layer < n:
        raise UserError(
            f"layer {layer} does not exist: this encoder has {n - 1} layers (valid: 0..{n - 1}, -{n}..-1, "
            "'last' or 'mean')"
        )
    return hidden_states[layer]


def pool_audio(hidden: Tensor, frame_mask: Tensor, method: str = "mean") -> Tensor:
    """[B, T, H] under frame mask [B, T] -> `mean` [B, H] or `mean_std` [B, 2H] (padding ignored)."""
    if method == "mean":
        return masked_mean(hidden, frame_mask, dim=1)
    if method == "mean_std":
        return mean_std_pool(hidden, frame_mask)
    raise ValueError(f"audio pooling must be one of {AUDIO_POOLINGS}, got {method!r}")


def pool_text(hidden: Tensor, attention_mask: Tensor, method: str = "cls") -> Tensor:
    """[B, L, H] -> [B, H]: `cls` (the first token, right padding) or `mean` over the attended tokens."""
    if method == "cls":
        return hidden[:, 0]
    if method == "mean":
        return masked_mean(hidden, attention_mask, dim=1)
    raise ValueError(f"text pooling must be one of {TEXT_POOLINGS}, got {method!r}")


def pooled_dim(model: nn.Module, method: str) -> int:
    """Width of the pooled vector: hidden_size, doubled for `mean_std`."""
    hidden = int(model.config.hidden_size)
    return 2 * hidden if method == "mean_std" else hidden
