"""The run's evaluations and when they happen: the target split inside an epoch whenever the trial
(`state.trial`) asks for a look (quick ones at a part of it, a whole one near the target), and the test set
and the held-out images at each epoch's end. Each is recorded with the trial, which decides when the next is due
and when the run has reached its target."""

from __future__ import annotations

from typing import Any

from ..parallel import Backend
from ..state import TrainState
from .setup import Splits
from .step import Stepper

Scores = tuple[float, float, tuple[float, float] | None]  # test loss and accuracy, and the holdout's (if any)


class Evaluation:
    def __init__(self, stepper: Stepper, splits: Splits, backend: Backend, state: TrainState) -> None:
        self.stepper, self.splits, self.backend, self.state = stepper, splits, backend, state

    def due(self, step: int, last: bool) -> bool:
        """Whether the trial looks at its target after update `step` inside the epoch; not after the epoch's `last`
        (its end evaluates anyway)."""
        return not last and self.state.trial.due(step)

    def inside_epoch(self, step: int, epoch_seconds: float) -> None:
        """Evaluates the target split (or its quick part) inside an epoch; the trial may end here (the loop then
        ends the epoch)."""
        state, model = self.state, self.stepper.model
        self.backend.average_buffers(model)
        before = state.history[-1]["train_seconds"] if state.history else 0.0
        while state.trial.due(step):  # a quick look that comes near the target is followed by a whole one
            full = state.trial.fine
            loss, acc = self.stepper.evaluate(self.splits.target if full else self.splits.quick)
            state.trial.record(step, acc, full, loss=loss, examples=state.clock.images,
                               b_simple=state.noise.b_simple, b_simple_se=state.noise.standard_error,
                               train_seconds=before + epoch_seconds)
        model.train()

    def at_epoch_end(self) -> Scores:
        val_loss, val_acc = self.stepper.evaluate(self.splits.test)
        held = self.stepper.evaluate(self.splits.holdout) if self.splits.holdout else None
        return val_loss, val_acc, held

    def record_epoch(self, lr: float, totals: tuple[float, float, float], seconds: float, wall: float,
                     scores: Scores) -> dict[str, Any]:
        """The open epoch's line of metrics.jsonl (its last step at `lr`), from the workers' `totals` (loss sum,
        correct, images) over `seconds` of training and `wall` seconds since the last; its images and the examples
        so far from the clock; its score on the target split goes to the trial."""
        state, (train_loss, train_correct, summed), (val_loss, val_acc, held) = self.state, totals, scores
        step, images = state.clock.step, state.clock.epoch_images
        before = state.history[-1] if state.history else {"train_seconds": 0.0, "wall_seconds": 0.0}
        record = {
            "epoch": state.epoch + 1, "step": step, "lr": lr,
            "train_loss": train_loss / summed, "train_acc": train_correct / summed, "val_loss": val_loss,
            "val_acc": val_acc, "images": images, "epoch_seconds": seconds,
            "images_per_sec": images / seconds, "train_seconds": before["train_seconds"] + seconds,
            "wall_seconds": before["wall_seconds"] + wall,
            # B_simple now (the last --noise-window examples) and the run's average (every pair since the start)
            "noise_scale": state.noise.b_simple, "noise_scale_se": state.noise.standard_error,
            "noise_scale_run": state.noise.run_b_simple, "noise_pairs": state.noise.updates,
        }
        if held is not None:
            record.update(holdout_loss=held[0], holdout_acc=held[1])
        state.trial.record(step, held[1] if held else val_acc, loss=held[0] if held else val_loss,
                           examples=state.clock.images, b_simple=record["noise_scale"],
                           b_simple_se=record["noise_scale_se"], train_seconds=record["train_seconds"])
        return record
