"""Heads over pretrained speech encoders (frame-level audio track; DESIGN.md, "Models").

`SSLBiLSTMASP`: HuBERT / WavLM / wav2vec2 + BiLSTM + attentive statistics pooling.

    batch["audio"] [B, T] 16 kHz + batch["audio_lengths"] [B]
    -> per-clip zero-mean unit-variance over the clip's own samples (when the feature extractor normalises)
    -> AutoModel encoder (`encode_audio_states`: padding-safe also for GroupNorm conv stems), frozen or
       fine-tuned
    -> learned softmax-weighted sum of all hidden states (or one layer: "last" / an index)
    -> BiLSTM over the real frames (packed) -> AttentiveStatsPool (masked) -> MLP head -> logits

`WhisperPrompt`: the frozen encoder of a Whisper checkpoint with deep prompt tuning.

    -> Whisper log-mel in torch (the checkpoint's WhisperFeatureExtractor settings and filterbank: each clip
       cut / zero-padded to the encoder's input duration, 30 s for real checkpoints)
    -> conv stem + positions (frozen)
    -> for every encoder layer l: [P_l ; h] -> layer l -> drop the P prompt outputs
       (P_l: n_prompts learned vectors)
    -> learned softmax-weighted sum of the layer states (the last one after the encoder's final LayerNorm)
    -> masked mean over the clip's real frames (its waveform length, not the 30 s pad) -> MLP head -> logits

Only the prompts, the layer weights and the head of `WhisperPrompt` train; the encoder stays in eval mode (no
dropout) and its parameters never require grad. The attention is not masked: Whisper is trained on 30 s inputs
padded with silence and attends to the padding by design; since every clip is padded alone to the same
duration, a clip's output does not depend on its batch. The pooling uses the real frames only.

Errors in the user's choices (a prompt count <= 0, a checkpoint that is not a Whisper or lacks encoder
weights, an unknown freeze mode or layer) are one-line `mer.errors.UserError`s raised at construction.

Parameter-name prefixes (for learning-rate groups): `encoder.` (the pretrained encoder), `layer_weights`,
`prompts` (WhisperPrompt), `lstm.`, `pool.`, `head.`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mer.errors import UserError
from mer.features.hf_encoders import (
    check_layer,
    hub_offline,
    load_encoder,
    min_audio_samples,
    quiet_transformers,
    select_layer,
)
from mer.models.frame_blocks import read_waveform
from mer.models.frontend import lengths_to_mask
from mer.models.hf_at import FREEZE_CHOICES, encode_audio_states
from mer.models.pooling import AttentiveStatsPool, masked_mean


class MLPHead(nn.Module):
    """Dropout -> Linear(in, hidden) -> GELU -> Dropout -> Linear(hidden, n_classes); hidden=0: one Linear."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        if hidden > 0:
            self.net = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(in_dim, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, n_classes),
            )
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def normalize_waveform(wave: Tensor, lengths: Tensor, eps: float = 1e-7) -> Tensor:
    """Each clip to zero mean and unit variance over its own samples (Wav2Vec2FeatureExtractor's
    `zero_mean_unit_var_norm`), padding set to 0."""
    mask = lengths_to_mask(lengths, wave.shape[1])
    x = torch.where(mask, wave.float(), torch.zeros((), device=wave.device))
    count = lengths.clamp_min(1).to(x.dtype).unsqueeze(1)
    mean = x.sum(1, keepdim=True) / count
    var = (
        torch.where(mask, x - mean, torch.zeros((), device=wave.device)).square().sum(1, keepdim=True) / count
    )
    return torch.where(mask, (x - mean) / torch.sqrt(var + eps), torch.zeros((), device=wave.device))


def _layer_choice(layer: str | int) -> str | int:
    if isinstance(layer, str) and layer.strip().lstrip("-").isdigit():
        return int(layer)
    return layer


