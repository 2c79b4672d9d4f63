"""The batch contract: what a dataset gives the training loop and the evaluator, and the batch a model receives.

One name per concept, in items and batches alike:

- ``label`` [B] int64: the task's class index; ``index`` [B] int64: the row's position in its dataset (the
  evaluator puts predictions back in dataset order with it; it stays on the CPU when the loop moves a batch to a
  GPU, so reading it never waits for the device: `mer.training.loop.HOST_KEYS`);
- ``audio_mask`` / ``text_mask`` [B] bool: True where the modality is present in the row and used by the mode
  (a model masks an absent modality out; modality dropout clears these in training);
- ``audio`` / ``text`` [B, dim] float32: pooled feature vectors (feature-store track);
- ``input_values`` [B, S] float32 + ``audio_attention_mask`` [B, S] (1 = a real sample, right padding) and
  ``input_ids`` [B, L] int64 + ``text_attention_mask`` [B, L]: encoder inputs (end-to-end track);
- ``input_values`` + ``audio_attention_mask`` as raw waveforms, each clip's own samples, no normalisation
  (frame-level track: the models' front ends normalise); ``audio`` stays the pooled vector of the feature track;
- with auxiliary heads (``model.heads``; `mer.data.targets.collate_targets`, every track): ``dims`` [B, D] float32
  ratings normalised to [0, 1] and ``dims_mask`` [B, D] bool (False where a row is unrated: masked out of the loss),
  ``gender`` [B] int64 (-1 where unknown);
- frame track with ``data.speaker_norm``: ``speaker_mean`` / ``speaker_std`` [B, n_mels] float32, each row's
  speaker's log-mel statistics (`mer.data.speaker_norm.RowStats`): the front end z-scores with them instead of per
  utterance;
- training only, after mixup: ``label_b`` [B] int64 (the class of the clip mixed in) and ``mix_lambda`` (a float:
  the weight of ``label``); the loop's loss is then ``lam * loss(label) + (1 - lam) * loss(label_b)``.

A model is a ``torch.nn.Module`` whose ``forward(batch)`` returns logits [B, n_classes]. Keys a model does not
read are ignored by it; the loop reads only ``label`` and ``index`` (and, after mixup, ``label_b`` + ``mix_lambda``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypedDict, runtime_checkable

import numpy as np
from torch import Tensor


class CommonBatch(TypedDict):
    """The keys every batch has, whatever the track."""

    label: Tensor  # [B] int64
    index: Tensor  # [B] int64, positions in the dataset
    audio_mask: Tensor  # [B] bool
    text_mask: Tensor  # [B] bool


class TargetsBatch(TypedDict, total=False):
    """The auxiliary heads' targets, in a batch of any track when the model has dimensional / gender heads."""

    dims: Tensor  # [B, D] float32, ratings normalised per corpus scale to [0, 1]
    dims_mask: Tensor  # [B, D] bool, False = unrated (never imputed)
    gender: Tensor  # [B] int64, -1 = unknown


class FeatureBatch(CommonBatch):
    """A batch of `mer.features.dataset.FeatureDataset`: pooled vectors from a feature store."""

    audio: Tensor  # [B, audio_dim] float32 (a zero-width tensor when the store has no audio)
    text: Tensor  # [B, text_dim] float32


class AudioTextBatch(CommonBatch, total=False):
    """A batch of `mer.data.manifest_dataset.HFCollator`: encoder inputs, present for the modalities of the mode."""

    input_values: Tensor  # [B, S] float32 waveforms, each normalised over its own samples
    audio_attention_mask: Tensor  # [B, S] int64, 1 = a real sample
    input_ids: Tensor  # [B, L] int64
    text_attention_mask: Tensor  # [B, L] int64, 1 = a real token


class WaveBatch(CommonBatch, total=False):
    """A batch of `mer.data.wave_batch.WaveCollator` (frame-level track): raw waveforms, right padding."""

    input_values: Tensor  # [B, S] float32, the clips' own samples at 16 kHz (not normalised)
    audio_attention_mask: Tensor  # [B, S] int64, 1 = a real sample
    speaker_mean: Tensor  # [B, n_mels] float32, data.speaker_norm only: the row's speaker's log-mel mean
    speaker_std: Tensor  # [B, n_mels] float32, data.speaker_norm only: and std (floored)
    label_b: Tensor  # [B] int64, training batches after mixup only: the label of the clip mixed in
    mix_lambda: float  # training batches after mixup only: the weight of `label` (1 - it: of `label_b`)


class ManifestItem(TypedDict):
    """One item of `ManifestDataset` (the collator turns a list of them into an `AudioTextBatch`)."""

    audio: np.ndarray | None  # float32 samples at the encoder's rate; None when the mode has no audio
    text: str  # the text the encoder sees (dialogue context + separator + the current turn)
    current: str  # the current turn alone (kept whole when the text must be truncated)
    label: int
    index: int
    audio_mask: bool
    text_mask: bool


@runtime_checkable
class LabelledDataset(Protocol):
    """What the training loop and the evaluator read from a dataset, besides ``len`` and its batches.

    ``label_ids`` builds class weights and the class-balanced sampler; ``meta`` (manifest fields, at least
    ``id``, ``dataset`` and ``speaker``) the per-dataset sampler and the leakage checks; ``ids`` the rows of
    ``predictions.csv``; ``labels`` the task's label list (in class-index order); ``dropped`` the rows of the
    view left out because their label is not in the task (source value -> count), reported with the metrics.
    """

    labels: list[str]
    label_ids: np.ndarray  # [N] int64
    meta: list[dict]
    ids: list[str]
    dropped: dict[str, int]

    def __len__(self) -> int: ...


@runtime_checkable
class LengthsDataset(LabelledDataset, Protocol):
    """A dataset of variable-length inputs: ``lengths`` [N] (samples or characters) drive the length buckets."""

    lengths: np.ndarray | Sequence[int]


BATCH_KEYS = tuple(CommonBatch.__annotations__)
