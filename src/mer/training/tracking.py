"""Optional experiment tracking from the one loop: TensorBoard scalars and Weights & Biases in offline mode, both off
by default (`train.tracking`). The CSVs stay the source of truth; tracking only mirrors them (per epoch: the
training and validation rows; every `every_steps` steps: the running loss and the learning rate)."""

from __future__ import annotations

import os
from pathlib import Path

from mer.errors import UserError
from mer.schema import TrackingConfig

TB_DIR = "tensorboard"
WANDB_DIR = "wandb"


class Tracker:
    """Writes scalars to the enabled backends; a no-op when none is."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path, run_name: str = "") -> None:
        self.cfg, self.tb, self.wandb = cfg, None, None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise UserError(f"config key 'train.tracking.tensorboard': needs the tensorboard package ({exc}); "
                                "pip install tensorboard") from None
            self.tb = SummaryWriter(log_dir=str(Path(run_dir) / TB_DIR))
        if cfg.wandb:
            try:
                import wandb
            except ImportError as exc:
                raise UserError(f"config key 'train.tracking.wandb': needs the wandb package ({exc}); "
                                "pip install wandb") from None
            os.environ.setdefault("WANDB_MODE", "offline")  # never the network unless the user says so
            self.wandb = wandb.init(dir=str(run_dir), name=run_name or Path(run_dir).name, mode="offline",
                                    reinit=True)

    @property
    def active(self) -> bool:
        return self.tb is not None or self.wandb is not None

    def log(self, scalars: dict, step: int) -> None:
        scalars = {k: float(v) for k, v in scalars.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def log_epoch(self, epoch: int, train_row: dict, val_row: dict) -> None:
        self.log({f"train/{k}": v for k, v in train_row.items() if k != "epoch"}
                 | {f"val/{k}": v for k, v in val_row.items() if k != "epoch"}, epoch)

    def log_step(self, step: int, loss: float, lr: float) -> None:
        if self.cfg.every_steps and step % self.cfg.every_steps == 0:
            self.log({"step/loss": loss, "step/lr": lr}, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
