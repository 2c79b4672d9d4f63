"""Spectrogram CNNs over a 1-channel log-mel image (frame-level audio track; DESIGN.md, "Models").

    batch["audio"] [B, T] 16 kHz + batch["audio_lengths"] [B]
        -> LogMelFrontend (default: 80 mels, per-utterance mean/variance normalisation) -> [B, 1, n_mels, F]
        -> (training) the optional spec_augment hook
        -> conv stack (masked: padded frames kept at 0, BatchNorm statistics over real frames)
        -> `TimePool`: frequency averaged or kept as channels, masked pooling over time (mean, mean+std, or
           attentive statistics pooling) -> dropout -> linear -> logits

- `SmallCNN`: `len(channels)` blocks of conv3x3 -> BN -> ReLU -> max-pool 2x2 (ceil mode: every clip keeps at
  least one frame).
- `ResNet18Mel`: torchvision's ResNet-18 layout (BasicBlock, layers [2, 2, 2, 2], widths 64-128-256-512 scaled
  by `base_width / 64`, 7x7/2 stem + 3x3/2 max-pool) with a 1-channel stem; torchvision itself is not
  installable beside the pinned torch, so it is written here, with masks. Weights are initialised as
  torchvision does (Kaiming normal fan-out convs, BN weight 1 / bias 0; `zero_init_residual` optional).

A clip's logits (eval mode) do not depend on the other clips of its batch or on its padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mer.models.frame_blocks import MaskedBatchNorm, MelModel, conv_out_lengths, make_frontend, zero_padding
from mer.models.frontend import LogMelFrontend, lengths_to_mask
from mer.models.pooling import AttentiveStatsPool, masked_mean, mean_std_pool

POOLINGS = ("mean", "mean_std", "asp")
FREQ_POOLINGS = ("mean", "flatten")
FRONTEND_DEFAULTS = {"n_mels": 80, "normalize": "mean_var"}


class TimePool(nn.Module):
    """[B, C, F', T'] conv maps + frame lengths [B] -> [B, out_dim], the last stage of both spectrogram CNNs.

    TimePool(channels, bins, pooling="mean", freq_pooling="mean", attention_dim=128)
    The frequency axis is averaged ("mean": [B, C, T'], shift-invariant in frequency) or kept as channels
    ("flatten": [B, C * F', T'], so the pitch / formant position survives); then masked pooling over the real
    frames: "mean" (D), "mean_std" (2D) or "asp", attentive statistics pooling (learned frame weights, the
    weighted mean and std: 2D). Padding frames never reach the output.
    """

    def __init__(self, channels: int, bins: int, pooling: str = "mean", freq_pooling: str = "mean",
                 attention_dim: int = 128) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not one of {', '.join(POOLINGS)}")
        if freq_pooling not in FREQ_POOLINGS:
            raise ValueError(f"freq_pooling={freq_pooling!r} is not one of {', '.join(FREQ_POOLINGS)}")
        self.pooling, self.freq_pooling = pooling, freq_pooling
        self.dim = channels * (bins if freq_pooling == "flatten" else 1)
        self.asp = AttentiveStatsPool(self.dim, attention_dim) if pooling == "asp" else None

    @property
    def out_dim(self) -> int:
        return self.dim * (1 if self.pooling == "mean" else 2)

    def forward(self, x: Tensor, frame_lengths: Tensor) -> Tensor:
        h = (x.mean(2) if self.freq_pooling == "mean" else x.flatten(1, 2)).transpose(1, 2)  # [B, T', D]
        mask = lengths_to_mask(frame_lengths, h.shape[1])
        if self.asp is not None:
            return self.asp(h, mask)
        return masked_mean(h, mask, dim=1) if self.pooling == "mean" else mean_std_pool(h, mask)


class ConvBNReLU2d(nn.Module):
    """conv (k, stride s, padding k//2, no bias) -> masked BN -> ReLU, padding frames zeroed; tracks
    lengths."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, kernel // 2
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=self.padding, bias=False)
        self.bn = MaskedBatchNorm(c_out)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = self.conv(x)
        lengths = conv_out_lengths(lengths, self.kernel, self.stride, self.padding)
        mask = lengths_to_mask(lengths, x.shape[-1])
        return zero_padding(torch.relu(self.bn(x, mask)), mask), lengths


class SmallCNN(MelModel):
    """A few conv-BN-ReLU-pool blocks over the log-mel, masked pooling over time, dropout, linear.

    SmallCNN(n_classes, channels=(32, 64, 128, 256), dropout=0.3, pooling="mean", frontend=None,
             freq_pooling="mean")
    `frontend`: a LogMelFrontend, a dict of its settings (over n_mels=80, normalize="mean_var"), or None.
    `freq_pooling`: "mean" over the remaining frequency bins (shift-invariant in frequency), or "flatten" (the
    bins stay apart: the head sees where in frequency a pattern is).
    """

    def __init__(
        self,
        n_classes: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        dropout: float = 0.3,
        pooling: str = "mean",
        frontend: LogMelFrontend | dict | None = None,
        freq_pooling: str = "mean",
    ) -> None:
        super().__init__()
        if not channels or any(int(c) <= 0 for c in channels):
            raise ValueError(f"SmallCNN: channels must be a non-empty list of widths > 0, got {channels!r}")
        self.frontend = make_frontend(frontend, **FRONTEND_DEFAULTS)
        self.n_classes = n_classes
        widths = [1, *[int(c) for c in channels]]
        self.blocks = nn.ModuleList(ConvBNReLU2d(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.dropout = nn.Dropout(dropout)
        bins = self.frontend.n_mels
        for _ in channels:
            bins = (bins + 1) // 2  # 2x2 max-pool, ceil mode
        self.time_pool = TimePool(widths[-1], bins, pooling, freq_pooling)
        self.head = nn.Linear(self.time_pool.out_dim, n_classes)

    def classify(self, feats: Tensor, frame_lengths: Tensor) -> Tensor:
        x, lengths = feats.unsqueeze(1), frame_lengths.to(torch.long)
        for block in self.blocks:
            x, lengths = block(x, lengths)
            # 2x2 max-pool, ceil mode (a 1-frame clip keeps its frame). Inputs are >= 0 (after ReLU) and
            # padding is 0, so a clip's pooled frames equal those it has alone, also in a partial last window.
            x = nn.functional.max_pool2d(x, 2, ceil_mode=True)
            lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
            x = zero_padding(x, lengths_to_mask(lengths, x.shape[-1]))
        return self.head(self.dropout(self.time_pool(x, lengths)))


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (3x3 -> BN -> ReLU -> 3x3 -> BN, + identity / 1x1 downsample) with
    masks."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = MaskedBatchNorm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = MaskedBatchNorm(c_out)
        self.downsample: nn.ModuleList | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.ModuleList(
                [nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), MaskedBatchNorm(c_out)]
            )

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        out_len = conv_out_lengths(lengths, 3, self.stride, 1)
        identity = x
        out = self.conv1(x)
        mask = lengths_to_mask(out_len, out.shape[-1])
        out = zero_padding(torch.relu(self.bn1(out, mask)), mask)
        out = self.bn2(self.conv2(out), mask)
        if self.downsample is not None:
            conv, bn = self.downsample
            identity = bn(conv(x), mask)
        return zero_padding(torch.relu(out + identity), mask), out_len


class ResNet18Mel(MelModel):
    """ResNet-18 over the 1-channel log-mel, masked pooling over time, dropout, linear.

    ResNet18Mel(n_classes, base_width=64, dropout=0.0, pooling="mean", zero_init_residual=False,
    frontend=None, freq_pooling="mean") Stage widths: base_width * (1, 2, 4, 8) (64-128-256-512 by default).
    `freq_pooling`: as SmallCNN's ("flatten": the remaining frequency bins stay apart).
    """

    layers = (2, 2, 2, 2)

    def __init__(
        self,
        n_classes: int,
        base_width: int = 64,
        dropout: float = 0.0,
        pooling: str = "mean",
        zero_init_residual: bool = False,
        frontend: LogMelFrontend | dict | None = None,
        freq_pooling: str = "mean",
    ) -> None:
        super().__init__()
        if base_width <= 0:
            raise ValueError(f"ResNet18Mel: base_width must be > 0, got {base_width}")
        self.frontend = make_frontend(frontend, **FRONTEND_DEFAULTS)
        self.n_classes = n_classes
        self.conv1 = nn.Conv2d(1, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = MaskedBatchNorm(base_width)
        stages, c_in = [], base_width
        for i, n_blocks in enumerate(self.layers):
            c_out = base_width * 2**i
            blocks = [BasicBlock(c_in, c_out, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(c_out, c_out) for _ in range(n_blocks - 1)]
            stages.append(nn.ModuleList(blocks))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.out_channels = c_in
        self.dropout = nn.Dropout(dropout)
        bins = self.frontend.n_mels
        for k, st, pad in [(7, 2, 3), (3, 2, 1)] + [(3, 2, 1)] * (len(self.layers) - 1):  # stem, max-pool, stages
            bins = (bins + 2 * pad - k) // st + 1
        self.time_pool = TimePool(c_in, bins, pooling, freq_pooling)
        self.head = nn.Linear(self.time_pool.out_dim, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def classify(self, feats: Tensor, frame_lengths: Tensor) -> Tensor:
        x = self.conv1(feats.unsqueeze(1))
        lengths = conv_out_lengths(frame_lengths, 7, 2, 3)
        mask = lengths_to_mask(lengths, x.shape[-1])
        x = zero_padding(torch.relu(self.bn1(x, mask)), mask)
        # 3x3/2 max-pool: inputs >= 0 and padding 0, so zero padding acts like torch's -inf padding.
        x = nn.functional.max_pool2d(x, 3, stride=2, padding=1)
        lengths = conv_out_lengths(lengths, 3, 2, 1)
        x = zero_padding(x, lengths_to_mask(lengths, x.shape[-1]))
        for stage in self.stages:
            for block in stage:
                x, lengths = block(x, lengths)
        return self.head(self.dropout(self.time_pool(x, lengths)))
