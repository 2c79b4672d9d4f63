"""Training-only audio augmentation of the frame-level track, run inside the loop's step (`Trainer(augment_fn=...)`).

`FrameAugmenter.from_config(train.augment)` turns the config's audio keys into a `mer.models.audio_augment.
AudioAugment` (None when every one is off). As the loop's `augment_fn(batch, generator)` it applies, to each
training batch's raw waveforms (`input_values` + `audio_attention_mask`), crop -> speed -> shift -> gain -> noise,
then mixup (waveforms mixed, `label_b` + `mix_lambda` added: the loop mixes the two losses). `install(model)` sets
a mel model's `spec_augment` hook (VTLP, then SpecAugment, on its log-mel; training mode only). Every draw comes from the
generator the loop passes — its `aug_gen`, saved in `last.pt` — in a fixed order, so a resumed run repeats the
uninterrupted one exactly. Validation and evaluation batches never pass through here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mer.data.audio import ClipError, decode_audio
from mer.errors import UserError
from mer.models.audio_augment import AudioAugment
from mer.models.frontend import lengths_to_mask
from mer.schema import AugmentConfig

NOISE_SUFFIXES = (".wav", ".flac", ".ogg")
MAX_NOISE_CLIPS = 2000


def _range(key: str, value: list[float] | None, lo_ok=None) -> tuple[float, float] | None:
    if value is None:
        return None
    if len(value) != 2 or value[0] > value[1]:
        raise UserError(f"config key 'train.augment.{key}': expected [lo, hi] with lo <= hi, got {value}")
    if lo_ok is not None and not lo_ok(value[0]):
        raise UserError(f"config key 'train.augment.{key}': {value} is out of range")
    return float(value[0]), float(value[1])


def _prob(key: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"config key 'train.augment.{key}': expected a probability in [0, 1], got {value}")
    return float(value)


def load_noises(folder: str | Path, sample_rate: int = 16000) -> list[Tensor]:
    """The noise clips of a folder (WAV / FLAC / OGG, searched recursively, sorted by path), mono at
    `sample_rate`; a missing folder, one without a usable clip, or a clip that cannot be decoded is a one-line
    UserError naming the key and the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"config key 'train.augment.noise_dir': {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in NOISE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"config key 'train.augment.noise_dir': {folder} holds no .wav / .flac / .ogg file")
    if len(files) > MAX_NOISE_CLIPS:
        raise UserError(f"config key 'train.augment.noise_dir': {folder} holds {len(files)} clips (at most "
                        f"{MAX_NOISE_CLIPS} are held in memory); point it at a smaller folder")
    noises = []
    for path in files:
        try:
            y, _ = decode_audio(path, sample_rate)
        except ClipError as exc:
            raise UserError(f"config key 'train.augment.noise_dir': {exc.detail}") from None
        if not np.any(y):
            raise UserError(f"config key 'train.augment.noise_dir': {path} is silent")
        noises.append(torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)))
    return noises


