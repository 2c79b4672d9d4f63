"""The one training loop, shared by the feature models (train.py) and the end-to-end models (train_hf_e2e.py).

A model takes a batch dict and returns logits; a dataset exposes `label_ids` (int64 per row) and `meta` (row
dicts with at least `dataset`) and yields batch dicts with a `label` tensor. Everything else — optimiser, schedule,
precision, accumulation, clipping, EMA, early stopping, sampling, augmentation, checkpoints, per-epoch CSVs and
exact resume — lives here.

Under torchrun (`mer.distributed`) the model is wrapped in DistributedDataParallel. Every rank draws the same global
batches (batch size x world size) from the same sampler and trains on its contiguous part of each, its loss weighted
by its share so that the averaged gradient is the global batch's; inner accumulation steps skip the gradient sync
(`no_sync`). Validation is split across ranks and its predictions gathered, so metrics, early stopping, the
scheduler and EMA decide the same everywhere. Rank 0 alone writes checkpoints, CSVs and tracking; `last.pt` holds
every rank's RNG states, so a resume with the same world size is exact.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from mer import distributed
from mer.errors import UserError
from mer.io import FolderLock, remove_stale_temps
from mer.models.heads import logits_of
from mer.runtime import Precision, release_free_memory, rng_state, set_rng_state
from mer.schema import HeadsConfig, TrainConfig
from mer.training.augmentation import augment_batch
from mer.training.checkpoint import (
    AUG_GEN_KEY,
    EARLY_STOPPING_KEY,
    EMA_KEY,
    EPOCH_KEY,
    LABELS_KEY,
    MODEL_KEY,
    OPTIMIZER_KEY,
    RANKS_KEY,
    RESUME_KEYS,
    RNG_KEY,
    SAMPLE_GEN_KEY,
    SCALER_KEY,
    SCHEDULER_KEY,
    VAL_METRICS_KEY,
    load_checkpoint,
    save_checkpoint,
)
from mer.training.early_stopping import EarlyStopping
from mer.training.ema import make_ema
from mer.training.history import append_csv_row, truncate_csv
from mer.training.losses import aux_loss, build_loss, class_weights
from mer.training.samplers import build_sampler
from mer.training.schedulers import build_scheduler
from mer.training.tracking import Tracker

MetricsFn = Callable[[np.ndarray, np.ndarray], dict]
RANK_SEED_STRIDE = 7919  # rank r > 0 seeds its augmentation and dropout draws with seed + r * stride
PROGRESS_LINES = 10  # plain progress lines per epoch when the output is not a terminal
BatchSamplerFn = Callable[[Dataset, Sampler, int], Iterable[list[int]]]
# A training-batch augmentation drawing from the loop's seeded generator (saved in last.pt: exact resume). It may
# return mixed inputs with `label_b` + `mix_lambda` (mixup); the loss then mixes the two labels' losses.
AugmentFn = Callable[[dict, torch.Generator], dict]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


@dataclass
class FitResult:
    best_epoch: int
    best_value: float
    epochs_run: int
    stopped_early: bool
    history: list[dict] = field(default_factory=list)


def is_terminal(stream) -> bool:
    """Whether `stream` is an interactive terminal (a progress bar's \r redraws belong there, not in a log)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


HOST_KEYS = frozenset({"index"})  # bookkeeping the CPU reads (batch contract): never moved, so reading it never waits


def move_to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on `device` (asynchronous copies), except the host-side keys (`HOST_KEYS`)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and k not in HOST_KEYS else v)
            for k, v in batch.items()}


