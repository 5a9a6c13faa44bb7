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
        resumed = f"; resumed from {resumed_from} after {state.position()}"
    say(f"batchscale: {config.model} ({trainer.parameters / 1e6:.2f}M parameters) on {backend.world_size} x "
        f"{backend.device.type} ({backend.name}{simulating}), global batch {trainer.batches.global_batch}, "
        f"{trainer.batches.n} training images, {trainer.batches.epoch_images // trainer.batches.global_batch} "
        f"steps/epoch, peak lr {schedule.peak_lr:.4g}{resumed}")
    images = trainer.batches.n
    if config.train_subset > images:
        left = " left after --holdout" if config.holdout else ""
        say(f"note: --train-subset {config.train_subset} is more than the {images} training images{left}: "
            f"training on all {images} (summary.json records train_images {images})")
    split = f"{config.holdout} held-out images" if config.holdout else "the test set"
    ends = ([f"at {100 * config.target_accuracy:g}% accuracy on {split}"] if config.stop_at_target else []) + \
           ([f"after {config.max_steps} steps"] if config.max_steps else [])
    if ends:
        say(f"trial: ends {' or '.join(ends)}")
    new = [c for c in state.changes if c["step"] == state.clock.step]
    if new and resumed_from is not None:
        listed = ", ".join(f"{c['setting']} {c['from']!r} -> {c['to']!r}" for c in new)
        say(f"note: from step {new[0]['step']} on this run uses {listed} (recorded in summary.json)")
    warning = unreachable_schedule(config, schedule, trainer.total_steps())
    if warning and not (resumed_from is not None and trainer.finished()):
        say(warning)


def unreachable_schedule(config: Config, schedule: LRSchedule, total_steps: int) -> str | None:
    """One line when the LR schedule the flags name cannot happen in a run of `total_steps` steps: a warmup as long
    as the run (the LR never reaches its peak, or stays flat at it, and the decay never starts), or step decays all
    past the run's end. None when the schedule runs as named."""
    kind, peak = config.lr_schedule, schedule.peak_lr
    warmup = (f"--warmup-steps {config.warmup_steps}" if config.warmup_steps
              else f"--warmup-epochs {config.warmup_epochs:g}")
    start = schedule.base_lr if schedule.warmup_start_lr is None else schedule.warmup_start_lr
    ramps = start != peak
    warmup_steps = schedule.warmup_images // schedule.batch
    if warmup_steps >= total_steps and total_steps and (ramps or kind != "constant"):
        last = start + (peak - start) * (total_steps - 1) / warmup_steps
        lr = (f"the LR ramps from {start:.4g} to {last:.4g} and never reaches its peak {peak:.4g}" if ramps
              else f"the LR stays at {peak:.4g} throughout")
        decay = "" if kind == "constant" else f" and the {kind} decay never starts"
        # One worker's warmup is flat (base LR = peak LR): none is lost. A ramp keeps a fifth of the run.
        shorter = (f"--warmup-steps below {total_steps} (e.g. {total_steps // 5 if ramps else 0})" if config.warmup_steps
                   else f"--warmup-epochs below --epochs (e.g. {round(0.2 * config.epochs, 2) if ramps else 0:g})")
        one_lr = "" if kind == "constant" else ", or --lr-schedule constant to train at one LR"
        return (f"warning: the warmup ({warmup}, {warmup_steps} steps) is as long as the whole run "
                f"({total_steps} steps): {lr}{decay}; give {shorter}{' or' if not one_lr else ','} more "
                f"--epochs{one_lr}")
    if kind == "step" and all(e >= config.epochs for e in config.lr_decay_epochs):
        listed = ",".join(map(str, config.lr_decay_epochs))
        return (f"warning: --lr-decay-epochs {listed} are all at or past --epochs {config.epochs}: the step "
                f"schedule never decays and the LR stays at its peak {peak:.4g} once warmed up; give decay epochs below "
                f"{config.epochs}, or --lr-schedule cosine")
    return None


def summary(trainer: Trainer) -> dict[str, Any]:
    """summary.json: the figures `metrics.summarize` derives from the epochs, and what only the trainer knows (the
    precision, the device, compiling, what a resume changed, the trial)."""
    state, stepper = trainer.state, trainer.stepper
    made = summarize(trainer.config, trainer.backend.name, trainer.workers, state.history, trainer.parameters,
                     state.clock.whole_epochs)
    # The images trained on (after --holdout and --train-subset), which --train-subset alone may overstate.
    made.update(train_images=trainer.batches.n, noise_scale_note=stepper.noise_note(state.noise),
                noise_window=state.noise.window)
    if trainer.probe is not None:
        made.update(noise_probe={**trainer.probe, "step": state.clock.step})
    made.update(precision=stepper.precision.name, device=device_name(trainer.backend.device),
                compile_seconds=stepper.compile_seconds, cuda_graphs_skipped=stepper.skipped,
                changes=state.changes, config={**made["config"], **state.config},
                trial={**state.trial.summary(), "split": "holdout" if trainer.splits.holdout else "test"})
    return made
