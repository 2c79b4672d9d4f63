"""Training-time batch augmentation: Gaussian feature noise and modality dropout (never both modalities)."""

from __future__ import annotations

import torch

from mer.schema import AugmentConfig


def augment_batch(batch: dict, cfg: AugmentConfig, mode: str, generator: torch.Generator) -> dict:
    """Return a new batch dict; the input is not modified.

    Modality dropout: in AT mode, each sample whose two modalities are both present loses one of them (chosen
    at random) with probability `modality_dropout`; its mask becomes False and its features zero. A sample is
    never left with no modality. Feature noise: N(0, feature_noise^2) added to the float feature tensors.
    """
    out = dict(batch)
    if cfg.feature_noise > 0:
        for key in ("audio", "text"):
            x = out.get(key)
            if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() == 2 and x.shape[1] > 0:
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
                out[key] = x + cfg.feature_noise * noise.to(x.device)
    if cfg.modality_dropout > 0 and mode == "AT" and "audio_mask" in out and "text_mask" in out:
        a_mask, t_mask = out["audio_mask"], out["text_mask"]
        n = a_mask.shape[0]
        drop = (torch.rand(n, generator=generator) < cfg.modality_dropout).to(a_mask.device)
        drop_audio = (torch.rand(n, generator=generator) < 0.5).to(a_mask.device)
        both = a_mask & t_mask
        drop_a = drop & both & drop_audio
        drop_t = drop & both & ~drop_audio
        out["audio_mask"] = a_mask & ~drop_a
        out["text_mask"] = t_mask & ~drop_t
        for key, dropped in (("audio", drop_a), ("text", drop_t)):
            x = out.get(key)
            if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() == 2:
                out[key] = x * (~dropped).to(x.dtype)[:, None]
    return out
