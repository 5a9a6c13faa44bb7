"""The LR a run actually applies (read from the optimizer after each update, not from the schedule) against the
schedule its flags and folder name promise; a schedule that cannot happen in the run is said in its first lines."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchscale.cli import train_config
from batchscale.training.loop import Hook, Trainer, train


class AppliedLR(Hook):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    @contextlib.contextmanager
    def update(self, trainer: Trainer, step: int) -> Iterator[None]:
        yield
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


def run(data: Path, log_dir: Path, *flags: str) -> tuple[list[float], dict]:
    spy = AppliedLR()
    config = train_config(["--train-dir", str(data), "--val-dir", str(data), "--log-dir", str(log_dir),
                           "--no-download", "--no-cuda", "--no-progress", "--width", "4", "--tta", "none", *flags])
    return spy.lrs, train(config, [spy])


def test_a_recipes_warmup_is_a_share_of_a_shorter_run_so_its_peak_is_reached(tiny_cifar, tmp_path, capsys):
    # 320 images at batch 32: 10 steps an epoch, 30 in all. fast94 warms up over its first 20%, then falls to 0.
    lrs, _ = run(tiny_cifar, tmp_path / "run", "--recipe", "fast94", "--batch-size", "32", "--epochs", "3")
    assert len(lrs) == 30
    top = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(0.2) and top == 6  # the printed peak, after 20% of the 30 steps
    assert all(a < b for a, b in zip(lrs[:top], lrs[1 : top + 1]))  # ramping up to it
    assert all(a > b for a, b in zip(lrs[top:], lrs[top + 1 :])) and lrs[-1] < 0.02  # then decaying towards 0
    assert "warning" not in capsys.readouterr().out


def test_a_recipes_warmup_given_as_a_flag_is_kept_and_its_unreachable_peak_said(tiny_cifar, tmp_path, capsys):
    lrs, _ = run(tiny_cifar, tmp_path / "run", "--recipe", "fast94", "--batch-size", "32", "--epochs", "3",
                 "--warmup-epochs", "5.2")
    assert max(lrs) < 0.2 * 0.7 and lrs == sorted(lrs)  # all ramp: 52 warmup steps, 30 trained
    out = capsys.readouterr().out
    assert "never reaches its peak 0.2" in out and "onecycle decay never starts" in out
    assert "--warmup-epochs below --epochs (e.g. 0.6)" in out


def test_a_default_warmup_longer_than_the_run_is_said_as_the_lr_stays_flat(tiny_cifar, tmp_path, capsys):
    # A one-worker quick run: --warmup-epochs 5 (the default) over a 1-epoch cosine run.
    lrs, summary = run(tiny_cifar, tmp_path / "{run}", "--batch-size", "32", "--epochs", "1")
    assert lrs == [0.1] * 10  # no decay at all, though the folder says cosine
    assert "cosine" in Path(summary["config"]["log_dir"]).name
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "stays at 0.1 throughout and the cosine decay never starts" in warnings[0]
    assert "--warmup-epochs below --epochs (e.g. 0)" in warnings[0]


def test_the_suggested_flags_give_the_named_schedule_and_no_warning(tiny_cifar, tmp_path, capsys):
    lrs, _ = run(tiny_cifar, tmp_path / "run", "--batch-size", "32", "--epochs", "1", "--warmup-epochs", "0")
    # Cosine over 10 steps, from the brute-force definition: half a cosine period from 0.1 to 0.
    assert lrs == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)])
    assert "warning" not in capsys.readouterr().out


def test_step_decays_all_past_the_end_are_said(tiny_cifar, tmp_path, capsys):
    lrs, _ = run(tiny_cifar, tmp_path / "run", "--batch-size", "32", "--epochs", "2", "--warmup-epochs", "0",
                 "--lr-schedule", "step")
    assert set(lrs) == {0.1}
    assert "--lr-decay-epochs 30,60,80 are all at or past --epochs 2" in capsys.readouterr().out


def test_the_warning_names_each_unreachable_schedule_and_only_those():
    from batchscale.config import Config
    from batchscale.schedule import LRSchedule
    from batchscale.training.report import unreachable_schedule

    def said(replicas: int = 1, steps: int = 10, **flags) -> str | None:
        config = Config(**flags)
        return unreachable_schedule(config, LRSchedule.from_config(config, replicas, steps, 1), steps * config.epochs)

    # Four workers: a ramp from 0.1 to 0.4 over 50 steps, cut at 30: the last LR is 0.1 + 0.3 * 29 / 50.
    line = said(replicas=4, epochs=3)
    assert line is not None and "ramps from 0.1 to 0.274 and never reaches its peak 0.4" in line
    assert "--warmup-epochs below --epochs (e.g. 0.6)" in line and "cosine decay never starts" in line
    assert said(replicas=4, epochs=6) is None  # 50 warmup steps of 60: the peak and the decay both happen
    assert said(epochs=6, warmup_steps=60) is not None and "--warmup-steps below 60 (e.g. 0)" in said(epochs=6, warmup_steps=60)
    assert said(epochs=3, lr_schedule="constant") is None  # flat warmup, constant schedule: runs as named
    line = said(replicas=2, epochs=3, lr_schedule="constant")
    assert line is not None and "never reaches its peak 0.2" in line and "--lr-schedule constant" not in line
    assert said(epochs=6, warmup_epochs=0, lr_schedule="step", lr_decay_epochs=(3, 8)) is None  # epoch 3 decays
    assert "are all at or past --epochs 3" in said(epochs=3, warmup_epochs=0, lr_schedule="step", lr_decay_epochs=(3,))
