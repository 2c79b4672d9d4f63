"""The typed schema of an experiment config (DESIGN.md, Contract 2).

One dataclass per section. `mer.config` loads YAML, resolves `base:` inheritance and `--set` overrides, and
validates the merged dict against `ExperimentConfig`: an unknown key is an error naming the key and the nearest
valid one; a value of the wrong type is an error naming key, value and expected type.

Field types are what the validator checks: `int`, `float` (an int is accepted), `bool`, `str`,
`X | None`, `list[X]`, `dict[str, X]`, `Literal[...]`, nested dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

EMOTIONS_7 = ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]


@dataclass
class RunConfig:
    name: str = "run"
    output_root: str = "runs"
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = True


@dataclass
class ViewConfig:
    """A set of row filters over the manifest fields carried by every store row. None = no filter."""

    split: str | list[str] | None = None
    dataset: str | list[str] | None = None
    domain: str | list[str] | None = None
    exclude_dataset: str | list[str] | None = None
    speaker_regex: str | None = None
    speaker: str | list[str] | None = None  # exact speaker ids (`<DATASET>/<id>`), e.g. a cross-validation fold
    ids_file: str | None = None  # a file of row ids, one per line (a fold file of the cross-validation runner)


@dataclass
class TaskConfig:
    """The label space of the experiment: a label list and a mapping from `label` or `source_label`.

    A row whose (mapped) value is not in `labels` is left out and counted.
    """

    labels: list[str] = field(default_factory=lambda: list(EMOTIONS_7))
    source_field: Literal["label", "source_label"] = "label"
    mapping: dict[str, str] = field(default_factory=dict)


def _default_views() -> dict[str, ViewConfig]:
    return {
        "train": ViewConfig(split="train"),
        "val": ViewConfig(split="val"),
        "test": ViewConfig(split="test"),
    }


@dataclass
class DataConfig:
    store: str = ""  # feature store folder, or the memmap folder built from it
    manifest: str | None = None
    task: TaskConfig = field(default_factory=TaskConfig)
    views: dict[str, ViewConfig] = field(default_factory=_default_views)
    train_view: str = "train"
    val_view: str = "val"
    eval_views: list[str] = field(default_factory=lambda: ["test"])
    standardize: bool = True  # z-score features with the training view's mean/std (stored in checkpoints)
    stores: list[str] = field(default_factory=list)  # more stores joined by id with `store` (e.g. ComParE + MFCC)
    # Speaker normalization (a protocol choice, reported as such): z-score each speaker's features with that
    # speaker's own statistics (from its rows in the store, labels never used), before `standardize`.
    speaker_norm: bool = False
    speaker_norm_min_rows: int = 10  # a speaker with fewer rows falls back to the training view's statistics
    # speaker_independent: a speaker shared by the training view and an eval view is an error (official-split
    # corpora such as MELD only warn); speaker_dependent: allowed, and reported as the protocol
    protocol: Literal["speaker_independent", "speaker_dependent"] = "speaker_independent"
    # corpus-aware evaluation (cross-corpus, leave-one-corpus-out): mask from the logits the classes that the
    # training view or an eval view lacks, and evaluate on the rows of the classes both have
    mask_absent_classes: bool = False
    # dimensional ratings: each corpus's scale [low, high] (IEMOCAP [1, 5] and MSP-Podcast [1, 7] built in)
    rating_scales: dict[str, list[float]] = field(default_factory=dict)
    # A task label without a single training row is an error (a label list that does not fit the data); true makes
    # it a warning (the class is then never predicted)
    allow_empty_classes: bool = False
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 0
    # End-to-end training from the manifest (train_hf_e2e.py; `manifest` is then required, `store` unused):
    max_audio_s: float = 20.0  # longer clips are cropped: a random window in training, the centre in evaluation
    context_turns: int = 0  # previous dialogue turns prepended to a conversational row's text (0 = none)
    bucket_batches: int = 32  # length bucketing: batches per bucket of similar-length clips (1 = random batches)
    # frame track: a clip shorter than the front end's window is skipped and counted, or zero-padded up to it
    short_clips: Literal["skip", "pad"] = "skip"
    # manifest tracks: decode each WAV once into a memory-mapped cache (mer.data.wave_cache; the same samples as
    # decoding): true = `<manifest>.wavecache/` beside the manifest, or a folder; false = decode at every read
    wave_cache: bool | str = False
    # manifest tracks: read the audio from WebDataset tar shards written by `mer-builder shards` (a folder with
    # index.json) instead of the manifest's folder; training streams them (mer.data.shard_stream) through a
    # shuffle buffer of `shuffle_buffer` samples per DataLoader worker (0: in the order written, no shuffling)
    shards: str = ""
    shuffle_buffer: int = 1000


@dataclass
class FusionConfig:
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    ffn_mult: float = 2.0


@dataclass
class HFModelConfig:
    """The encoders of the end-to-end model `hf_at` (train_hf_e2e.py); the feature-store models ignore it."""

    audio_encoder: str = "microsoft/wavlm-base-plus"  # hub name or save_pretrained folder (WavLM, HuBERT, wav2vec2)
    text_encoder: str = "roberta-base"  # hub name or save_pretrained folder (RoBERTa, BERT, MiniLM)
    # masked mean over frames (H), mean + std (2H), or attentive statistics pooling (learned frame weights: 2H)
    audio_pooling: Literal["mean", "mean_std", "asp"] = "mean"
    # hidden state pooled: last, mean (of all), weighted (learned softmax weights over all), or an index
    # (0 = the input of the first transformer layer)
    audio_layer: Literal["last", "mean", "weighted"] | int = "last"
    text_pooling: Literal["cls", "mean"] = "cls"  # first-token vector or masked mean over tokens
    # what is not trained: nothing, the audio encoder's conv feature encoder, or both encoders (head only)
    freeze: Literal["none", "feature_encoder", "all"] = "feature_encoder"
    gradient_checkpointing: bool = False  # recompute encoder activations in backward: less memory, ~30% slower
    max_text_tokens: int | None = None  # token limit per text (None: the text encoder's own limit)
    # > 0: keep the frozen conv feature encoder's output of training clips in memory, up to this many MiB, and
    # reuse it in later epochs (needs freeze: feature_encoder or all; clips cropped in training are recomputed)
    conv_cache_mb: float = 0.0


@dataclass
class HeadsConfig:
    """Output heads beside (or instead of) the categorical one; every model gets them the same way."""

    categorical: bool = True  # False: a dimensional-only task (the task's rows, no class loss)
    dims: list[str] = field(default_factory=list)  # regression over any of arousal, valence, dominance
    gender: bool = False  # an auxiliary speaker-gender head (manifest `gender`; rows without it masked)
    dim_loss: Literal["ccc", "mse"] = "ccc"  # 1 - CCC per dimension (averaged), or MSE
    weights: dict[str, float] = field(default_factory=dict)  # loss weights: categorical, dims, gender (1 each)


@dataclass
class LinearConfig:
    """`model.name: linear`: a scikit-learn baseline on the (z-scored) feature vectors, stored as tensors."""

    kind: Literal["logreg", "linear_svm"] = "logreg"  # multinomial logistic regression or a linear SVM
    Cs: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0])  # chosen on the val view
    class_weight: Literal["none", "balanced"] = "none"
    max_iter: int = 5000
    # feature counts to try, the top k by ANOVA F on the training rows (0 = every feature); chosen with C
    select_k: list[int] = field(default_factory=lambda: [0])
    # 0: choose (select_k, Cs) on the val view; K >= 2: by K speaker-grouped folds of the training view instead
    inner_folds: int = 0


@dataclass
class CNNConfig:
    """`cnn_small`: conv3x3-BN-ReLU-maxpool blocks, one per width; masked pooling over time."""

    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    pooling: Literal["mean", "mean_std", "asp"] = "mean"  # asp: attentive statistics pooling (learned frame weights)
    freq_pooling: Literal["mean", "flatten"] = "mean"  # flatten: the frequency bins stay apart (pitch position kept)


@dataclass
class ResNetConfig:
    """`resnet18_mel`: ResNet-18 (BasicBlock, [2, 2, 2, 2]) over the 1-channel log-mel."""

    base_width: int = 64  # stage widths base_width * (1, 2, 4, 8)
    pooling: Literal["mean", "mean_std", "asp"] = "mean"
    freq_pooling: Literal["mean", "flatten"] = "mean"
    zero_init_residual: bool = False


@dataclass
class ECAPAConfig:
    """`ecapa_tdnn`: first TDNN, SE-Res2Net blocks, multi-layer aggregation (the last entry), attentive stats pooling."""

    channels: list[int] = field(default_factory=lambda: [512, 512, 512, 512, 1536])
    kernels: list[int] = field(default_factory=lambda: [5, 3, 3, 3, 1])
    dilations: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 1])
    res2net_scale: int = 8
    se_channels: int = 128
    attention_channels: int = 128
    embedding_dim: int = 192


@dataclass
class SSLHeadConfig:
    """`ssl_bilstm_asp`: a wav2vec2-family encoder (hub name or save_pretrained folder) + BiLSTM + attentive stats."""

    encoder: str = "microsoft/wavlm-base-plus"
    freeze: Literal["all", "feature_encoder", "none"] = "all"
    layer: Literal["weighted", "last", "mean"] | int = "weighted"
    lstm_hidden: int = 256
    lstm_layers: int = 1
    attention_dim: int = 128
    head_hidden: int = 256


@dataclass
class WhisperPromptConfig:
    """`whisper_prompt`: the frozen encoder of a Whisper checkpoint with deep prompt tuning."""

    encoder: str = "openai/whisper-base"
    n_prompts: int = 8  # learned prompt vectors per encoder layer (>= 1)
    head_hidden: int = 256


@dataclass
class FrameConfig:
    """The frame-level audio models (train_frame.py): the log-mel front end and each model's options."""

    n_mels: int = 80
    n_fft: int = 400  # samples (25 ms at 16 kHz)
    hop: int = 160  # samples (10 ms)
    win_length: int | None = None  # None = n_fft
    f_min: float = 0.0
    f_max: float | None = None  # None = sample_rate / 2
    log_offset: float = 1e-6  # log(mel + log_offset)
    # per-utterance normalisation over the clip's real frames; None = the model's default (CNNs: mean_var, ECAPA: mean)
    normalize: Literal["none", "mean", "mean_var"] | None = None
    pad_mode: Literal["reflect", "constant"] = "reflect"
    cnn: CNNConfig = field(default_factory=CNNConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    ecapa: ECAPAConfig = field(default_factory=ECAPAConfig)
    ssl: SSLHeadConfig = field(default_factory=SSLHeadConfig)
    whisper: WhisperPromptConfig = field(default_factory=WhisperPromptConfig)


@dataclass
class ModelConfig:
    name: str = "flexible_at"  # a name in mer.models.registry
    mode: Literal["A", "T", "AT"] = "AT"
    hidden_dim: int = 256
    dropout: float = 0.2
    input_dropout: float = 0.0  # feature models: dropout on the input vectors (high-dimensional functionals)
    ffn_mult: float = 2.0  # SwiGLU hidden = hidden_dim * ffn_mult
    fusion: FusionConfig = field(default_factory=FusionConfig)
    audio_dim: int | None = None  # filled from the store; a value given here must match it
    text_dim: int | None = None
    hf: HFModelConfig = field(default_factory=HFModelConfig)  # model.name: hf_at only
    linear: LinearConfig = field(default_factory=LinearConfig)  # model.name: linear only
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    frame: FrameConfig = field(default_factory=FrameConfig)  # frame-level audio models (train_frame.py) only


@dataclass
class SchedulerConfig:
    name: Literal["plateau", "cosine", "none"] = "plateau"
    metric: str = "macro_f1"  # plateau: the validation metric it watches
    mode: Literal["max", "min"] = "max"
    factor: float = 0.5
    patience: int = 2
    min_lr: float = 0.0
    warmup_epochs: float = 0.0  # cosine: linear warmup length in epochs (fractions allowed)


@dataclass
class EarlyStoppingConfig:
    patience: int | None = 5  # None = never stop early (hybrid: the loss rule still applies)
    min_delta: float = 0.0
    # patience: the metric must improve; hybrid: its moving average over `window` epochs must improve, and the
    # run stops at once when the validation loss exceeds its minimum so far x `loss_threshold`
    mode: Literal["patience", "hybrid"] = "patience"
    window: int = 5
    loss_threshold: float = 1.05


@dataclass
class EMAConfig:
    enabled: bool = False
    decay: float = 0.999


@dataclass
class ClassWeightsConfig:
    mode: Literal["none", "balanced"] = "none"
    clip: float | None = None  # upper bound on a class weight


@dataclass
class SamplerConfig:
    class_balanced: bool = False
    dataset_factors: dict[str, float] = field(default_factory=dict)  # e.g. {MELD: 3.0}


@dataclass
class AugmentConfig:
    feature_noise: float = 0.0  # std of Gaussian noise added to features in training
    modality_dropout: float = 0.0  # probability of dropping one modality of a sample (never both)
    # The audio models trained from the manifest (train_frame.py; train_hf_e2e.py all but SpecAugment), training
    # batches only; null / 0 = off.
    freq_masks: int = 0  # SpecAugment: frequency masks per clip, each up to freq_width mel bins
    freq_width: int = 8
    time_masks: int = 0  # SpecAugment: time masks per clip, each up to time_width frames
    time_width: int = 20
    noise_snr_db: list[float] | None = None  # [lo, hi]: additive noise at an SNR drawn in this range
    noise_dir: str | None = None  # a folder of noise WAVs (searched recursively); null = white noise
    noise_p: float = 1.0  # share of clips that get noise
    gain_db: list[float] | None = None  # [lo, hi]: random gain in dB
    gain_p: float = 1.0
    crop_s: float | None = None  # random crop to at most this many seconds
    shift_s: float | None = None  # circular time shift of up to +-shift_s seconds
    speed_factors: list[float] | None = None  # speed perturbation, one factor per clip, e.g. [0.9, 1.0, 1.1]
    speed_p: float = 1.0
    mixup_alpha: float | None = None  # mixup of waveforms and labels, lambda ~ Beta(alpha, alpha)
    mixup_p: float = 1.0  # share of batches mixed
    vtlp_alpha: list[float] | None = None  # [lo, hi]: vocal tract length perturbation of the log-mel, e.g. [0.9, 1.1]


@dataclass
class LossConfig:
    # ce; weighted_ce (ce with balanced class weights: train.class_weights, 'balanced' when unset); focal;
    # balanced_softmax (ce on logits + log prior of the training view's classes; plain logits at inference)
    # ccc / mse are the dimensional heads' losses (model.heads.dim_loss): accepted by the type only so that
    # __post_init__ can say so in one line instead of the generic list
    name: Literal["ce", "weighted_ce", "focal", "balanced_softmax"] | Literal["ccc", "mse"] = "ce"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        if self.name in ("ccc", "mse"):
            from mer.errors import UserError

            raise UserError(f"config key 'train.loss.name': '{self.name}' does not fit the categorical head: CCC/MSE "
                            f"are dimensional losses, set with model.heads.dim_loss: {self.name} (with model.heads.dims)"
                            "; train.loss.name is one of ce, weighted_ce, focal, balanced_softmax")


@dataclass
class TrackingConfig:
    """Optional mirrors of the metric CSVs (which stay the source of truth)."""

    tensorboard: bool = False  # <run>/tensorboard/ event files
    wandb: bool = False  # Weights & Biases, offline mode, under <run>/wandb/
    every_steps: int = 50  # also the running loss and lr every N optimizer steps (0: per epoch only)


@dataclass
class TrainConfig:
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.01
    lr_overrides: dict[str, float] = field(default_factory=dict)  # parameter-name prefix -> lr
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 on CUDA, off on CPU
    best_metric: str = "macro_f1"
    best_mode: Literal["max", "min"] = "max"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    class_weights: ClassWeightsConfig = field(default_factory=ClassWeightsConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    init_from: str | None = None  # a checkpoint whose model weights initialise this run
    progress: bool = True
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # torch.compile the model in place (the same parameter names and checkpoints); the first steps compile
    # (tens of seconds or more), so it pays off in long runs (wavlm-base on a GPU: ~1.4x per step, BENCHMARKS)
    compile: bool = False


@dataclass
class EvalConfig:
    checkpoint: Literal["best", "last"] = "best"


@dataclass
class ExperimentConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