def split_lr_overrides(model: nn.Module, overrides: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """`train.lr_overrides` checked against the model: (the prefixes that name trainable parameters, the prefixes
    that name only frozen ones — e.g. encoder rates inherited by a stage that freezes the encoders — to ignore).
    A prefix that names no parameter at all is an error listing the model's prefixes. Entry points call it
    before creating the run directory, so a typo writes nothing."""
    names = [(n, p.requires_grad) for n, p in model.named_parameters()]
    kept, ignored = {}, []
    for prefix, lr in overrides.items():
        if any(n.startswith(prefix) and trainable for n, trainable in names):
            kept[prefix] = lr
        elif any(n.startswith(prefix) for n, _ in names) or prefix in getattr(model, "PARAM_GROUP_PREFIXES", {}):
            ignored.append(prefix)  # frozen, or a part this model's mode does not build (text encoder in mode A)
        else:
            known = getattr(model, "param_group_prefixes", None)
            hint = f" (this model's prefixes: {', '.join(known())})" if callable(known) else ""
            raise UserError(f"config key 'train.lr_overrides.{prefix}': no parameter name starts with it{hint}")
    return kept, ignored


def param_groups(model: nn.Module, lr: float, weight_decay: float, lr_overrides: dict[str, float]) -> list[dict]:
    """AdamW groups: no weight decay for biases, norms and embeddings (tensors of < 2 dims); per-prefix learning
    rates from `lr_overrides` (the longest matching parameter-name prefix wins; see `split_lr_overrides`)."""
    kept, _ = split_lr_overrides(model, lr_overrides)
    prefixes = sorted(kept, key=len, reverse=True)
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        decay = param.ndim >= 2 and "embed" not in name.lower()
        groups.setdefault((kept[prefix] if prefix else lr, decay), []).append(param)
    if not groups:
        raise UserError("the model has no trainable parameters")
    return [{"params": ps, "lr": g_lr, "weight_decay": weight_decay if decay else 0.0}
            for (g_lr, decay), ps in groups.items()]


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[dict], device: torch.device, precision: Precision,
            progress: bool = False, desc: str = "eval", criterion: nn.Module | None = None,
            outputs: dict | None = None, total_loss=None,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Run `model` over `loader` in eval mode: (dataset positions, labels, softmax probabilities, losses).

    `losses` holds `loss`, the mean of `criterion` (the training criterion: class weights, label smoothing or
    focal loss as configured; plain cross-entropy when None; `total_loss(out, batch)` instead when given, e.g. with
    auxiliary heads), and `ce`, the mean plain cross-entropy. With `outputs` (a dict), the auxiliary head outputs
    of a model with heads (`dims`, `gender` probabilities, `dims` / `dims_mask` / `gender` targets) are collected
    into it as numpy arrays, in the batches' order (the positions are the first return value)."""
    model.eval()
    idx, labels, probs, loss_sum, ce_sum, n = [], [], [], 0.0, 0.0, 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not (progress and is_terminal(sys.stderr))):
        batch = move_to_device(batch, device)
        with precision.autocast(device):
            out = model(batch)
        logits = logits_of(out).float()
        bs = logits.shape[0]
        ce = nn.functional.cross_entropy(logits, batch["label"], reduction="sum").item()
        ce_sum += ce
        if total_loss is not None:
            loss_sum += total_loss(out, batch).item() * bs
        else:
            loss_sum += criterion(logits, batch["label"]).item() * bs if criterion is not None else ce
        if outputs is not None and isinstance(out, dict):
            for key in ("dims", "gender"):
                if key in out:
                    value = out[key].float()
                    outputs.setdefault(key, []).append((value if key == "dims" else torch.softmax(value, -1)).cpu())
            for key in ("dims", "dims_mask", "gender"):
                if key in batch:
                    outputs.setdefault(f"target_{key}", []).append(batch[key].cpu())
        n += bs
        idx.append(batch["index"].cpu())
        labels.append(batch["label"].cpu())
        probs.append(torch.softmax(logits, dim=-1).cpu())
    if n == 0:
        raise UserError("cannot evaluate an empty view")
    if outputs is not None:
        for key in list(outputs):
            if isinstance(outputs[key], list):
                outputs[key] = torch.cat(outputs[key]).numpy()
    return (torch.cat(idx).numpy(), torch.cat(labels).numpy(), torch.cat(probs).numpy(),
            {"loss": loss_sum / n, "ce": ce_sum / n})


def default_batch_sampler(dataset: Dataset, sampler: Sampler, batch_size: int) -> Iterable[list[int]]:
    return BatchSampler(sampler, batch_size, drop_last=False)


PREFETCH_BATCHES = 2  # batches each DataLoader worker keeps ready ahead of the loop


