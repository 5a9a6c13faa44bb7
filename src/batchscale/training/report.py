"""What a run says about itself: its first lines (what trains where, how it ends, what a resume changed) and
its summary."""

from __future__ import annotations

from typing import Any, Protocol

from ..config import Config
from ..data import TrainBatches
from ..metrics import RunLog, summarize
from ..parallel import Backend
from ..schedule import LRSchedule
from ..state import TrainState
from .checkpointer import Checkpointer
from .setup import Splits, device_name
from .step import Stepper


class Trainer(Protocol):
    """What a report reads of a run (loop.Trainer has it): the loop calls this module, which never imports it."""

    config: Config
    backend: Backend
    state: TrainState
    schedule: LRSchedule
    checkpointer: Checkpointer
    log: RunLog
    batches: TrainBatches
    splits: Splits
    stepper: Stepper
    simulated: int
    workers: int
    parameters: int

    def total_steps(self) -> int: ...

    def finished(self) -> bool: ...


def announce(trainer: Trainer) -> None:
    """The run's first lines: what trains where, how it ends, and what a resume changed."""
    state, config, backend, schedule = trainer.state, trainer.config, trainer.backend, trainer.schedule
    resumed_from, say = trainer.checkpointer.resumed_from, trainer.log.say
    simulating = f", simulating {trainer.simulated} workers" if trainer.simulated > 1 else ""
    resumed = f", {trainer.total_steps()} steps in all"
    if resumed_from is not None and trainer.finished():
        resumed = (f"; already complete ({state.epoch} epoch(s) in {resumed_from.parent}): nothing to train. "
                   "Another --log-dir or --no-resume starts a new run")
    elif resumed_from is not None:
        resumed = f"; resumed from {resumed_from} after epoch {state.epoch}"
        resumed += f", step {state.epoch_step}" if state.epoch_step else ""
    say(f"batchscale: {config.model} ({trainer.parameters / 1e6:.2f}M parameters) on {backend.world_size} x "
        f"{backend.device.type} ({backend.name}{simulating}), global batch {trainer.batches.global_batch}, "
        f"{trainer.batches.epoch_images // trainer.batches.global_batch} steps/epoch, peak lr {schedule.peak_lr:.4g}{resumed}")
    split = f"{config.holdout} held-out images" if config.holdout else "the test set"
    ends = ([f"at {100 * config.target_accuracy:g}% accuracy on {split}"] if config.stop_at_target else []) + \
           ([f"after {config.max_steps} steps"] if config.max_steps else [])
    if ends:
        say(f"trial: ends {' or '.join(ends)}")
    new = [c for c in state.changes if c["step"] == state.clock.step]
    if new and resumed_from is not None:
        listed = ", ".join(f"{c['setting']} {c['from']!r} -> {c['to']!r}" for c in new)
        say(f"note: from step {new[0]['step']} on this run uses {listed} (recorded in summary.json)")
    if config.warmup_epochs >= config.epochs and schedule.peak_lr != schedule.base_lr:
        say(f"warning: --warmup-epochs {config.warmup_epochs:g} covers the whole run; the LR never reaches its peak")


def summary(trainer: Trainer) -> dict[str, Any]:
    """summary.json: the figures `metrics.summarize` derives from the epochs, and what only the trainer knows (the
    precision, the device, compiling, what a resume changed, the trial)."""
    state, stepper = trainer.state, trainer.stepper
    made = summarize(trainer.config, trainer.backend.name, trainer.workers, state.history, trainer.parameters,
                     state.clock.whole_epochs)
    made.update(noise_scale_note=stepper.noise_note(state.noise))
    made.update(precision=stepper.precision.name, device=device_name(trainer.backend.device),
                compile_seconds=stepper.compile_seconds, cuda_graphs_skipped=stepper.skipped,
                changes=state.changes, config={**made["config"], **state.config},
                trial={**state.trial.summary(), "split": "holdout" if trainer.splits.holdout else "test"})
    return made
