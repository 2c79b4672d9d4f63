"""Best-metric tracking and early stopping: `patience` (the default) and `hybrid`.

- patience: stop after `patience` epochs without a `min_delta` improvement of the metric; best = best metric.
- hybrid: the simple moving average (SMA) of the metric over the last `window` epochs (filling gradually: the mean
  of what there is) is what must improve: stop after `patience` epochs without an SMA improvement (or, with
  patience None, never for that reason), or at once when the validation loss exceeds the minimum so far times
  `loss_threshold`. The best epoch (best.pt) is the epoch of the best SMA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class EarlyStopping:
    """Tracks the best value of a metric; `should_stop` says when to stop (see the module doc)."""

    patience: int | None
    min_delta: float = 0.0
    mode: str = "max"
    best: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    rule: str = "patience"  # patience | hybrid
    window: int = 5
    loss_threshold: float = 1.05
    history: list[float] = field(default_factory=list)
    min_loss: float = math.inf
    loss_exceeded: bool = False

    def __post_init__(self) -> None:
        if self.mode == "min" and self.best == -math.inf:
            self.best = math.inf

    def improved(self, value: float) -> bool:
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def tracked(self, value: float) -> float:
        """What is compared: the value itself, or (hybrid) the SMA of the last `window` values including it."""
        if self.rule != "hybrid":
            return float(value)
        recent = [*self.history, float(value)][-self.window:]
        return sum(recent) / len(recent)

    def update(self, value: float, epoch: int, loss: float | None = None) -> bool:
        """Record the epoch's metric (and validation loss); True when the tracked value is a new best."""
        tracked = self.tracked(value)
        self.history.append(float(value))
        if self.rule == "hybrid" and loss is not None and math.isfinite(loss):
            if self.min_loss < math.inf and loss > self.min_loss * self.loss_threshold:
                self.loss_exceeded = True
            self.min_loss = min(self.min_loss, float(loss))
        if self.improved(tracked):
            self.best, self.best_epoch, self.bad_epochs = float(tracked), epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.loss_exceeded or (self.patience is not None and self.bad_epochs >= self.patience)

    @property
    def reason(self) -> str:
        if self.loss_exceeded:
            return f"validation loss above {self.loss_threshold:g} x its minimum {self.min_loss:.4f}"
        what = f"its {self.window}-epoch moving average" if self.rule == "hybrid" else "it"
        return f"no improvement of {what} for {self.bad_epochs} epochs"

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "history": list(self.history), "min_loss": self.min_loss, "loss_exceeded": self.loss_exceeded}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self.history = [float(v) for v in state.get("history", [])]
        self.min_loss = float(state.get("min_loss", math.inf))
        self.loss_exceeded = bool(state.get("loss_exceeded", False))
