"""The tests' kill-and-resume: a training CLI run that dies at the start of an epoch (after the previous epoch's
checkpoint), then the same command with `--resume`."""

from __future__ import annotations

from pathlib import Path

from mer.errors import run_cli
from mer.training.loop import Trainer


def killed_then_resumed(main, config: Path, epoch: int, monkeypatch) -> None:
    """`main --config config` killed (KeyboardInterrupt: exit 130) when epoch `epoch` starts, then resumed (exit 0)."""
    real_epoch = Trainer._train_epoch

    def killed(self, e):
        if e == epoch:
            raise KeyboardInterrupt  # the process dies here, after the previous epoch's checkpoint
        return real_epoch(self, e)

    monkeypatch.setattr(Trainer, "_train_epoch", killed)
    assert run_cli(main, ["--config", str(config)]) == 130
    monkeypatch.setattr(Trainer, "_train_epoch", real_epoch)
    assert run_cli(main, ["--config", str(config), "--resume"]) == 0
