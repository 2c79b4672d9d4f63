"""The frame-level audio models by name (`model.name` in config), built from `model.frame` (DESIGN.md, "Models").

| name | class | options |
| --- | --- | --- |
| `cnn_small` | `SmallCNN` | `model.frame.cnn` (channels, pooling: mean / mean_std / asp, freq_pooling), `model.dropout` |
| `resnet18_mel` | `ResNet18Mel` | `model.frame.resnet` (base_width, pooling, freq_pooling, zero_init_residual), `model.dropout` |
| `ecapa_tdnn` | `ECAPATDNN` | `model.frame.ecapa` (channels, kernels, dilations, res2net_scale, ...), `model.dropout` |
| `ssl_bilstm_asp` | `SSLBiLSTMASP` | `model.frame.ssl` (encoder, freeze, layer, lstm_hidden, ...), `model.dropout` |
| `whisper_prompt` | `WhisperPrompt` | `model.frame.whisper` (encoder, n_prompts, head_hidden), `model.dropout` |

The three mel models own a `LogMelFrontend` made from `model.frame`'s front-end keys (n_mels, n_fft, hop,
win_length, f_min, f_max, log_offset, normalize — null: the model's default —, pad_mode). Each class is constructed
as `cls(cfg, n_classes, encoders=None)` (the registry's convention); the pretrained models take their encoder from
`encoders` (an `HFEncoders`: `audio` + `feature_extractor`) or, when None, load it from the config's hub name or
folder. `save_frame_encoder` / `frame_encoder_from_files` write and rebuild an encoder's architecture (config and
feature extractor, no weights: the checkpoint holds them), so a run evaluates offline.

`min_clip_samples` (every class): the shortest clip the model takes — the front end's window, or the SSL
encoder's receptive field.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mer.errors import UserError
from mer.features.hf_encoders import load_encoder, quiet_transformers
from mer.io import atomic_folder
from mer.models.cnn_mel import ResNet18Mel, SmallCNN
from mer.models.ecapa import ECAPATDNN
from mer.models.frontend import LogMelFrontend
from mer.models.hf_at import HFEncoders
from mer.models.registry import register
from mer.models.ssl_heads import SSLBiLSTMASP, WhisperPrompt, load_whisper_encoder
from mer.schema import FrameConfig, ModelConfig

FRAME_MODELS = ("cnn_small", "resnet18_mel", "ecapa_tdnn", "ssl_bilstm_asp", "whisper_prompt")
MEL_MODELS = ("cnn_small", "resnet18_mel", "ecapa_tdnn")
PRETRAINED = {"ssl_bilstm_asp": "ssl", "whisper_prompt": "whisper"}  # model -> its section of model.frame


def make_frontend(frame: FrameConfig, default_normalize: str) -> LogMelFrontend:
    """The log-mel front end of `model.frame`; a bad setting is a one-line UserError naming model.frame."""
    try:
        return LogMelFrontend(n_mels=frame.n_mels, n_fft=frame.n_fft, win_length=frame.win_length, hop=frame.hop,
                              f_min=frame.f_min, f_max=frame.f_max, log_offset=frame.log_offset,
                              normalize=frame.normalize or default_normalize, pad_mode=frame.pad_mode)
    except ValueError as exc:
        raise UserError(f"config key 'model.frame': {exc}") from None


def _built(name: str, fn):
    try:
        return fn()
    except ValueError as exc:
        raise UserError(f"config key 'model.frame' ({name}): {exc}") from None


class _MelAdapter:
    frame_track = True
    needs_feature_dims = False

    @property
    def min_clip_samples(self) -> int:
        return int(self.frontend.n_fft)


@register("cnn_small")
class CNNSmallModel(_MelAdapter, SmallCNN):
    """`cnn_small`: SmallCNN over model.frame's log-mel."""

    def __init__(self, cfg: ModelConfig, n_classes: int, encoders: HFEncoders | None = None) -> None:
        f = cfg.frame
        fe = make_frontend(f, "mean_var")
        _built("cnn", lambda: SmallCNN.__init__(self, n_classes, channels=list(f.cnn.channels), dropout=cfg.dropout,
                                                pooling=f.cnn.pooling, frontend=fe,
                                                freq_pooling=f.cnn.freq_pooling))


@register("resnet18_mel")
class ResNet18MelModel(_MelAdapter, ResNet18Mel):
    """`resnet18_mel`: ResNet-18 over model.frame's log-mel."""

    def __init__(self, cfg: ModelConfig, n_classes: int, encoders: HFEncoders | None = None) -> None:
        f = cfg.frame
        fe = make_frontend(f, "mean_var")
        _built("resnet", lambda: ResNet18Mel.__init__(self, n_classes, base_width=f.resnet.base_width,
                                                      dropout=cfg.dropout, pooling=f.resnet.pooling,
                                                      zero_init_residual=f.resnet.zero_init_residual, frontend=fe,
                                                      freq_pooling=f.resnet.freq_pooling))


