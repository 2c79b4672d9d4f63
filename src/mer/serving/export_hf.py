"""Export graphs of the models with pretrained Hugging Face encoders (`mer.serving.export` picks them).

- `HFGraph` (hf_at, modes A, T, AT): raw 16 kHz samples + their mask and/or token ids + their mask in, (logits,
  probs) out. The run's feature-extractor normalization (each clip to zero mean, unit variance over its own
  samples: `Wav2Vec2FeatureExtractor`'s `do_normalize`) runs inside the graph, so a consumer passes raw samples;
  tokenization stays outside (the tokenizer's files are saved beside the export). A row whose mask is all 0 has
  no such modality (AT: the fusion leaves it out, as the PyTorch path does for a clip without audio or text).
- `SSLGraph` (ssl_bilstm_asp): raw samples + mask; the model's own per-clip normalization; the packed BiLSTM of
  training replaced by the equal masked computation (each direction over each clip's own frames).
- `WhisperGraph` (whisper_prompt): raw samples + mask; Whisper's log-mel with the STFT as a convolution with the
  DFT basis (ONNX has no complex tensors), equal to torch.stft within float rounding.

The encoders run in eager attention for the export (plain MatMul / Softmax in the graph: no attention kernel or
mask shortcut chosen in Python at trace time), and the wav2vec2-family GroupNorm stem always takes each clip's statistics over its own frames
(`mer.models.conv_features.masked_group_norm`; equal to the plain GroupNorm when nothing is padded).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from mer.errors import UserError
from mer.models.frontend import lengths_to_mask
from mer.models.heads import logits_of
from mer.models.ssl_heads import WhisperLogMel, normalize_waveform


def eager_attention(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode whose Hugging Face submodules use eager attention."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if callable(getattr(m, "set_attn_implementation", None)):  # transformers' PreTrainedModel
            m.set_attn_implementation("eager")
    return model


def audio_normalization(feature_extractor, where: str) -> tuple[bool, float]:
    """(do_normalize, padding_value) of a plain `Wav2Vec2FeatureExtractor`; another extractor: a UserError."""
    from mer.data.manifest_dataset import plain_wav2vec2_extractor

    if feature_extractor is None:
        return True, 0.0
    if not plain_wav2vec2_extractor(feature_extractor):
        raise UserError(f"{where}: its audio feature extractor is a {type(feature_extractor).__name__}; the export "
                        "puts the input normalization in the graph only for Wav2Vec2FeatureExtractor (1 channel, "
                        "right padding)")
    return bool(feature_extractor.do_normalize), float(feature_extractor.padding_value)


class HFGraph(nn.Module):
    """hf_at: (input_values, audio_attention_mask)? (input_ids, text_attention_mask)? -> (logits, probs)."""

    def __init__(self, model: nn.Module, temperature: float, *, normalize: bool, padding_value: float = 0.0,
                 min_samples: int = 0) -> None:
        super().__init__()
        self.model = eager_attention(model)
        self.modalities = list(self.model.modalities)
        self.normalize, self.padding_value, self.min_samples = normalize, float(padding_value), int(min_samples)
        self.register_buffer("inv_t", torch.tensor(1.0 / temperature, dtype=torch.float32))

    def input_names(self) -> list[str]:
        names = {"audio": ["input_values", "audio_attention_mask"], "text": ["input_ids", "text_attention_mask"]}
        return [n for m in self.modalities for n in names[m]]

    def _audio(self, wave: Tensor, mask: Tensor) -> dict[str, Tensor]:
        lengths = mask.long().sum(-1)
        present = lengths > 0
        # a clip without samples is encoded as `min_samples` of silence, as the collator pads it (then left out)
        lengths = torch.where(present, lengths, torch.full_like(lengths, self.min_samples))
        real = lengths_to_mask(lengths, wave.shape[1])
        x = normalize_waveform(wave, lengths) if self.normalize else wave.float()
        x = torch.where(real, x, torch.full((), self.padding_value, dtype=x.dtype))
        return {"input_values": x, "audio_attention_mask": real.long(), "audio_mask": present}

    @staticmethod
    def _text(ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        mask = mask.long()
        present = mask.sum(-1) > 0
        first = (torch.arange(ids.shape[1], device=ids.device) == 0).long().unsqueeze(0)
        mask = torch.where(present.unsqueeze(1), mask, first)  # a text-less row keeps its first token (left out)
        return {"input_ids": ids.long(), "text_attention_mask": mask, "text_mask": present}

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        batch: dict[str, Tensor] = {}
        for i, modality in enumerate(self.modalities):
            values, mask = inputs[2 * i], inputs[2 * i + 1]
            batch.update(self._audio(values, mask) if modality == "audio" else self._text(values, mask))
        logits = logits_of(self.model(batch))
        return logits, torch.softmax(logits * self.inv_t, dim=-1)


# -- ssl_bilstm_asp ------------------------------------------------------------------------------------------------
def _direction(lstm: nn.LSTM, layer: int, suffix: str) -> nn.LSTM:
    """One direction of one layer of `lstm` as its own single-layer nn.LSTM (same weights)."""
    w_ih = getattr(lstm, f"weight_ih_l{layer}{suffix}")
    one = nn.LSTM(w_ih.shape[1], lstm.hidden_size, 1, bias=lstm.bias, batch_first=True)
    names = ["weight_ih", "weight_hh", *(["bias_ih", "bias_hh"] if lstm.bias else [])]
    one.load_state_dict({f"{n}_l0": getattr(lstm, f"{n}_l{layer}{suffix}").detach().clone() for n in names})
    return one.eval()


class MaskedBiLSTM(nn.Module):
    """A bidirectional batch-first nn.LSTM (eval) run on each row's first `lengths[b]` frames alone, as over a
    packed sequence, without packing (traceable): the forward direction over the right-padded rows as they are,
    the backward one over each row's real frames reversed in place; frames past a row's length come out as 0."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        if not (lstm.bidirectional and lstm.batch_first) or getattr(lstm, "proj_size", 0):
            raise UserError("export: only a bidirectional, batch-first LSTM without projections is supported")
        self.layers = nn.ModuleList(nn.ModuleList([_direction(lstm, i, ""), _direction(lstm, i, "_reverse")])
                                    for i in range(lstm.num_layers))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        t = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        n = lengths.to(torch.long).unsqueeze(1)
        inside = t < n
        rev = torch.where(inside, n - 1 - t, t).unsqueeze(-1)  # reverses each row's real frames, keeps the rest
        keep = inside.unsqueeze(-1).to(x.dtype)
        h = x
        for fwd, bwd in self.layers:
            back = torch.gather(h, 1, rev.expand(-1, -1, h.shape[-1]))
            back = bwd(back)[0]
            back = torch.gather(back, 1, rev.expand(-1, -1, back.shape[-1]))
            h = torch.cat([fwd(h)[0], back], dim=-1) * keep
        return h


