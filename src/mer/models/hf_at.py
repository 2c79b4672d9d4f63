"""HFAudioTextModel: speech and text encoders fine-tuned end to end with the RobustAT fusion (DESIGN.md, "Models").

    input_values [B, S] -> audio_encoder (WavLM / HuBERT / wav2vec2; `encode_audio_states`: padding-safe)
        -> hidden states of `audio_layer` (last | index | mean | weighted: learned softmax weights over all)
        -> masked mean (or mean+std, or attentive statistics pooling) over real frames -> audio_proj: LayerNorm -> Linear -> Dropout   ─┐
    input_ids [B, L] -> text_encoder (RoBERTa / BERT) -> CLS (or masked mean)                           │
        -> text_proj: LayerNorm -> Linear -> Dropout                                                   ─┤
    -> CLSTokenFusion (the RobustAT fusion: CLS + modality tokens, pre-LN blocks; a masked modality is left
       out of attention) -> head: Linear(hidden_dim, n_classes)

Modes A, T, AT build only the encoders they read. `audio_mask` / `text_mask` [B] (False = missing or dropped by
modality dropout) are honoured; a modality absent from the whole batch is not encoded at all.

Freezing (`model.hf.freeze`): `none`; `feature_encoder` (the audio encoder's conv front end, the usual choice when
fine-tuning wav2vec2-family models); `all` (both encoders: only projections, fusion and head train — they run
under no_grad and stay in eval mode, so their dropout is off). `gradient_checkpointing` recomputes the encoders'
activations in the backward pass. With an `audio_layer` other than `last`, the audio encoder's LayerDrop is
switched off (a dropped layer records no hidden state, which would shift the layer indices in training).

Parameter-name prefixes (for `train.lr_overrides`, longest prefix wins), see `PARAM_GROUP_PREFIXES`:
`audio_encoder.`, `text_encoder.` (the pretrained encoders), `audio_layer_weights`, `audio_proj.`, `text_proj.`,
`fusion.`, `head.` (everything else: the base `train.lr`). E.g. encoders at 2e-5 and the rest at 1e-4:

    train: {lr: 1.0e-4, lr_overrides: {audio_encoder.: 2.0e-5, text_encoder.: 2.0e-5}}

Rebuilding without the original encoders: `save_encoder_files(encoders, folder)` writes each encoder's config and
feature extractor / tokenizer (no weights) with save_pretrained; `encoders_from_files(folder, mode)` makes the
same architectures with `AutoModel.from_config` (random weights, no hub, no network), and the checkpoint's state
dict then supplies every weight.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from mer.errors import UserError
from mer.features.hf_encoders import (
    check_layer,
    encode_text,
    frame_mask_from_waveform_mask,
    hidden_states_of,
    load_encoder,
    min_audio_samples,
    pool_audio,
    pool_text,
    pooled_dim,
    quiet_transformers,
    select_layer,
    text_max_length,
)
from mer.io import atomic_folder
from mer.models.blocks import ModalityProjection
from mer.models.conv_features import ConvFeatureCache, masked_conv_norm, replaced_conv_features
from mer.models.pooling import AttentiveStatsPool
from mer.models.registry import MODE_MODALITIES, register
from mer.models.robust_at import CLSTokenFusion
from mer.schema import HFModelConfig, ModelConfig

PARAM_GROUP_PREFIXES = {
    "audio_encoder.": "the pretrained audio encoder",
    "text_encoder.": "the pretrained text encoder",
    "audio_layer_weights": "the learned layer weights (audio_layer: weighted)",
    "audio_pool.": "attentive statistics pooling (audio_pooling: asp)",
    "audio_proj.": "audio projection to the fusion width",
    "text_proj.": "text projection to the fusion width",
    "fusion.": "CLS-token fusion blocks",
    "head.": "the classifier",
}
FREEZE_CHOICES = ("none", "feature_encoder", "all")


@dataclass
class HFEncoders:
    """The encoders a mode needs and their processors (None where the mode does not read that modality)."""

    audio: nn.Module | None = None
    feature_extractor: object | None = None
    text: nn.Module | None = None
    tokenizer: object | None = None

    @property
    def min_audio_samples(self) -> int:
        return min_audio_samples(self.audio) if self.audio is not None else 0

    @property
    def sampling_rate(self) -> int:
        return int(getattr(self.feature_extractor, "sampling_rate", 16000) or 16000)

    def max_text_tokens(self, limit: int | None = None) -> int:
        """The text token limit: the encoder's own, or `limit` when smaller."""
        if self.text is None:
            return 0
        own = text_max_length(self.text, self.tokenizer)
        return own if limit is None else max(2, min(own, int(limit)))

    @property
    def context_sep(self) -> str:
        """Separator between dialogue turns: the tokenizer's own separator token, spaced."""
        sep = getattr(self.tokenizer, "sep_token", None) if self.tokenizer is not None else None
        return f" {sep} " if sep else " </s> "


