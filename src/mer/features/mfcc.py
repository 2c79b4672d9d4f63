"""MFCC mean+std features at 16 kHz, batched: equal to librosa's per-clip MFCC, many clips at a time.

For each clip `y` (mono float32 at 16 kHz) the feature vector is::

    m = librosa.feature.mfcc(y=y, sr=16000, n_mfcc=n, n_fft=400, hop_length=160)   # [n, frames]
    np.concatenate([m.mean(axis=1), m.std(axis=1)])                               # [2n] float32

i.e. librosa 0.11's defaults otherwise: periodic Hann window, `center=True` with zero (`"constant"`) padding,
power spectrogram, 128 Slaney-normalised mel bands from 0 Hz to Nyquist, `power_to_db(ref=1.0, amin=1e-10,
top_db=80)` and an orthonormal DCT-II. `MFCCMeanStd` computes the same thing for a whole batch: the mel
filterbank and DCT matrix are made once, the clips of a batch are zero-padded to a common length and framed
together, and one real FFT / matrix product covers all frames. Two details keep every clip's result
independent of its batch: the `top_db` floor is taken per clip from that clip's own maximum, and the frames of
the padding (past a clip's own `1 + len // hop` frames) enter neither that maximum nor the statistics. With
centred zero padding, a clip's own frames see exactly the samples they see when it is processed alone.

Speed (see bench/bench_extract_mfcc.py): clips are processed in groups of similar length small enough to stay
in cache (`max_batch_samples`), the mel product skips the bins outside each group of filters (exact zeros),
and the large work arrays are kept between calls, since a fresh one each time costs more in page faults than
the arithmetic done on it. BLAS should run single-threaded (the extraction CLI runs one process per core).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft
import scipy.signal
from librosa.filters import mel as mel_filterbank
from numpy.lib.stride_tricks import sliding_window_view

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 128
TOP_DB = 80.0
AMIN = 1e-10


class MFCCMeanStd:
    """Batched MFCC mean+std: `extractor(clips)` -> float32 `[len(clips), 2 * n_mfcc]` (means, then stds).

    `max_batch_samples` bounds the padded samples processed at once (memory); clips are grouped by length
    internally, so any list of clips may be passed, in any order. An instance keeps work arrays between
    calls: use one per thread.
    """

    def __init__(
        self,
        n_mfcc: int = 40,
        sr: int = SAMPLE_RATE,
        n_fft: int = N_FFT,
        hop_length: int = HOP_LENGTH,
        n_mels: int = N_MELS,
        top_db: float | None = TOP_DB,
        max_batch_samples: int = 1 << 18,
    ) -> None:
        if not 1 <= n_mfcc <= n_mels:
            raise ValueError(f"n_mfcc must be between 1 and n_mels={n_mels}, got {n_mfcc}")
        if n_fft < 2 or hop_length < 1:
            raise ValueError(f"n_fft must be >= 2 and hop_length >= 1, got {n_fft}, {hop_length}")
        self.n_mfcc, self.sr, self.n_fft, self.hop_length = int(n_mfcc), int(sr), int(n_fft), int(hop_length)
        self.n_mels, self.top_db = int(n_mels), top_db
        self.max_batch_samples = int(max_batch_samples)
        # [n_freq, n_mels]: power frames @ mel_t -> mel frames (librosa.filters.mel is [n_mels, n_freq])
        self._mel_t = np.ascontiguousarray(
            mel_filterbank(sr=self.sr, n_fft=self.n_fft, n_mels=self.n_mels).T.astype(np.float32)
        )
        self._mel_blocks = _band_blocks(self._mel_t)
        self._mel_covers_all = sum(last - first for first, last, *_ in self._mel_blocks) == self.n_mels
        # [n_mels, n_mfcc]: dct(S, type=2, norm="ortho", axis=mel)[:n_mfcc] == (D @ S) with D = dct(I)
        dct = scipy.fft.dct(np.eye(self.n_mels, dtype=np.float64), type=2, norm="ortho", axis=0)
        self._dct_t = np.ascontiguousarray(dct[: self.n_mfcc].T.astype(np.float32))
        self._window = scipy.signal.get_window("hann", self.n_fft, fftbins=True).astype(np.float32)
        self._buffers: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        """Length of one feature vector: `2 * n_mfcc`."""
        return 2 * self.n_mfcc

    def settings(self) -> dict:
        """What defines these features (recorded in the feature store; a mismatch refuses a resume)."""
        return {
            "audio_features": "mfcc_mean_std",
            "sr": self.sr,
            "n_mfcc": self.n_mfcc,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
            "window": "hann",
            "center": True,
            "pad_mode": "constant",
            "top_db": self.top_db,
            "mel": "librosa slaney, fmin 0, fmax sr/2",
            "dct": "type 2, ortho",
        }

    def n_frames(self, n_samples: int) -> int:
        """STFT frames of a clip of `n_samples` samples (centred): `1 + n_samples // hop_length`."""
        return 1 + int(n_samples) // self.hop_length

    def __call__(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Features of every clip, in input order.

        A clip is a non-empty 1-D signal at `sr`: floats, or int16 PCM (read as `x / 32768`, exactly what
        soundfile and librosa.load return for a PCM16 file, without a float copy of the signal).
        """
        arrays = [np.asarray(c) for c in clips]
        for i, a in enumerate(arrays):
            if a.ndim != 1 or a.size == 0:
                raise ValueError(f"clip {i}: expected a non-empty 1-D signal, got shape {a.shape}")
            if a.dtype != np.int16 and not np.issubdtype(a.dtype, np.floating):
                raise ValueError(f"clip {i}: expected float samples or int16 PCM, got {a.dtype}")
        out = np.empty((len(arrays), self.dim), dtype=np.float32)
        order = sorted(range(len(arrays)), key=lambda i: arrays[i].size)
        start = 0
        while start < len(order):  # greedy groups of similar length under the sample budget
            end = start + 1
            while end < len(order) and (end - start + 1) * arrays[order[end]].size <= self.max_batch_samples:
                end += 1
            group = order[start:end]
            out[group] = self._batch([arrays[i] for i in group])
            start = end
        return out

    def _work(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 work array kept between calls: fresh big arrays on every call cost more in page faults
        (the allocator hands them back to the system each time) than the arithmetic done on them."""
        size = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.size < size:
            buf = self._buffers[name] = np.empty(size, dtype=np.float32)
        return buf[:size].reshape(shape)

    def _frames(self, clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """MFCC frames `[B, T, n_mfcc]` (a work array: valid until the next call) and frame counts `[B]`.

        Frames past a clip's own count belong to the padding and are meaningless.
        """
        lengths = np.array([c.size for c in clips], dtype=np.int64)
        n_frames = 1 + lengths // self.hop_length
        pad = self.n_fft // 2
        b, t = len(clips), int(n_frames.max())
        padded = self._work("padded", (b, int(lengths.max()) + 2 * pad))
        padded[:, :pad] = 0.0
        for i, c in enumerate(clips):
            padded[i, pad : pad + c.size] = c
            padded[i, pad + c.size :] = 0.0
        framed = sliding_window_view(padded, self.n_fft, axis=1)[:, :: self.hop_length]  # [B, T, n_fft]
        window = self._window
        pcm = np.array([c.dtype == np.int16 for c in clips])
        if pcm.any():  # int16 PCM: scale by 2**-15 inside the window product (exact: a power of two)
            window = window * np.where(pcm, np.float32(2.0**-15), np.float32(1.0))[:, None, None]
        windowed = np.multiply(framed, window, out=self._work("windowed", (b, t, self.n_fft)))
        spec = scipy.fft.rfft(windowed, axis=-1).reshape(b * t, -1)  # [B*T, n_freq] complex64
        n_freq = spec.shape[1]
        power = np.multiply(spec.real, spec.real, out=self._work("power", (b * t, n_freq)))
        power += np.multiply(spec.imag, spec.imag, out=self._work("imag2", (b * t, n_freq)))
        del spec
        mel = self._work("mel", (b * t, self.n_mels))
        if not self._mel_covers_all:
            mel.fill(0.0)  # the bands of all-zero filters
        for first, last, lo, hi, weights in self._mel_blocks:  # only the bins each group of bands covers
            mel[:, first:last] = power[:, lo:hi] @ weights
        db = np.log10(np.maximum(mel, AMIN, out=mel), out=mel).reshape(b, t, self.n_mels)
        db *= 10.0
        if self.top_db is not None:
            for i, n in enumerate(n_frames):  # the floor of each clip comes from its own frames only
                np.maximum(db[i], db[i, :n].max() - np.float32(self.top_db), out=db[i])
        mfcc = np.matmul(
            db.reshape(b * t, self.n_mels), self._dct_t, out=self._work("mfcc", (b * t, self.n_mfcc))
        )
        return mfcc.reshape(b, t, self.n_mfcc), n_frames

    def _batch(self, clips: list[np.ndarray]) -> np.ndarray:
        mfcc, n_frames = self._frames(clips)
        out = np.empty((len(clips), self.dim), dtype=np.float32)
        for i, n in enumerate(n_frames):
            own = mfcc[i, :n]
            out[i, : self.n_mfcc] = own.mean(axis=0, dtype=np.float64)
            out[i, self.n_mfcc :] = own.std(axis=0, dtype=np.float64)
        return out


def _band_blocks(mel_t: np.ndarray, group: int = 16) -> list[tuple[int, int, int, int, np.ndarray]]:
    """The mel filterbank `[n_freq, n_mels]` cut into groups of `group` adjacent bands, each with the range of
    frequency bins where one of its filters is non-zero: `(first, last, lo, hi, mel_t[lo:hi, first:last])`.

    Each filter covers a few bins only, so these small products do about an eighth of the dense one's work and
    give the same sums (the skipped terms are exact zeros). A group whose filters are all zero is left out.
    """
    blocks = []
    for first in range(0, mel_t.shape[1], group):
        last = min(mel_t.shape[1], first + group)
        rows = np.nonzero(mel_t[:, first:last].any(axis=1))[0]
        if rows.size:
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            blocks.append((first, last, lo, hi, np.ascontiguousarray(mel_t[lo:hi, first:last])))
    return blocks