class SSLBiLSTMASP(nn.Module):
    """SSL speech encoder -> weighted layers -> BiLSTM -> attentive statistics pooling -> MLP head.

    SSLBiLSTMASP(n_classes, encoder, feature_extractor=None, freeze="all", layer="weighted", lstm_hidden=256,
                 lstm_layers=1, attention_dim=128, head_hidden=256, dropout=0.2, normalize=None)

    `encoder`: a loaded wav2vec2-family model, or its hub name / save_pretrained folder (loaded with its
    feature extractor). `freeze`: "all" (encoder frozen, eval mode, run without grad), "feature_encoder" (only
    its conv stem frozen) or "none". `layer`: "weighted" (softmax weights over every hidden state), "last",
    "mean" or an index. `normalize`: per-clip waveform normalisation; None = as the feature extractor does
    (`do_normalize`, True when there is no feature extractor).
    """

    needs_feature_dims = False

    def __init__(
        self,
        n_classes: int,
        encoder: nn.Module | str | Path,
        feature_extractor: object | None = None,
        freeze: str = "all",
        layer: str | int = "weighted",
        lstm_hidden: int = 256,
        lstm_layers: int = 1,
        attention_dim: int = 128,
        head_hidden: int = 256,
        dropout: float = 0.2,
        normalize: bool | None = None,
    ) -> None:
        super().__init__()
        if freeze not in FREEZE_CHOICES:
            raise UserError(f"ssl_bilstm_asp: freeze={freeze!r} is not one of {', '.join(FREEZE_CHOICES)}")
        if lstm_hidden <= 0 or lstm_layers <= 0:
            raise UserError(
                f"ssl_bilstm_asp: lstm_hidden and lstm_layers must be >= 1, got {lstm_hidden}, {lstm_layers}"
            )
        if isinstance(encoder, (str, Path)):
            encoder, feature_extractor = load_encoder(encoder, "audio")
        self.encoder = encoder
        self.feature_extractor = feature_extractor
        self.freeze, self.n_classes = freeze, n_classes
        self.layer = _layer_choice(layer)
        if normalize is None:
            normalize = bool(getattr(feature_extractor, "do_normalize", True))
        self.normalize = normalize
        cfg = encoder.config
        if self.layer == "weighted":
            self.layer_weights = nn.Parameter(torch.zeros(int(cfg.num_hidden_layers) + 1))
        else:
            self.layer_weights = None
            check_layer(encoder, self.layer)
        if self.layer != "last" and getattr(cfg, "layerdrop", 0.0):
            cfg.layerdrop = 0.0  # a dropped layer records no hidden state: the layer indices would shift
        hidden = int(cfg.hidden_size)
        self.lstm = nn.LSTM(
            hidden,
            lstm_hidden,
            num_layers=lstm_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if lstm_layers > 1 else 0.0,
        )
        self.pool = AttentiveStatsPool(2 * lstm_hidden, attention_dim)
        self.head = MLPHead(self.pool.out_dim, n_classes, head_hidden, dropout)
        if freeze == "all":
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        elif freeze == "feature_encoder":
            if hasattr(self.encoder, "freeze_feature_encoder"):
                self.encoder.freeze_feature_encoder()
            else:
                self.encoder.feature_extractor.requires_grad_(False)

    @property
    def min_audio_samples(self) -> int:
        """The shortest clip the encoder can take (its receptive field)."""
        return min_audio_samples(self.encoder)

    def train(self, mode: bool = True) -> SSLBiLSTMASP:
        """As nn.Module.train; a frozen encoder (freeze="all") stays in eval mode."""
        super().train(mode)
        if self.freeze == "all":
            self.encoder.eval()
        return self

    def frames(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder frames [B, T', H] (the chosen / weighted layer, float32) and the frame mask [B, T']."""
        lengths = lengths.to(device=wave.device, dtype=torch.long).clamp(0, wave.shape[1])
        x = (
            normalize_waveform(wave, lengths)
            if self.normalize
            else torch.where(
                lengths_to_mask(lengths, wave.shape[1]), wave.float(), torch.zeros((), device=wave.device)
            )
        )
        attention_mask = lengths_to_mask(lengths, wave.shape[1]).long()
        dtype = next(self.encoder.parameters()).dtype
        ctx = torch.no_grad() if self.freeze == "all" else contextlib.nullcontext()
        with ctx:
            states, frame_mask = encode_audio_states(
                self.encoder, x.to(dtype), attention_mask, all_states=self.layer != "last"
            )
        if self.layer_weights is not None:
            weights = torch.softmax(self.layer_weights.float(), dim=0)
            hidden = sum(w * h.float() for w, h in zip(weights, states, strict=True))
        else:
            hidden = select_layer(states, self.layer).float()
        return hidden, frame_mask

    def forward(self, batch: dict) -> Tensor:
        wave, lengths = read_waveform(batch)
        hidden, frame_mask = self.frames(wave, lengths)
        n = frame_mask.sum(1).clamp_min(1)
        packed = pack_padded_sequence(hidden, n.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=hidden.shape[1])
        return self.head(self.pool(out, frame_mask))


# -- Whisper -------------------------------------------------------------------------------------------------
def _whisper_encoder_of(model: nn.Module, name: str) -> nn.Module:
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if isinstance(model, WhisperEncoder):
        return model
    get = getattr(model, "get_encoder", None)
    enc = get() if callable(get) else getattr(model, "encoder", None)
    if not isinstance(enc, WhisperEncoder):
        raise UserError(
            f"{name}: a {type(model).__name__} has no Whisper encoder; pass a Whisper checkpoint "
            "(WhisperModel / WhisperForConditionalGeneration)"
        )
    return enc


def load_whisper_encoder(name_or_dir: str | Path) -> tuple[nn.Module, object | None]:
    """The encoder of a Whisper checkpoint (hub name or save_pretrained folder) and its feature extractor
    (None when the folder has none). UserError, one line, when it is not a Whisper, has no encoder weights, or
    cannot be found / downloaded."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    name = str(name_or_dir)
    local = Path(name).expanduser()
    if not local.is_dir() and (local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise UserError(
            f"{name}: Whisper checkpoint folder not found (expected a save_pretrained folder or a hub name)"
        )
    src = str(local.resolve()) if local.is_dir() else name
    kw = {} if local.is_dir() else {"local_files_only": True}

    def attempt(**extra):
        cfg = AutoConfig.from_pretrained(src, **extra)
        if getattr(cfg, "model_type", None) != "whisper":
            raise UserError(
                f"{name}: a {getattr(cfg, 'model_type', '?')!r} checkpoint has no Whisper encoder; "
                "pass a Whisper checkpoint"
            )
        if int(getattr(cfg, "encoder_layers", 0) or 0) <= 0:
            raise UserError(f"{name}: its config has no encoder layers (encoder_layers={cfg.encoder_layers})")
        model, info = AutoModel.from_pretrained(src, output_loading_info=True, **extra)
        missing = sorted(
            k for k in info.get("missing_keys", ()) if k.split(".", 1)[0] in ("encoder", "model")
        )
        missing = [k for k in missing if ".encoder." in f".{k}" and "decoder" not in k]
        if missing:
            raise UserError(
                f"{name}: the checkpoint has no encoder weights ({len(missing)} missing, e.g. "
                f"{missing[0]}); pass a Whisper checkpoint with its encoder"
            )
        try:
            fe = AutoFeatureExtractor.from_pretrained(src, **extra)
        except (OSError, ValueError):
            fe = None
        return model, fe

    with quiet_transformers():
        try:
            model, fe = attempt(**kw)
        except (OSError, ValueError) as exc:
            if local.is_dir():
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise UserError(
                    f"{local}: cannot load a Whisper checkpoint from this folder ({first})"
                ) from None
            if hub_offline():
                raise UserError(
                    f"{name}: not a local folder and not in the Hugging Face cache, and downloads are "
                    "off (HF_HUB_OFFLINE); pass a save_pretrained folder"
                ) from None
            try:
                model, fe = attempt()
            except (OSError, ValueError) as exc2:
                first = (str(exc2).strip().splitlines() or [type(exc2).__name__])[0]
                raise UserError(f"{name}: cannot load this Whisper checkpoint ({first})") from None
    return _whisper_encoder_of(model, name), fe


class WhisperLogMel(nn.Module):
    """Whisper's log-mel in torch, batched: clips cut / zero-padded to `n_samples`, STFT (Hann, centred,
    reflect), power, the slaney mel filterbank, log10 (floor 1e-10), max(x, clip max - 8), (x + 4) / 4 -> [B,
    n_mels, frames]. Equal to WhisperFeatureExtractor's output (tested); each clip depends on its own samples
    only."""

    def __init__(self, mel_filters, n_fft: int = 400, hop: int = 160, n_samples: int = 480000) -> None:
        super().__init__()
        filters = torch.as_tensor(mel_filters, dtype=torch.float32)  # [n_freq, n_mels]
        self.register_buffer("mel_filters", filters.T.contiguous(), persistent=False)  # [n_mels, n_freq]
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.n_fft, self.hop, self.n_samples = n_fft, hop, n_samples

    @property
    def n_frames(self) -> int:
        return self.n_samples // self.hop

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """Mel frames holding a clip's own samples: 1 + min(L, n_samples) // hop, at most n_frames."""
        return (1 + torch.div(lengths.clamp(0, self.n_samples), self.hop, rounding_mode="floor")).clamp_max(
            self.n_frames
        )

    def forward(self, wave: Tensor, lengths: Tensor) -> Tensor:
        with torch.autocast(device_type=wave.device.type, enabled=False):
            x = wave.float()[:, : self.n_samples]
            x = torch.where(lengths_to_mask(lengths, x.shape[1]), x, torch.zeros((), device=x.device))
            x = nn.functional.pad(x, (0, self.n_samples - x.shape[1]))
            stft = torch.stft(
                x,
                self.n_fft,
                self.hop,
                window=self.window,
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )
            power = stft[..., :-1].abs().square()
            log_spec = torch.clamp(self.mel_filters @ power, min=1e-10).log10()
            peak = log_spec.amax(dim=(1, 2), keepdim=True)
            log_spec = torch.maximum(log_spec, peak - 8.0)
            return (log_spec + 4.0) / 4.0


class WhisperPrompt(nn.Module):
    """Frozen Whisper encoder + deep prompt tuning + weighted layers + masked mean + MLP head.

    WhisperPrompt(n_classes, encoder, feature_extractor=None, n_prompts=8, head_hidden=256, dropout=0.1,
                  prompt_init_std=0.02)

    `encoder`: a Whisper model (WhisperModel, WhisperForConditionalGeneration or a WhisperEncoder) or a hub
    name / save_pretrained folder of one. `feature_extractor`: its WhisperFeatureExtractor (the front end's
    settings and filterbank); None: the folder's, else one made for the encoder's input length.
    """

    needs_feature_dims = False

    def __init__(
        self,
        n_classes: int,
        encoder: nn.Module | str | Path,
        feature_extractor: object | None = None,
        n_prompts: int = 8,
        head_hidden: int = 256,
        dropout: float = 0.1,
        prompt_init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts <= 0:
            raise UserError(f"whisper_prompt: n_prompts must be an integer >= 1, got {n_prompts!r}")
        if isinstance(encoder, (str, Path)):
            encoder, loaded_fe = load_whisper_encoder(encoder)
            feature_extractor = feature_extractor if feature_extractor is not None else loaded_fe
        else:
            encoder = _whisper_encoder_of(encoder, type(encoder).__name__)
        self.encoder = encoder
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        cfg = encoder.config
        self.n_prompts, self.n_classes = n_prompts, n_classes
        self.n_layers, d_model = len(encoder.layers), int(cfg.d_model)
        self.n_positions = int(encoder.embed_positions.num_embeddings)
        mel_frames = self.n_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]
        if feature_extractor is None:
            from transformers import WhisperFeatureExtractor

            hop = 160
            if (mel_frames * hop) % 16000:
                raise UserError(
                    f"whisper_prompt: the encoder reads {mel_frames} frames, not a whole number of "
                    "seconds at hop 160; pass its feature extractor"
                )
            feature_extractor = WhisperFeatureExtractor(
                feature_size=int(cfg.num_mel_bins), chunk_length=mel_frames * hop // 16000
            )
        fe = feature_extractor
        if int(fe.nb_max_frames) != mel_frames or int(fe.feature_size) != int(cfg.num_mel_bins):
            raise UserError(
                f"whisper_prompt: the feature extractor makes {fe.feature_size} x {fe.nb_max_frames} "
                f"log-mel frames, the encoder reads {cfg.num_mel_bins} x {mel_frames}"
            )
        self.sampling_rate = int(fe.sampling_rate)
        self.logmel = WhisperLogMel(fe.mel_filters, int(fe.n_fft), int(fe.hop_length), int(fe.n_samples))
        dtype = encoder.conv1.weight.dtype
        self.prompts = nn.Parameter(
            torch.randn(self.n_layers, n_prompts, d_model, dtype=dtype) * prompt_init_std
        )
        self.layer_weights = nn.Parameter(torch.zeros(self.n_layers + 1))
        self.head = MLPHead(d_model, n_classes, head_hidden, dropout)

    def train(self, mode: bool = True) -> WhisperPrompt:
        """As nn.Module.train; the encoder always stays in eval mode (it is frozen)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def encoder_frame_lengths(self, lengths: Tensor) -> Tensor:
        """Encoder frames holding a clip's real audio: ceil(mel frames / 2) (conv2 has stride 2), >= 1."""
        mel = self.logmel.frame_lengths(lengths.to(torch.long))
        stride = int(self.encoder.conv2.stride[0]) * int(self.encoder.conv1.stride[0])
        return torch.div(mel + stride - 1, stride, rounding_mode="floor").clamp(1, self.n_positions)

    def states(self, wave: Tensor, lengths: Tensor) -> list[Tensor]:
        """The n_layers + 1 hidden states [B, n_positions, d_model] with the prompts in every layer (index 0:
        the conv stem + positions; the last: after the final LayerNorm)."""
        enc = self.encoder
        feats = self.logmel(wave, lengths).to(enc.conv1.weight.dtype)
        with torch.no_grad():  # nothing before the first layer trains
            h = nn.functional.gelu(enc.conv1(feats))
            h = nn.functional.gelu(enc.conv2(h)).permute(0, 2, 1)
            h = h + enc.embed_positions.weight[: h.shape[1]]
        states = [h]
        b, p = h.shape[0], self.n_prompts
        for i, layer in enumerate(enc.layers):
            x = torch.cat([self.prompts[i].unsqueeze(0).expand(b, -1, -1), h], dim=1)
            h = layer(x, None)[:, p:]
            states.append(h)
        states[-1] = enc.layer_norm(states[-1])
        return states

    def forward(self, batch: dict) -> Tensor:
        wave, lengths = read_waveform(batch)
        lengths = lengths.to(device=wave.device, dtype=torch.long).clamp(0, wave.shape[1])
        states = self.states(wave, lengths)
        weights = torch.softmax(self.layer_weights.float(), dim=0)
        hidden = sum(w * s.float() for w, s in zip(weights, states, strict=True))
        mask = lengths_to_mask(self.encoder_frame_lengths(lengths), hidden.shape[1])
        return self.head(masked_mean(hidden, mask, dim=1))
