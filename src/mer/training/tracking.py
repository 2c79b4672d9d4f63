"""Optional experiment tracking from the one loop: TensorBoard scalars and Weights & Biases in offline mode, both off
by default (`train.tracking`). The CSVs stay the source of truth; tracking only mirrors them (per epoch: the
training and validation rows; every `every_steps` optimizer steps: the mean training loss of the batches since the
last such point and the learning rate, on a global step count that a resumed run continues).

W&B never reaches the network from here: the run is offline (whatever WANDB_MODE says), needs no login or API key,
and is written under `<run>/wandb/`; its crash reports are off unless WANDB_ERROR_REPORTING says otherwise, and its
system monitor is not started. `wandb sync <run>/wandb/offline-run-*` uploads a run later, where wanted."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import yaml

from mer.config import RESOLVED_NAME
from mer.errors import UserError
from mer.schema import TrackingConfig

TB_DIR = "tensorboard"
WANDB_DIR = "wandb"
EPOCH_AXIS, STEP_AXIS = "epoch", "global_step"  # W&B x axes: epoch rows ("train/*", "val/*"), steps ("step/*")


def _require(key: str, module: str, package: str):
    if module == "wandb":  # before W&B is first imported: its crash reports would reach the network
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"config key 'train.tracking.{key}': needs the {package} package ({exc}); "
                        f"pip install {package}") from None


def check_tracking(cfg: TrackingConfig) -> None:
    """The enabled backends are installed and `every_steps` is valid: a one-line UserError naming the key, raised on
    every rank before a run folder exists."""
    if cfg.every_steps < 0:
        raise UserError(f"config key 'train.tracking.every_steps': expected >= 0 (0: per epoch only), "
                        f"got {cfg.every_steps!r}")
    if cfg.tensorboard:
        _require("tensorboard", "torch.utils.tensorboard", "tensorboard")
    if cfg.wandb:
        _require("wandb", "wandb", "wandb")


def _wandb_run(run_dir: Path, run_name: str):
    wandb = _require("wandb", "wandb", "wandb")
    settings = wandb.Settings(mode="offline", x_disable_stats=True, console="off")
    resolved = run_dir / RESOLVED_NAME  # the run's config, for W&B's run table once synced
    config = yaml.safe_load(resolved.read_text(encoding="utf-8")) if resolved.is_file() else None
    run = wandb.init(dir=str(run_dir), project=os.environ.get("WANDB_PROJECT", "mer"), mode="offline",
                     name=run_name or run_dir.name, config=config, settings=settings)
    # W&B's own step must only grow: the epoch rows and the every-N-steps scalars each get their own x axis
    run.define_metric(EPOCH_AXIS)
    run.define_metric(STEP_AXIS)
    for prefix, axis in (("train", EPOCH_AXIS), ("val", EPOCH_AXIS), ("step", STEP_AXIS)):
        run.define_metric(f"{prefix}/*", step_metric=axis)
    return run


class Tracker:
    """Writes scalars to the enabled backends; a no-op when none is, or when `main` is False (a torchrun rank other
    than 0, which still checks that the backends are installed so that every rank fails alike)."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path, run_name: str = "", main: bool = True,
                 start_step: int = 0) -> None:
        check_tracking(cfg)
        self.cfg, self.tb, self.wandb = cfg, None, None
        self.global_step = start_step  # optimizer steps so far (a resumed run starts after its finished epochs)
        self._loss_sum, self._loss_n = 0.0, 0  # the batches since the last logged step
        if not main:
            return
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(Path(run_dir) / TB_DIR))
        if cfg.wandb:
            self.wandb = _wandb_run(Path(run_dir), run_name)

    @property
    def active(self) -> bool:
        return self.tb is not None or self.wandb is not None

    def log(self, scalars: dict, step: int, axis: str = EPOCH_AXIS) -> None:
        scalars = {k: float(v) for k, v in scalars.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log({axis: step, **scalars})

    def log_epoch(self, epoch: int, train_row: dict, val_row: dict) -> None:
        self.log({f"train/{k}": v for k, v in train_row.items() if k != "epoch"}
                 | {f"val/{k}": v for k, v in val_row.items() if k != "epoch"}, epoch)

    def log_batch(self, loss: float, n: int, stepped: bool, lr: float) -> None:
        """One training batch of `n` samples with mean loss `loss`; `stepped`: the optimizer stepped after it."""
        if not self.active or not self.cfg.every_steps:
            return
        self._loss_sum, self._loss_n = self._loss_sum + loss * n, self._loss_n + n
        if stepped:
            self.global_step += 1
            if self.global_step % self.cfg.every_steps == 0:
                self.log({"step/loss": self._loss_sum / max(1, self._loss_n), "step/lr": lr}, self.global_step,
                         axis=STEP_AXIS)
                self._loss_sum, self._loss_n = 0.0, 0

    def close(self, failed: bool = False) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish(exit_code=1 if failed else 0)
            self.wandb = None