class _Loader(DataLoader):
    """A DataLoader whose workers persist from one pass to the next, yet which draws from torch's global
    generator on every pass as a fresh loader does (one base seed per pass): the run's random stream, and so its
    exact resume, is the same as with a new loader each pass. The workers keep their own generators between
    passes (no draw of a persistent loader's items is affected: evaluation items do not draw, and the training
    loader is made anew every epoch)."""

    def __iter__(self):
        if self.persistent_workers and self.num_workers > 0 and self._iterator is not None:
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # what a fresh iterator draws
        return super().__iter__()


def make_loader(dataset: Dataset, batch_sampler: Iterable[list[int]], collate_fn, num_workers: int,
                device: torch.device | None = None) -> DataLoader:
    """The loop's DataLoader over given batches. Batches go to page-locked memory (`pin_memory`: faster,
    asynchronous copies) only when they are bound for a CUDA device (`device`; None: when CUDA is available);
    with `num_workers` > 0 the workers persist between passes and each keeps `PREFETCH_BATCHES` batches ready."""
    pin = (device.type == "cuda") if device is not None else torch.cuda.is_available()
    workers = {"persistent_workers": True, "prefetch_factor": PREFETCH_BATCHES} if num_workers > 0 else {}
    return _Loader(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn, num_workers=num_workers,
                   pin_memory=pin, **workers)


