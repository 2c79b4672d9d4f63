"""ECAPA-TDNN over 80-bin log-mel frames (Desplanques et al., Interspeech 2020), with masks everywhere.

    batch["audio"] [B, T] + batch["audio_lengths"] [B] -> LogMelFrontend ([B, n_mels, F]; default 80 mels,
        per-utterance mean normalisation) -> (training) the optional spec_augment hook
    -> TDNN block (conv k=5, d=1 -> ReLU -> BN)                                         channels[0]
    -> 3 SE-Res2Net blocks (1x1 TDNN -> Res2Net (scale 8, k=3, d=2/3/4) -> 1x1 TDNN -> SE (bottleneck 128)
       + residual)                                                                       channels[1..3]
    -> multi-layer feature aggregation: the 3 block outputs concatenated -> TDNN 1x1     channels[4] (1536)
    -> attentive statistics pooling with global context (channel-wise attention over [h_t; mean; std])
    -> BN -> Linear -> embedding (192) -> classifier Linear -> logits

The layout follows the paper and SpeechBrain's implementation (conv -> ReLU -> BN order in TDNN blocks;
Res2Net: the first split passes through, split i > 1 gets TDNN_i(x_i + y_{i-1})); SpeechBrain itself cannot be
installed here (it requires torchaudio). Convolutions pad with zeros ("same" length); padded frames are set to
0 after every block, BatchNorm statistics (training), the SE squeeze and the pooling statistics use real
frames only, so a clip's output does not depend on its batch or its padding.

ECAPATDNN(n_classes, channels=(512, 512, 512, 512, 1536), kernels=(5, 3, 3, 3, 1), dilations=(1, 2, 3, 4, 1),
          res2net_scale=8, se_channels=128, attention_channels=128, embedding_dim=192, dropout=0.0,
          frontend=None)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mer.models.frame_blocks import MaskedBatchNorm, MelModel, make_frontend, zero_padding
from mer.models.frontend import LogMelFrontend, lengths_to_mask
from mer.models.pooling import AttentiveStatsPool, masked_mean

FRONTEND_DEFAULTS = {"n_mels": 80, "normalize": "mean"}


class TDNNBlock(nn.Module):
    """Conv1d (k, dilation d, 'same' zero padding) -> ReLU -> masked BN; padded frames zeroed. [B, C, T]."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"TDNN kernels must be odd ('same' padding), got {kernel}")
        self.conv = nn.Conv1d(
            c_in, c_out, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2, groups=groups
        )
        self.bn = MaskedBatchNorm(c_out)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return zero_padding(self.bn(torch.relu(self.conv(x)), mask), mask)


class Res2NetBlock(nn.Module):
    """Res2Net: channels split in `scale` groups; y_1 = x_1, y_2 = K_2(x_2), y_i = K_i(x_i + y_{i-1})."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int) -> None:
        super().__init__()
        if scale < 1 or channels % scale:
            raise ValueError(f"Res2Net: channels ({channels}) must be divisible by the scale ({scale})")
        self.scale = scale
        width = channels // scale
        self.blocks = nn.ModuleList(TDNNBlock(width, width, kernel, dilation) for _ in range(scale - 1))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        parts = torch.chunk(x, self.scale, dim=1)
        out, y = [parts[0]], None
        for i, block in enumerate(self.blocks, start=1):
            y = block(parts[i] if y is None else parts[i] + y, mask)
            out.append(y)
        return torch.cat(out, dim=1)


class SEBlock(nn.Module):
    """Squeeze-excitation: s = sigmoid(W2 relu(W1 masked_mean_t(x))); x * s."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv1d(channels, bottleneck, 1)
        self.fc2 = nn.Conv1d(bottleneck, channels, 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        s = masked_mean(x.transpose(1, 2), mask, dim=1).unsqueeze(-1)  # [B, C, 1]
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s


class SERes2NetBlock(nn.Module):
    """1x1 TDNN -> Res2Net -> 1x1 TDNN -> SE, + residual (a 1x1 conv shortcut when the widths differ)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, dilation: int, scale: int, se_channels: int
    ) -> None:
        super().__init__()
        self.tdnn1 = TDNNBlock(c_in, c_out, 1)
        self.res2net = Res2NetBlock(c_out, kernel, dilation, scale)
        self.tdnn2 = TDNNBlock(c_out, c_out, 1)
        self.se = SEBlock(c_out, se_channels)
        self.shortcut = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        h = self.se(self.tdnn2(self.res2net(self.tdnn1(x, mask), mask), mask), mask)
        return zero_padding(h + residual, mask)


class ECAPATDNN(MelModel):
    """ECAPA-TDNN speaker-embedding network used as an emotion classifier; see the module doc."""

    def __init__(
        self,
        n_classes: int,
        channels: Sequence[int] = (512, 512, 512, 512, 1536),
        kernels: Sequence[int] = (5, 3, 3, 3, 1),
        dilations: Sequence[int] = (1, 2, 3, 4, 1),
        res2net_scale: int = 8,
        se_channels: int = 128,
        attention_channels: int = 128,
        embedding_dim: int = 192,
        dropout: float = 0.0,
        frontend: LogMelFrontend | dict | None = None,
    ) -> None:
        super().__init__()
        channels, kernels, dilations = (
            [int(c) for c in channels],
            [int(k) for k in kernels],
            [int(d) for d in dilations],
        )
        if not len(channels) == len(kernels) == len(dilations) or len(channels) < 3:
            raise ValueError(
                f"ECAPATDNN: channels, kernels and dilations need the same length (>= 3: first TDNN, >= 1 "
                f"SE-Res2Net block, aggregation); got {len(channels)}, {len(kernels)}, {len(dilations)}"
            )
        self.frontend = make_frontend(frontend, **FRONTEND_DEFAULTS)
        self.n_classes = n_classes
        self.block0 = TDNNBlock(self.frontend.n_mels, channels[0], kernels[0], dilations[0])
        self.blocks = nn.ModuleList(
            SERes2NetBlock(channels[i - 1], channels[i], kernels[i], dilations[i], res2net_scale, se_channels)
            for i in range(1, len(channels) - 1)
        )
        self.mfa = TDNNBlock(sum(channels[1:-1]), channels[-1], kernels[-1], dilations[-1])
        self.pool = AttentiveStatsPool(
            channels[-1], attention_channels, channel_wise=True, global_context=True, channels_first=True
        )
        self.pool_bn = nn.BatchNorm1d(2 * channels[-1])
        self.embedding = nn.Linear(2 * channels[-1], embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embedding_dim, n_classes)

    def embed(self, feats: Tensor, frame_lengths: Tensor) -> Tensor:
        """The 192-d (embedding_dim) embedding of log-mel frames [B, n_mels, F]."""
        mask = lengths_to_mask(frame_lengths.to(feats.device), feats.shape[-1])
        x = self.block0(zero_padding(feats, mask), mask)
        outs = []
        for block in self.blocks:
            x = block(x, mask)
            outs.append(x)
        x = self.mfa(torch.cat(outs, dim=1), mask)
        pooled = self.pool(x, mask)
        if self.training and pooled.shape[0] == 1:  # batch statistics need two rows: use the running ones
            bn = self.pool_bn
            pooled = nn.functional.batch_norm(
                pooled, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
        else:
            pooled = self.pool_bn(pooled)
        return self.embedding(pooled)

    def classify(self, feats: Tensor, frame_lengths: Tensor) -> Tensor:
        return self.head(self.dropout(self.embed(feats, frame_lengths)))