def augment_settings(cfg: AugmentConfig, sample_rate: int = 16000, load_noise: bool = True) -> AudioAugment:
    """The config's audio augmentation as an `AudioAugment`; a bad value is a one-line UserError naming its key."""
    for key in ("freq_masks", "freq_width", "time_masks", "time_width"):
        if getattr(cfg, key) < 0:
            raise UserError(f"config key 'train.augment.{key}': expected >= 0, got {getattr(cfg, key)}")
    if cfg.crop_s is not None and not cfg.crop_s > 0:
        raise UserError(f"config key 'train.augment.crop_s': expected a positive number of seconds, got {cfg.crop_s}")
    if cfg.shift_s is not None and cfg.shift_s < 0:
        raise UserError(f"config key 'train.augment.shift_s': expected >= 0 seconds, got {cfg.shift_s}")
    if cfg.speed_factors is not None and (not cfg.speed_factors or any(f <= 0 for f in cfg.speed_factors)):
        raise UserError(f"config key 'train.augment.speed_factors': expected a non-empty list of factors > 0, got "
                        f"{cfg.speed_factors}")
    if cfg.mixup_alpha is not None and not cfg.mixup_alpha > 0:
        raise UserError(f"config key 'train.augment.mixup_alpha': expected > 0 (or null: off), got {cfg.mixup_alpha}")
    snr = _range("noise_snr_db", cfg.noise_snr_db)
    if cfg.noise_dir is not None and snr is None:
        raise UserError("config key 'train.augment.noise_dir': set train.augment.noise_snr_db ([lo, hi] dB) too")
    noises = load_noises(cfg.noise_dir, sample_rate) if cfg.noise_dir and load_noise else None
    return AudioAugment(
        sample_rate=sample_rate, crop_s=cfg.crop_s, shift_s=cfg.shift_s,
        speed_factors=tuple(cfg.speed_factors) if cfg.speed_factors else None, speed_p=_prob("speed_p", cfg.speed_p),
        gain_db=_range("gain_db", cfg.gain_db), gain_p=_prob("gain_p", cfg.gain_p),
        noise_snr_db=snr, noise_p=_prob("noise_p", cfg.noise_p), noises=noises,
        freq_masks=cfg.freq_masks, freq_width=cfg.freq_width, time_masks=cfg.time_masks, time_width=cfg.time_width,
        mixup_alpha=cfg.mixup_alpha, mixup_p=_prob("mixup_p", cfg.mixup_p),
        vtlp_alpha=_range("vtlp_alpha", cfg.vtlp_alpha, lo_ok=lambda v: v > 0))


class FrameAugmenter:
    """The loop's `augment_fn` for waveform batches (see the module doc)."""

    def __init__(self, augment: AudioAugment) -> None:
        self.augment = augment
        self.gen: torch.Generator | None = None  # the loop's generator, as passed with the current batch
        self.mel_scale: tuple[float, float, int] | None = None  # the model's front end's (f_min, f_max, rate)

    @classmethod
    def from_config(cls, cfg: AugmentConfig, sample_rate: int = 16000) -> FrameAugmenter | None:
        aug = augment_settings(cfg, sample_rate)
        return cls(aug) if (aug.wave_enabled or aug.spec_enabled or aug.mixup_alpha is not None) else None

    def __call__(self, batch: dict, gen: torch.Generator) -> dict:
        self.gen = gen
        aug = self.augment
        if not (aug.wave_enabled or aug.mixup_alpha is not None):
            return batch
        out = dict(batch)
        wave = out["input_values"]
        mask = out.get("audio_attention_mask")
        lengths = (torch.full((wave.shape[0],), wave.shape[1], dtype=torch.long, device=wave.device) if mask is None
                   else mask.to(torch.long).sum(-1))
        if aug.wave_enabled:
            wave, lengths = aug.apply_wave(wave, lengths, gen)
        mixed = aug.apply_mixup(wave, out["label"], gen, lengths)
        if mixed is not None:
            wave, lengths = mixed.x, mixed.lengths
            out["label_b"], out["mix_lambda"] = mixed.labels_b, float(mixed.lam)
        out["input_values"] = wave
        out["audio_attention_mask"] = lengths_to_mask(lengths, wave.shape[1]).to(torch.long)
        return out

    def spec_hook(self):
        """SpecAugment with the current batch's generator (a plain function: copies of the model share it)."""
        augmenter, mel_scale = self, self.mel_scale

        def spec_augment(feats: Tensor, frame_lengths: Tensor) -> Tensor:
            if augmenter.gen is None:
                raise RuntimeError("spec_augment ran before the loop passed its generator to the augmenter")
            # the model hands over its front end's fresh output: written in place, not copied
            return augmenter.augment.apply_spec(feats, frame_lengths, augmenter.gen, inplace=True,
                                                mel_scale=mel_scale)

        return spec_augment

    def install(self, model: nn.Module) -> bool:
        """Set `model.spec_augment` (mel models) when VTLP or SpecAugment is on; whether it was set."""
        if not self.augment.spec_enabled:
            return False
        if not hasattr(model, "spec_augment"):
            keys = ("'train.augment.freq_masks' / 'time_masks' / 'vtlp_alpha': VTLP and SpecAugment act"
                    if self.augment.vtlp_alpha is not None else "'train.augment.freq_masks' / 'time_masks': "
                    "SpecAugment acts")
            raise UserError(f"config keys {keys} on the log-mel of the mel models; {type(model).__name__} has none "
                            "(set them to 0 / null)")
        fe = model.frontend
        self.mel_scale = (float(fe.f_min), float(fe.f_max), int(fe.sample_rate))
        model.spec_augment = self.spec_hook()
        return True

    def describe(self) -> str:
        a, parts = self.augment, []
        if a.crop_s is not None:
            parts.append(f"crop {a.crop_s:g}s")
        if a.speed_factors:
            parts.append(f"speed {list(a.speed_factors)} p={a.speed_p:g}")
        if a.shift_s is not None:
            parts.append(f"shift ±{a.shift_s:g}s")
        if a.gain_db is not None:
            parts.append(f"gain {list(a.gain_db)} dB p={a.gain_p:g}")
        if a.noise_snr_db is not None:
            src = f"{len(a.noises)} noise clips" if a.noises else "white"
            parts.append(f"noise {list(a.noise_snr_db)} dB SNR ({src}) p={a.noise_p:g}")
        if a.vtlp_alpha is not None:
            parts.append(f"VTLP {list(a.vtlp_alpha)}")
        if a.masks_enabled:
            parts.append(f"SpecAugment freq {a.freq_masks}x{a.freq_width} time {a.time_masks}x{a.time_width}")
        if a.mixup_alpha is not None:
            parts.append(f"mixup alpha={a.mixup_alpha:g} p={a.mixup_p:g}")
        return ", ".join(parts) or "none"