def load_hf_encoders(hf: HFModelConfig, mode: str) -> HFEncoders:
    """The pretrained encoders of `mode` (hub name or save_pretrained folder, see `load_encoder`)."""
    enc = HFEncoders()
    if "audio" in MODE_MODALITIES[mode]:
        enc.audio, enc.feature_extractor = load_encoder(hf.audio_encoder, "audio")
    if "text" in MODE_MODALITIES[mode]:
        enc.text, enc.tokenizer = load_encoder(hf.text_encoder, "text")
    return enc


def save_encoder_files(enc: HFEncoders, folder: str | Path) -> Path:
    """Write `audio/` and `text/` (config.json + feature extractor / tokenizer files, no weights) into `folder`,
    atomically: a temp folder beside it, renamed at the end. An existing `folder` is replaced."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        for name, model, proc in (("audio", enc.audio, enc.feature_extractor), ("text", enc.text, enc.tokenizer)):
            if model is None:
                continue
            model.config.save_pretrained(tmp / name)
            proc.save_pretrained(tmp / name)
    return folder


def encoders_from_files(folder: str | Path, mode: str) -> HFEncoders:
    """Encoders of `mode` rebuilt from `save_encoder_files` output: architectures from config.json with random
    weights (load a checkpoint's state dict next), processors from their files. Never touches the network."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoTokenizer

    folder = Path(folder)
    enc = HFEncoders()
    for modality in MODE_MODALITIES[mode]:
        sub = folder / modality
        if not (sub / "config.json").is_file():
            raise UserError(f"{sub}: no config.json; expected the encoder files that train_hf_e2e.py writes into "
                            "<run>/encoders/")
        try:
            with quiet_transformers():
                model = AutoModel.from_config(AutoConfig.from_pretrained(str(sub)))
                proc = (AutoFeatureExtractor if modality == "audio" else AutoTokenizer).from_pretrained(str(sub))
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{sub}: cannot rebuild the {modality} encoder ({str(exc).strip().splitlines()[0]})") \
                from None
        model.eval()
        if modality == "audio":
            enc.audio, enc.feature_extractor = model, proc
        else:
            enc.text, enc.tokenizer = model, proc
    return enc


def encode_audio_states(model: nn.Module, input_values: Tensor, attention_mask: Tensor,
                        all_states: bool = False, conv_features: Tensor | None = None,
                        ) -> tuple[tuple[Tensor, ...], Tensor]:
    """The audio encoder on a right-padded batch: its hidden states (all of them, indexed as `select_layer`
    indexes them, or just the last) and the frame mask [B, T].

    The same result as `hf_encoders.encode_audio` (tested against it), in one batched pass also for encoders
    whose first conv layer has a GroupNorm (wavlm-base-plus, hubert-base, wav2vec2-base): its statistics are
    taken per clip over the clip's own frames (`masked_group_norm`) rather than running the whole conv stage
    clip by clip (`encode_audio`'s way: ~2.5x the conv time on CPU for the tiny test encoder, 8 clips a batch,
    and one small kernel per clip and conv layer on a GPU).

    Under `torch.jit.trace` (export) the masked GroupNorm applies whatever the example's padding (on a batch
    without padding it equals the plain GroupNorm) and the length check is left out: the traced graph keeps its
    batch and sample axes dynamic.
    """
    tracing = torch.jit.is_tracing()
    lengths = attention_mask.sum(-1).long()
    need = min_audio_samples(model)
    if not tracing and lengths.numel() and int(lengths.min()) < need:
        raise ValueError(f"a clip has {int(lengths.min())} samples; the encoder needs at least {need}")
    frame_mask = frame_mask_from_waveform_mask(model, attention_mask)
    group_norm = getattr(model.config, "feat_extract_norm", None) == "group"
    padded = tracing or bool((lengths < input_values.shape[-1]).any())
    if conv_features is not None:  # the frozen conv stack's output, given (`ConvFeatureCache`)
        ctx = replaced_conv_features(model, conv_features)
    else:
        ctx = masked_conv_norm(model, lengths) if group_norm and padded else contextlib.nullcontext()
    with ctx, warnings.catch_warnings():
        # torch warns about WavLM's mixed bool key-padding mask and float position bias; the result is right.
        warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask and attn_mask.*")
        out = model(input_values, attention_mask=attention_mask, output_hidden_states=all_states)
    states = hidden_states_of(out, all_states)
    if not tracing and states[-1].shape[1] != frame_mask.shape[1]:
        raise RuntimeError(f"the encoder gave {states[-1].shape[1]} frames, its conv arithmetic says "
                           f"{frame_mask.shape[1]}")
    return states, frame_mask


def _enable_checkpointing(model: nn.Module) -> None:
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"model.hf.gradient_checkpointing: {type(model).__name__} does not support it")
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name is deprecated
        model.activation_checkpointing_enable()
    else:
        model.gradient_checkpointing_enable()


