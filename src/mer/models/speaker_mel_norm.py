"""Speaker normalization of the frame-level front end: each clip's log-mel z-scored per mel bin with the mean and std
of its speaker's frames (a protocol choice the run reports: `data.speaker_norm`; the feature track's counterpart is
`mer.data.speaker_norm`).

    fallback = training_stats(model.frontend, train_eval_view)            # the training view's frames: fallback
    report = attach_speaker_stats(model.frontend, dataset, fallback, min_clips=10)

`attach_speaker_stats` runs the model's own front end (raw log-mel: no per-utterance normalization) over every clip of
the dataset as evaluation reads it (centre crops of `data.max_audio_s`, no augmentation), sums each clip's frames'
moments, pools them per speaker over the dataset's rows (a test speaker's statistics come from its own unlabelled
clips, never its labels), and sets `dataset.speaker_stats` (`mer.data.speaker_norm.RowStats`): its items then carry
`speaker_mean` / `speaker_std`, which `MelModel.features` hands to the front end in place of its per-utterance
normalization. A speaker with fewer than `min_clips` clips in the dataset, or a row without a speaker id, gets the
training view's statistics, counted in the report. The front end has no trained parameters, so the statistics do
not change during training.
"""

from __future__ import annotations

import numpy as np
import torch

from mer.data.speaker_norm import ZStats, moments_stats, speaker_row_stats
from mer.models.frontend import LogMelFrontend, lengths_to_mask

STD_FLOOR = 1e-2  # log units: a mel bin (nearly) constant for a speaker, e.g. above a band limit, is not blown up


class DatasetWaves:
    """A dataset's clips as a sequence of waveforms (`dataset.item(i)["audio"]`)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.dataset.item(i)["audio"]


@torch.no_grad()
def clip_moments(frontend: LogMelFrontend, waves, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray,
                                                                                 np.ndarray]:
    """Per clip of `waves` (a sequence of 16 kHz float waveforms, e.g. `DatasetWaves(dataset)`): its frame count
    [n], and the sums of its raw log-mel and of its square over the frames [n, n_mels] (float64)."""
    n, d = len(waves), frontend.n_mels
    count, total, squares = np.zeros(n), np.zeros((n, d)), np.zeros((n, d))
    device = frontend.mel_fb.device
    raw = (torch.zeros(1, d, device=device), torch.ones(1, d, device=device))
    for start in range(0, n, batch_size):
        chunk = [np.asarray(waves[i], np.float32) for i in range(start, min(n, start + batch_size))]
        lengths = torch.tensor([w.size for w in chunk], dtype=torch.long, device=device)
        wave = torch.zeros(len(chunk), max(1, int(lengths.max())), device=device)
        for j, w in enumerate(chunk):
            wave[j, : w.size] = torch.from_numpy(w)
        b = len(chunk)
        feats, frames = frontend(wave, lengths, (raw[0].expand(b, -1), raw[1].expand(b, -1)))
        mask = lengths_to_mask(frames, feats.shape[-1]).unsqueeze(1).to(torch.float64)
        f = feats.to(torch.float64) * mask
        count[start:start + b] = frames.cpu().numpy()
        total[start:start + b] = f.sum(-1).cpu().numpy()
        squares[start:start + b] = (f * f).sum(-1).cpu().numpy()
    return count, total, squares


def training_stats(frontend: LogMelFrontend, dataset, batch_size: int = 16) -> ZStats:
    """The statistics of all frames of `dataset`'s clips (the training view, read as evaluation reads it)."""
    count, total, squares = clip_moments(frontend, DatasetWaves(dataset), batch_size)
    return moments_stats(count, total.sum(0), squares.sum(0), len(dataset), STD_FLOOR)


def attach_speaker_stats(frontend: LogMelFrontend, dataset, fallback: ZStats, min_clips: int,
                         source=None, batch_size: int = 16) -> dict:
    """Set `dataset.speaker_stats` (each row's speaker's log-mel statistics, see the module doc) and return the
    report. `source`: the dataset to read the clips from when `dataset` crops at random (the training view: its
    evaluation-mode twin over the same rows)."""
    source = dataset if source is None else source
    if list(source.ids) != list(dataset.ids):
        raise ValueError("attach_speaker_stats: the source dataset holds other rows than the dataset")
    count, total, squares = clip_moments(frontend, DatasetWaves(source), batch_size)
    speakers = [m.get("speaker") for m in dataset.meta]
    stats, report = speaker_row_stats(count, total, squares, speakers, fallback, min_clips, STD_FLOOR)
    dataset.speaker_stats = stats
    return report


def stats_record(stats: ZStats) -> dict:
    """A ZStats as checkpoint data (float64 tensors, as the feature track keeps its speaker-norm fallback)."""
    return {"mean": torch.from_numpy(stats.mean.copy()), "std": torch.from_numpy(stats.std.copy()),
            "count": stats.count}


def stats_from_record(record: dict) -> ZStats:
    return ZStats(torch.as_tensor(record["mean"]).double().numpy(), torch.as_tensor(record["std"]).double().numpy(),
                  int(record["count"]))


__all__ = ["STD_FLOOR", "DatasetWaves", "attach_speaker_stats", "clip_moments", "stats_from_record", "stats_record",
           "training_stats"]