class EncoderWaveAugmenter:
    """The end-to-end track's `augment_fn` (`hf_at`): `FrameAugmenter`'s waveform augmentation and mixup on the
    collated `input_values`, then what `HFCollator` does to raw clips, so that the encoder sees what it would see
    had the clips been augmented before the feature extractor: a clip shorter than the encoder's receptive field
    (`min_samples`) zero-padded up to it, and, when the extractor normalises (`do_normalize`), each clip normalised
    again over its own samples ((x - mean) / sqrt(var + 1e-7), the extractor's expression; a gain alone then changes
    nothing, as with the extractor). Draws come from the loop's generator only (exact resume holds)."""

    def __init__(self, inner: FrameAugmenter, min_samples: int = 0, normalize: bool = True,
                 padding_value: float = 0.0) -> None:
        self.inner, self.min_samples = inner, int(min_samples)
        self.normalize, self.padding_value = bool(normalize), float(padding_value)

    def describe(self) -> str:
        return self.inner.describe() + (", each clip normalised again" if self.normalize else "")

    def __call__(self, batch: dict, gen: torch.Generator) -> dict:
        out = self.inner(batch, gen)
        if out is batch or "input_values" not in out:
            return out
        wave = out["input_values"]
        lengths = out["audio_attention_mask"].to(torch.long).sum(-1).clamp_min(self.min_samples)
        if wave.shape[1] < int(lengths.max()):
            wave = nn.functional.pad(wave, (0, int(lengths.max()) - wave.shape[1]))
        mask = lengths_to_mask(lengths, wave.shape[1])
        x = torch.where(mask, wave.float(), torch.zeros((), device=wave.device))
        if self.normalize:
            n = lengths.clamp_min(1).to(torch.float32).unsqueeze(1)
            mean = x.sum(1, keepdim=True) / n
            var = torch.where(mask, x - mean, torch.zeros((), device=wave.device)).square().sum(1, keepdim=True) / n
            x = (x - mean) / torch.sqrt(var + 1e-7)
        out["input_values"] = torch.where(mask, x, torch.full((), self.padding_value, device=wave.device)).to(wave.dtype)
        out["audio_attention_mask"] = mask.to(torch.long)
        return out