def optimizer_options(device: torch.device) -> dict:
    """AdamW's implementation: the fused kernel on CUDA; on the CPU the multi-tensor (foreach) one, which gives
    the same numbers as the per-tensor default, bit for bit, in fewer ops (the fused CPU kernel rounds
    differently, so it is not used: CPU runs stay as they were)."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


class Trainer:
    """Trains `model` on `train_set`, validates on `val_set` every epoch, writes checkpoints and metric CSVs."""

    def __init__(self, model: nn.Module, train_set: Dataset, val_set: Dataset, cfg: TrainConfig, *,
                 run_dir: Path, labels: list[str], mode: str, device: torch.device, precision: Precision,
                 metrics_fn: MetricsFn, batch_size: int, eval_batch_size: int, collate_fn=None,
                 num_workers: int = 0, seed: int = 0, checkpoint_extra: dict | None = None,
                 batch_sampler_fn: BatchSamplerFn = default_batch_sampler,
                 eval_batch_sampler_fn: BatchSamplerFn = default_batch_sampler,
                 augment_fn: AugmentFn | None = None, heads: HeadsConfig | None = None,
                 outputs_metrics_fn: Callable[[dict], dict] | None = None, train_stream=None):
        self.model = model.to(device)
        self.heads = heads or HeadsConfig()
        self.has_aux_heads = bool(self.heads.dims or self.heads.gender or not self.heads.categorical)
        self.outputs_metrics_fn = outputs_metrics_fn  # validation metrics of the auxiliary heads' outputs
        self.train_set, self.val_set, self.cfg = train_set, val_set, cfg
        self.run_dir, self.labels, self.mode = Path(run_dir), list(labels), mode
        self.device, self.precision, self.metrics_fn = device, precision, metrics_fn
        self.batch_size, self.collate_fn, self.num_workers = batch_size, collate_fn, num_workers
        self.checkpoint_extra = checkpoint_extra or {}
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.batch_sampler_fn = batch_sampler_fn
        self.augment_fn = augment_fn  # training batches only, on the device, after train.augment's feature steps
        # data.shards: the training batches come from mer.data.shard_stream.ShardStream (this rank's shards)
        self.train_stream = train_stream

        n_classes = len(labels)
        train_labels = np.asarray(train_set.label_ids, dtype=np.int64)
        cw = cfg.class_weights
        if cfg.loss.name == "weighted_ce" and cw.mode == "none":
            cw = dataclasses.replace(cw, mode="balanced")  # weighted_ce: balanced weights unless configured
        weight = class_weights(train_labels, n_classes, cw)
        self.criterion = build_loss(cfg.loss, weight.to(device) if weight is not None else None,
                                    np.bincount(train_labels, minlength=n_classes)).to(device)

        # The same sample order on every rank (each trains on its part of every global batch); augmentation and
        # dropout draws differ between ranks (rank 0 draws as a single process would).
        self.world = distributed.world()
        self.sample_gen = torch.Generator().manual_seed(seed)
        self.aug_gen = torch.Generator().manual_seed(seed + 1 + RANK_SEED_STRIDE * self.world.rank)
        if self.world.rank:
            torch.manual_seed(seed + RANK_SEED_STRIDE * self.world.rank)
        datasets = [row["dataset"] for row in train_set.meta]
        self.sampler = build_sampler(train_labels, datasets, cfg.sampler, self.sample_gen)
        self.global_batch = batch_size * self.world.size
        batches = (train_stream.steps_per_epoch if train_stream is not None
                   else math.ceil(len(train_set) / self.global_batch))
        self.steps_per_epoch = math.ceil(batches / cfg.grad_accum)

        for prefix in split_lr_overrides(model, cfg.lr_overrides)[1]:
            print(f"train.lr_overrides.{prefix}: not used, those parameters are frozen or not in this mode")
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.weight_decay, cfg.lr_overrides),
                                           lr=cfg.lr, **optimizer_options(device))
        if cfg.compile:  # in place: the module's forward is compiled, its parameter names (checkpoints) unchanged
            self.model.compile()
        self.scheduler = build_scheduler(self.optimizer, cfg.scheduler, self.steps_per_epoch, cfg.epochs, cfg.lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
        self.ema = make_ema(self.model, cfg.ema.decay) if cfg.ema.enabled else None
        es = cfg.early_stopping
        self.early = EarlyStopping(es.patience, es.min_delta, cfg.best_mode, rule=es.mode, window=es.window,
                                   loss_threshold=es.loss_threshold)
        self.start_epoch = 1
        self.tracker: Tracker | None = None  # set while fit() runs
        self._lock = FolderLock(self.run_dir)  # held (by rank 0) from resume() / fit() to the end of fit()
        self.ddp = None
        if self.world.enabled:
            self.ddp = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=True)  # e.g. a modality dropped for a batch

        # each rank validates its slice of the view; the predictions are gathered (`_validate`)
        val_rows = list(distributed.shard_range(len(val_set), self.world.rank, self.world.size))
        self.val_loader = (make_loader(val_set, eval_batch_sampler_fn(val_set, val_rows, eval_batch_size),
                                       collate_fn, num_workers) if val_rows else None)

    # ---------------------------------------------------------------- state
    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _last_state(self, epoch: int) -> dict:
        """What `last.pt` holds; a collective under torchrun (every rank's RNG states are gathered into it)."""
        ranks = distributed.all_gather({RNG_KEY: rng_state(), AUG_GEN_KEY: self.aug_gen.get_state()})
        return {
            EPOCH_KEY: epoch,
            MODEL_KEY: self.model.state_dict(),
            OPTIMIZER_KEY: self.optimizer.state_dict(),
            SCHEDULER_KEY: self.scheduler.state_dict() if self.scheduler is not None else {},
            SCALER_KEY: self.scaler.state_dict(),
            EMA_KEY: self.ema.state_dict() if self.ema is not None else {},
            EARLY_STOPPING_KEY: self.early.state_dict(),
            RNG_KEY: rng_state(),
            SAMPLE_GEN_KEY: self.sample_gen.get_state(),
            AUG_GEN_KEY: self.aug_gen.get_state(),
            LABELS_KEY: self.labels,
            **({RANKS_KEY: ranks} if self.world.enabled else {}),
            **self.checkpoint_extra,
        }

    def _hold_run_dir(self) -> None:
        """Take the run folder's lock (a second process training the same run gets one line naming this one's
        pid) and remove the temporaries a killed save left behind. Rank 0 holds it for the run."""
        if self.world.is_main and not self._lock.held:
            self._lock.acquire()
            remove_stale_temps(self.run_dir)

    def resume(self) -> None:
        """Restore everything from `checkpoints/last.pt`; training continues with the next epoch."""
        self._hold_run_dir()
        try:
            self._resume()
        except BaseException:
            self._lock.release()
            raise

    def _resume(self) -> None:
        state = load_checkpoint(self.ckpt_dir / "last.pt", require=(EPOCH_KEY, *RESUME_KEYS))
        if list(state.get(LABELS_KEY, [])) != self.labels:
            raise UserError(f"cannot resume: {self.ckpt_dir / 'last.pt'} was trained on labels {state.get(LABELS_KEY)}")
        self.model.load_state_dict(state[MODEL_KEY])
        self.optimizer.load_state_dict(state[OPTIMIZER_KEY])
        if self.scheduler is not None and state[SCHEDULER_KEY]:
            self.scheduler.load_state_dict(state[SCHEDULER_KEY])
        self.scaler.load_state_dict(state[SCALER_KEY])
        if self.ema is not None and state[EMA_KEY]:
            self.ema.load_state_dict(state[EMA_KEY])
        self.early.load_state_dict(state[EARLY_STOPPING_KEY])
        self.sample_gen.set_state(state[SAMPLE_GEN_KEY])
        saved = len(state.get(RANKS_KEY) or [None])
        if saved != self.world.size:
            raise UserError(f"cannot resume: {self.ckpt_dir / 'last.pt'} was written by {saved} process(es), this "
                            f"run has {self.world.size}; resume with the same torchrun --nproc_per_node x --nnodes")
        mine = state[RANKS_KEY][self.world.rank] if self.world.enabled else state
        self.aug_gen.set_state(mine[AUG_GEN_KEY])
        set_rng_state(mine[RNG_KEY])
        self.start_epoch = int(state[EPOCH_KEY]) + 1
        if self.world.is_main:
            for name in ("metrics_train.csv", "metrics_val.csv"):
                truncate_csv(self.run_dir / name, int(state[EPOCH_KEY]))

    # ---------------------------------------------------------------- epochs
    def _train_epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        self.model.train()
        if self.train_stream is not None:  # streamed: this rank's batches and every step's real counts
            loader, counts, totals = self.train_stream.epoch_loader(epoch, self.collate_fn, self.num_workers)
        else:
            batches = self.batch_sampler_fn(self.train_set, self.sampler, self.global_batch)
            if self.world.enabled:  # this rank's part of each global batch, and how many real samples it holds
                global_batches = [list(b) for b in batches]
                totals = [len(b) for b in global_batches]
                parts = [distributed.shard_batch(b, self.world.rank, self.world.size) for b in global_batches]
                batches, counts = [p[0] for p in parts], [p[1] for p in parts]
            loader = make_loader(self.train_set, batches, self.collate_fn, self.num_workers)
        n_batches = len(loader)
        loss_sum, n_seen, y_true, y_pred = 0.0, 0, [], []
        self.optimizer.zero_grad(set_to_none=True)
        # A bar on a terminal; in a log file (no tty) a plain line every tenth of the epoch instead of \r fragments.
        on_tty = cfg.progress and is_terminal(sys.stderr) and self.world.is_main
        every = max(1, math.ceil(n_batches / PROGRESS_LINES)) if cfg.progress and not on_tty else 0
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not on_tty)
        # A step's loss is read (finite check, sums, progress) only after the next step has been launched, and the
        # predictions stay on the device until the epoch ends: on a GPU the CPU never waits for a step to finish
        # before queueing the next one. A non-finite loss still stops the run, one step later.
        pending = None

        def account(loss: torch.Tensor, bs: int, step: int, stepped: bool, lr: float) -> None:
            nonlocal loss_sum, n_seen
            loss_value = self._check_finite(loss, epoch, step)
            loss_sum += loss_value * bs
            n_seen += bs
            bar.set_postfix(loss=f"{loss_sum / max(1, n_seen):.4f}")
            if self.tracker is not None:
                self.tracker.log_batch(loss_value, bs, stepped=stepped, lr=lr)
            if every and (step % every == 0 or step == n_batches):
                print(f"epoch {epoch}/{cfg.epochs}  step {step}/{n_batches} ({step / n_batches:.0%})  "
                      f"loss {loss_sum / max(1, n_seen):.4f}  {time.perf_counter() - t0:.1f}s", flush=True)

        for step, batch in enumerate(bar, start=1):
            batch = augment_batch(batch, cfg.augment, self.mode, self.aug_gen)
            batch = move_to_device(batch, self.device)
            if self.augment_fn is not None:
                batch = self.augment_fn(batch, self.aug_gen)
            sync = step % cfg.grad_accum == 0 or step == n_batches
            # DDP: inner accumulation steps keep their gradients local (no all-reduce until the stepping batch)
            with self.ddp.no_sync() if self.ddp is not None and not sync else nullcontext():
                with self.precision.autocast(self.device):
                    out = (self.ddp or self.model)(batch)
                logits = logits_of(out)
                loss = self.total_loss(out, batch)
                # DDP averages the ranks' gradients: weight each rank's mean loss by its share of the global batch
                share = counts[step - 1] * self.world.size / totals[step - 1] if self.world.enabled else 1.0
                self.scaler.scale(loss * share / cfg.grad_accum).backward()
            if sync:
                self._optimizer_step()
            lr = self.optimizer.param_groups[0]["lr"]
            bs = counts[step - 1] if self.world.enabled else batch["label"].shape[0]
            y_true.append(batch["label"].detach()[:bs])
            y_pred.append(logits.detach().argmax(-1)[:bs])
            if pending is not None:
                account(*pending)
            pending = (loss.detach(), bs, step, sync, lr)
        if pending is not None:
            account(*pending)
        y_true, y_pred = torch.cat(y_true).cpu().numpy(), torch.cat(y_pred).cpu().numpy()
        if self.world.enabled:  # the epoch's figures over every rank's samples
            parts = distributed.all_gather((loss_sum, n_seen, y_true, y_pred))
            loss_sum, n_seen = sum(p[0] for p in parts), sum(p[1] for p in parts)
            y_true, y_pred = np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts])
        metrics = self.metrics_fn(y_true, y_pred)
        return {"epoch": epoch, "loss": loss_sum / max(1, n_seen), **_scalars(metrics),
                "lr": self.optimizer.param_groups[0]["lr"]}

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> float:
        """The loss as a float; a NaN or infinite one stops the run (under torchrun every rank stops at once when
        any rank has one)."""
        value = loss.item()
        bad = not math.isfinite(value)
        if distributed.any_rank(bad, self.device):
            last = self.ckpt_dir / "last.pt"
            kept = (f"The last good checkpoint is {last}" if last.is_file()
                    else "No checkpoint was written (it diverged before the end of the first epoch)")
            what = f"non-finite loss ({value})" if bad else "non-finite loss on another rank"
            raise TrainingDiverged(f"{what} at epoch {epoch}, step {step}; stopped. {kept} (lower train.lr or set "
                                   "train.grad_clip)")
        return value

    def total_loss(self, out, batch: dict) -> torch.Tensor:
        """The training objective: the class criterion (weighted; absent for a dimensional-only task) plus the
        auxiliary heads' weighted losses (`model.heads`)."""
        heads = self.heads
        loss = None
        if heads.categorical:
            loss = heads.weights.get("categorical", 1.0) * self.training_loss(logits_of(out).float(), batch)
        aux = aux_loss(out, batch, heads)
        if aux is not None:
            loss = aux if loss is None else loss + aux
        return loss

    def training_loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """The criterion on the batch's labels; after mixup (`label_b` + `mix_lambda` in the batch),
        lam * criterion(logits, label) + (1 - lam) * criterion(logits, label_b)."""
        loss = self.criterion(logits, batch["label"])
        if "mix_lambda" in batch and "label_b" in batch:
            lam = float(batch["mix_lambda"])
            loss = lam * loss + (1.0 - lam) * self.criterion(logits, batch["label_b"])
        return loss

    def _optimizer_step(self) -> None:
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        if self.scheduler is not None and self.cfg.scheduler.name == "cosine":
            self.scheduler.step()

    def _validate(self, epoch: int) -> dict:
        outputs: dict = {}
        if self.val_loader is None and not self.world.enabled:
            raise UserError("cannot evaluate an empty view")
        if self.val_loader is not None:
            _, y_true, probs, losses = predict(self._eval_model(), self.val_loader, self.device, self.precision,
                                               criterion=self.criterion, outputs=outputs,
                                               total_loss=self.total_loss if self.has_aux_heads else None)
        if self.world.enabled:  # every rank's slice of the view, gathered: the same metrics on every rank
            parts = [p for p in distributed.all_gather(
                (y_true, probs, losses, outputs) if self.val_loader is not None else None) if p is not None]
            if not parts:
                raise UserError("cannot evaluate an empty view")
            y_true, probs = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            sizes = [len(p[0]) for p in parts]
            losses = {k: sum(p[2][k] * n for p, n in zip(parts, sizes, strict=True)) / sum(sizes) for k in losses}
            outputs = {k: np.concatenate([p[3][k] for p in parts]) for k in parts[0][3]}
        metrics = self.metrics_fn(y_true, probs.argmax(-1))
        extra = self.outputs_metrics_fn(outputs) if self.outputs_metrics_fn is not None and outputs else {}
        return {"epoch": epoch, **losses, **_scalars(metrics), **extra}

    def fit(self) -> FitResult:
        """Train from `start_epoch` to `train.epochs` (or an early stop), holding the run folder's lock."""
        self._hold_run_dir()
        self.tracker = Tracker(self.cfg.tracking, self.run_dir, main=self.world.is_main,
                               start_step=(self.start_epoch - 1) * self.steps_per_epoch)
        done = False
        try:
            result = self._fit()
            done = True
            return result
        finally:
            self.tracker.close(failed=not done)
            self.tracker = None
            self._lock.release()

    def _fit(self) -> FitResult:
        cfg = self.cfg
        history: list[dict] = []
        stopped = False
        epoch = self.start_epoch - 1
        for epoch in range(self.start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            train_row = self._train_epoch(epoch)
            val_row = self._validate(epoch)
            train_row["time_s"] = round(time.perf_counter() - t0, 3)
            if cfg.best_metric not in val_row:
                raise UserError(f"config key 'train.best_metric': {cfg.best_metric!r} is not a validation metric "
                                f"(choose from {', '.join(k for k in val_row if k != 'epoch')})")
            value = float(val_row[cfg.best_metric])
            if self.scheduler is not None and cfg.scheduler.name == "plateau":
                if cfg.scheduler.metric not in val_row:
                    raise UserError(f"config key 'train.scheduler.metric': {cfg.scheduler.metric!r} is not a "
                                    f"validation metric")
                self.scheduler.step(float(val_row[cfg.scheduler.metric]))
            is_best = self.early.update(value, epoch, loss=float(val_row["loss"]))
            last_state = self._last_state(epoch)  # a collective under torchrun: every rank takes part
            if self.world.is_main:
                if is_best:
                    save_checkpoint({EPOCH_KEY: epoch, MODEL_KEY: self._eval_model().state_dict(),
                                     LABELS_KEY: self.labels, VAL_METRICS_KEY: val_row, **self.checkpoint_extra},
                                    self.ckpt_dir / "best.pt")
                append_csv_row(self.run_dir / "metrics_train.csv", train_row)
                append_csv_row(self.run_dir / "metrics_val.csv", val_row)
                self.tracker.log_epoch(epoch, train_row, val_row)
                save_checkpoint(last_state, self.ckpt_dir / "last.pt")
            del last_state
            history.append({"train": train_row, "val": val_row})
            mark = " *" if is_best else ""
            print(f"epoch {epoch:3d}  train loss {train_row['loss']:.4f}  val loss {val_row['loss']:.4f}  "
                  f"val {cfg.best_metric} {value:.4f}{mark}  ({train_row['time_s']:.1f}s)", flush=True)
            release_free_memory()  # memory kept for fast steps (tune_allocator) goes back between epochs
            if self.early.should_stop:
                stopped = True
                print(f"early stop: {cfg.best_metric}: {self.early.reason}")
                break
        return FitResult(self.early.best_epoch, self.early.best, epoch, stopped, history)


def init_from_checkpoint(model: nn.Module, path: str) -> tuple[int, int]:
    """Load the model weights of another run's checkpoint (`train.init_from`): (loaded, skipped) tensor counts.

    Tensors whose name and shape match are loaded; the rest keep their initialisation (a new head for another
    label set, an encoder the checkpoint's mode did not have). The matched weights must make up at least half of
    this model or half of the checkpoint: anything less means an unrelated checkpoint, an error.
    """
    try:
        state = load_checkpoint(path)[MODEL_KEY]
    except UserError as exc:
        raise UserError(f"config key 'train.init_from': {exc}") from None
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    size = sum(v.numel() for v in matched.values())
    share = max(size / max(1, sum(v.numel() for v in own.values())),
                size / max(1, sum(v.numel() for v in state.values())))
    if share < 0.5:
        raise UserError(f"config key 'train.init_from': {path} does not fit this model (its matching weights are "
                        f"{share:.0%} of the model or of the checkpoint; a checkpoint of another model?)")
    model.load_state_dict(matched, strict=False)
    return len(matched), len(own) - len(matched)


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k != "n"}