@register("ecapa_tdnn")
class ECAPATDNNModel(_MelAdapter, ECAPATDNN):
    """`ecapa_tdnn`: ECAPA-TDNN over model.frame's log-mel."""

    def __init__(self, cfg: ModelConfig, n_classes: int, encoders: HFEncoders | None = None) -> None:
        f, e = cfg.frame, cfg.frame.ecapa
        fe = make_frontend(f, "mean")
        _built("ecapa", lambda: ECAPATDNN.__init__(
            self, n_classes, channels=list(e.channels), kernels=list(e.kernels), dilations=list(e.dilations),
            res2net_scale=e.res2net_scale, se_channels=e.se_channels, attention_channels=e.attention_channels,
            embedding_dim=e.embedding_dim, dropout=cfg.dropout, frontend=fe))


def load_frame_encoder(cfg: ModelConfig) -> HFEncoders:
    """The pretrained encoder of `ssl_bilstm_asp` / `whisper_prompt` from the config's hub name or folder."""
    if cfg.name == "whisper_prompt":
        enc, fe = load_whisper_encoder(cfg.frame.whisper.encoder)
        return HFEncoders(audio=enc, feature_extractor=fe)
    enc, fe = load_encoder(cfg.frame.ssl.encoder, "audio")
    return HFEncoders(audio=enc, feature_extractor=fe)


@register("ssl_bilstm_asp")
class SSLBiLSTMASPModel(SSLBiLSTMASP):
    """`ssl_bilstm_asp`: an SSL speech encoder + BiLSTM + attentive statistics pooling + MLP head."""

    frame_track = True

    def __init__(self, cfg: ModelConfig, n_classes: int, encoders: HFEncoders | None = None) -> None:
        s = cfg.frame.ssl
        enc = encoders if encoders is not None else load_frame_encoder(cfg)
        super().__init__(n_classes, enc.audio, enc.feature_extractor, freeze=s.freeze, layer=s.layer,
                         lstm_hidden=s.lstm_hidden, lstm_layers=s.lstm_layers, attention_dim=s.attention_dim,
                         head_hidden=s.head_hidden, dropout=cfg.dropout)

    @property
    def min_clip_samples(self) -> int:
        return int(self.min_audio_samples)


@register("whisper_prompt")
class WhisperPromptModel(WhisperPrompt):
    """`whisper_prompt`: a frozen Whisper encoder with deep prompt tuning + MLP head."""

    frame_track = True

    def __init__(self, cfg: ModelConfig, n_classes: int, encoders: HFEncoders | None = None) -> None:
        w = cfg.frame.whisper
        if isinstance(w.n_prompts, bool) or w.n_prompts <= 0:  # before loading anything
            raise UserError(f"config key 'model.frame.whisper.n_prompts': expected an integer >= 1, got {w.n_prompts}")
        enc = encoders if encoders is not None else load_frame_encoder(cfg)
        super().__init__(n_classes, enc.audio, enc.feature_extractor, n_prompts=w.n_prompts,
                         head_hidden=w.head_hidden, dropout=cfg.dropout)

    @property
    def min_clip_samples(self) -> int:
        return int(self.logmel.n_fft)


def is_frame_model(name: str) -> bool:
    return name in FRAME_MODELS


def save_frame_encoder(enc: HFEncoders, folder: str | Path) -> Path:
    """`folder/audio/`: the encoder's config.json and its feature extractor's files (no weights), written into a
    temp folder and renamed; an existing `folder` is replaced."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        enc.audio.config.save_pretrained(tmp / "audio")
        if enc.feature_extractor is not None:
            enc.feature_extractor.save_pretrained(tmp / "audio")
    return folder


def frame_encoder_from_files(folder: str | Path) -> HFEncoders:
    """The encoder of `save_frame_encoder`'s folder with random weights (load a checkpoint next) and its feature
    extractor (None when none was saved). A Whisper config gives the encoder alone. Never touches the network."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    sub = Path(folder) / "audio"
    if not (sub / "config.json").is_file():
        raise UserError(f"{sub}: no config.json; expected the encoder files train_frame.py writes into "
                        "<run>/encoders/")
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(str(sub))
            if config.model_type == "whisper":
                from transformers.models.whisper.modeling_whisper import WhisperEncoder

                model: nn.Module = WhisperEncoder(config)
            else:
                model = AutoModel.from_config(config)
            fe = None
            if (sub / "preprocessor_config.json").is_file():
                fe = AutoFeatureExtractor.from_pretrained(str(sub))
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{sub}: cannot rebuild the encoder ({str(exc).strip().splitlines()[0]})") from None
    return HFEncoders(audio=model.eval(), feature_extractor=fe)