class SSLGraph(nn.Module):
    """ssl_bilstm_asp: (input_values, attention_mask) raw samples -> (logits, probs)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = eager_attention(model)
        self.lstm = MaskedBiLSTM(self.model.lstm)
        self.register_buffer("inv_t", torch.tensor(1.0 / temperature, dtype=torch.float32))

    def forward(self, input_values: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        lengths = attention_mask.long().sum(-1)
        hidden, frame_mask = self.model.frames(input_values, lengths)
        out = self.lstm(hidden, frame_mask.sum(1).clamp_min(1))
        logits = self.model.head(self.model.pool(out, frame_mask))
        return logits, torch.softmax(logits * self.inv_t, dim=-1)


# -- whisper_prompt ------------------------------------------------------------------------------------------------
def dft_basis(fe) -> Tensor:
    """[2K, 1, n_fft]: the windowed cos and -sin rows of the real DFT (K = n_fft // 2 + 1) of a front end with
    `n_fft` and `window` (a window shorter than n_fft is centred, as torch.stft does), as a conv1d weight."""
    n_fft = int(fe.n_fft)
    window = torch.zeros(n_fft, dtype=torch.float64)
    w = fe.window.to(torch.float64)
    left = (n_fft - w.numel()) // 2
    window[left:left + w.numel()] = w
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64).unsqueeze(1)
    n = torch.arange(n_fft, dtype=torch.float64).unsqueeze(0)
    angle = 2 * torch.pi * k * n / n_fft
    basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window], dim=0)
    return basis.to(torch.float32).unsqueeze(1)


class WhisperLogMelConv(WhisperLogMel):
    """`WhisperLogMel` with the STFT as a convolution (the same arithmetic otherwise)."""

    def __init__(self, logmel: WhisperLogMel) -> None:
        nn.Module.__init__(self)  # the settings and filterbank of `logmel`, not a new filterbank
        self.n_fft, self.hop, self.n_samples = int(logmel.n_fft), int(logmel.hop), int(logmel.n_samples)
        self.register_buffer("mel_filters", logmel.mel_filters.clone(), persistent=False)
        self.register_buffer("window", logmel.window.clone(), persistent=False)
        self.register_buffer("basis", dft_basis(logmel), persistent=False)

    def forward(self, wave: Tensor, lengths: Tensor) -> Tensor:
        x = wave.float()[:, : self.n_samples]
        x = torch.where(lengths_to_mask(lengths, x.shape[1]), x, torch.zeros((), device=x.device))
        x = nn.functional.pad(x, (0, self.n_samples - x.shape[1]))
        pad = self.n_fft // 2
        x = nn.functional.pad(x.unsqueeze(1), (pad, pad), mode="reflect")
        ri = nn.functional.conv1d(x, self.basis, stride=self.hop)[..., :-1]  # [B, 2K, frames]
        k = self.basis.shape[0] // 2
        power = ri[:, :k].square() + ri[:, k:].square()
        log_spec = torch.clamp(self.mel_filters @ power, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        return (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0


class WhisperGraph(nn.Module):
    """whisper_prompt: (input_values, attention_mask) raw samples -> (logits, probs)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = eager_attention(model)
        self.model.logmel = WhisperLogMelConv(self.model.logmel)
        self.register_buffer("inv_t", torch.tensor(1.0 / temperature, dtype=torch.float32))

    def forward(self, input_values: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        logits = logits_of(self.model({"input_values": input_values, "audio_attention_mask": attention_mask}))
        return logits, torch.softmax(logits * self.inv_t, dim=-1)