@register("hf_at")
class HFAudioTextModel(nn.Module):
    """Encoders + RobustAT fusion; forward(batch) -> logits [B, n_classes]. See the module doc."""

    needs_feature_dims = False  # the registry does not ask a feature store for dims
    PARAM_GROUP_PREFIXES = PARAM_GROUP_PREFIXES  # every prefix the model can have, whatever its mode

    def __init__(self, cfg: ModelConfig, n_classes: int, encoders: HFEncoders | None = None) -> None:
        super().__init__()
        hf = cfg.hf
        if hf.freeze not in FREEZE_CHOICES:
            raise UserError(f"model.hf.freeze={hf.freeze!r} is not one of {', '.join(FREEZE_CHOICES)}")
        self.cfg, self.mode, self.n_classes = cfg, cfg.mode, n_classes
        self.modalities = MODE_MODALITIES[cfg.mode]
        self.freeze = hf.freeze
        self.conv_cache: ConvFeatureCache | None = None  # enable_conv_cache (training only; not in the state)
        enc = encoders if encoders is not None else load_hf_encoders(hf, cfg.mode)
        hidden = cfg.hidden_dim
        self.audio_layer = hf.audio_layer
        if "audio" in self.modalities:
            if enc.audio is None:
                raise ValueError(f"mode {cfg.mode} needs an audio encoder")
            self.audio_encoder = enc.audio
            if self.audio_layer != "last" and getattr(enc.audio.config, "layerdrop", 0.0):
                # LayerDrop skips whole layers in training, and a skipped layer records no hidden state: the
                # indices of the others would shift. Choosing a layer needs every layer's output.
                enc.audio.config.layerdrop = 0.0
            if self.audio_layer == "weighted":
                n_states = int(enc.audio.config.num_hidden_layers) + 1
                self.audio_layer_weights = nn.Parameter(torch.zeros(n_states))  # softmax: uniform at the start
            else:
                check_layer(enc.audio, self.audio_layer)
            if hf.audio_pooling == "asp":  # e_t = v^T tanh(W h_t + b), masked softmax, [sum a h ; sqrt(sum a h^2 - mu^2)]
                self.audio_pool = AttentiveStatsPool(int(enc.audio.config.hidden_size), attention_dim=128)
                self.audio_dim = self.audio_pool.out_dim
            else:
                self.audio_dim = pooled_dim(enc.audio, hf.audio_pooling)
            self.audio_proj = ModalityProjection(self.audio_dim, hidden, cfg.dropout, activation=False)
        if "text" in self.modalities:
            if enc.text is None:
                raise ValueError(f"mode {cfg.mode} needs a text encoder")
            self.text_encoder = enc.text
            self.text_dim = pooled_dim(enc.text, hf.text_pooling)
            self.text_proj = ModalityProjection(self.text_dim, hidden, cfg.dropout, activation=False)
        f = cfg.fusion
        self.fusion = CLSTokenFusion(hidden, len(self.modalities), f.layers, f.heads, f.dropout, f.ffn_mult)
        self.head = nn.Linear(hidden, n_classes)
        self._apply_freeze()
        if hf.gradient_checkpointing:
            for m in self.encoders():
                _enable_checkpointing(m)
            if "audio" in self.modalities and getattr(enc.audio.config, "feat_extract_norm", None) == "group":
                # Its per-clip GroupNorm is switched in for the forward pass only (`encode_audio_states`), so a
                # recomputation in the backward pass would not see it: keep this one layer's activations.
                enc.audio.feature_extractor.conv_layers[0].gradient_checkpointing = False

    # -- structure -------------------------------------------------------------------------------------------
    def enable_conv_cache(self, max_mb: float, max_samples: int | None) -> ConvFeatureCache:
        """Keep the frozen conv stack's output of training clips in memory (`model.hf.conv_cache_mb`); clips of
        `max_samples` or more (cropped in training) are not kept."""
        if "audio" not in self.modalities or self.freeze not in ("feature_encoder", "all"):
            raise UserError("config key 'model.hf.conv_cache_mb': needs an audio encoder whose conv feature encoder "
                            "is frozen (model.hf.freeze: feature_encoder or all)")
        self.conv_cache = ConvFeatureCache(int(max_mb * 2**20), max_samples)
        return self.conv_cache

    def encoders(self) -> list[nn.Module]:
        return [m for m in (getattr(self, "audio_encoder", None), getattr(self, "text_encoder", None)) if m is not None]

    def _apply_freeze(self) -> None:
        if self.freeze == "all":
            for m in self.encoders():
                m.requires_grad_(False)
                m.eval()
        elif self.freeze == "feature_encoder" and "audio" in self.modalities:
            enc = self.audio_encoder
            if hasattr(enc, "freeze_feature_encoder"):
                enc.freeze_feature_encoder()
            else:
                enc.feature_extractor.requires_grad_(False)

    def train(self, mode: bool = True) -> HFAudioTextModel:
        """As nn.Module.train; frozen encoders (freeze: all) stay in eval mode."""
        super().train(mode)
        if self.freeze == "all":
            for m in self.encoders():
                m.eval()
        return self

    def param_group_prefixes(self) -> dict[str, str]:
        """The parameter-name prefixes this model has (for train.lr_overrides) and what each covers."""
        names = [n for n, _ in self.named_parameters()]
        return {p: d for p, d in PARAM_GROUP_PREFIXES.items() if any(n.startswith(p) for n in names)}

    # -- forward ---------------------------------------------------------------------------------------------
    def _grad_ctx(self):
        return torch.no_grad() if self.freeze == "all" else contextlib.nullcontext()

    def audio_vector(self, input_values: Tensor, attention_mask: Tensor, index: Tensor | None = None) -> Tensor:
        """Pooled audio vector [B, audio_dim] (before the projection); padding never changes a clip's vector.
        `index`: the batch's dataset rows, for the conv feature cache (training only)."""
        conv = None
        cache = getattr(self, "conv_cache", None)
        if cache is not None and index is not None and self.training and not torch.jit.is_tracing():
            conv = cache.features(self.audio_encoder, input_values, attention_mask, index)
        with self._grad_ctx():
            states, frame_mask = encode_audio_states(self.audio_encoder, input_values, attention_mask,
                                                     all_states=self.audio_layer != "last", conv_features=conv)
        if self.audio_layer == "weighted":
            weights = torch.softmax(self.audio_layer_weights.float(), dim=0)
            hidden = sum(w * h.float() for w, h in zip(weights, states, strict=True))
        else:
            hidden = select_layer(states, self.audio_layer)
        if self.cfg.hf.audio_pooling == "asp":
            return self.audio_pool(hidden.float(), frame_mask)
        return pool_audio(hidden.float(), frame_mask, self.cfg.hf.audio_pooling)

    def text_vector(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled text vector [B, text_dim] (before the projection)."""
        with self._grad_ctx():
            hidden = encode_text(self.text_encoder, input_ids, attention_mask)
        return pool_text(hidden.float(), attention_mask, self.cfg.hf.text_pooling)

    _INPUTS = {"audio": ("input_values", "audio_attention_mask"), "text": ("input_ids", "text_attention_mask")}

    def _modality_token(self, modality: str, batch: dict, mask: Tensor) -> Tensor:
        """The modality's token [B, hidden]: encoded, pooled and projected (zeros in, when no row has it)."""
        if modality == "audio":
            vector_fn, dim, proj = self.audio_vector, self.audio_dim, self.audio_proj
        else:
            vector_fn, dim, proj = self.text_vector, self.text_dim, self.text_proj
        if torch.jit.is_tracing() or bool(mask.any()):  # a traced graph (export) always encodes
            keys = self._INPUTS[modality]
            missing = [k for k in keys if k not in batch]
            if missing:
                raise ValueError(f"mode {self.mode}: the batch has no {', '.join(missing)}")
            extra = {"index": batch.get("index")} if modality == "audio" else {}
            vec = vector_fn(batch[keys[0]], batch[keys[1]], **extra)
        else:  # no row of the batch has this modality: nothing to encode
            vec = torch.zeros(mask.shape[0], dim, device=mask.device, dtype=self.head.weight.dtype)
        return proj(vec)

    def forward(self, batch: dict) -> Tensor:
        ref = next(batch[k] for k in ("audio_mask", "text_mask", "label", "input_values", "input_ids") if k in batch)
        tokens, present = [], []
        for modality in self.modalities:
            mask = batch.get(f"{modality}_mask")
            if mask is None:
                mask = torch.ones(ref.shape[0], dtype=torch.bool, device=ref.device)
            mask = mask.to(ref.device).bool()
            tokens.append(self._modality_token(modality, batch, mask))
            present.append(mask)
        cls = self.fusion(torch.stack(tokens, dim=1), torch.stack(present, dim=1))
        return self.head(cls)
