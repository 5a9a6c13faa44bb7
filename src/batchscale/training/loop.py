"""The training loop, top to bottom: set up, epochs of steps, end of epoch, summary.

Each component decides for itself: the checkpointer when to save and what to resume from, the guard when to
check that the run may go on, the trial (`state.trial`) when to evaluate its target. `Trainer.state` (a
`TrainState`) is everything a checkpoint holds; where training stands lives there and nowhere else.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .. import data, faults
from ..atomic import write_json_atomic
from ..config import Config
from ..errors import BatchscaleError, ConfigError, Diverged
from ..metrics import Logging, RunLog, summarize
from ..models import check_fits
from ..noise import MIN_PAIRS, GradNorms
from ..parallel import Backend, init_backend
from ..parallel.base import TEARDOWN_SECONDS, bounded
from ..parallel.launch import launcher_world_size
from ..precision import resolve
from ..rundir import check_writable
from ..schedule import LRSchedule
from ..state import EpochSums, TrainState
from ..stopping import StopRequest
from ..target import TargetWatch
from .checkpointer import Checkpointer, Checkpointing
from .guard import Guard
from .setup import device_name, load_splits, seed_everything
from .step import StepForward, build_model_and_optimizer, compile_forward, evaluate, train_step

NO_HOOKS = contextlib.nullcontext()


class Hook:
    """A seam in the loop for a profiler or a logger, so that neither patches the Trainer. Each method wraps one
    phase (an epoch, its end included; one update; the epoch's end) and may read the trainer, never change it.
    All do nothing; override the ones you need and pass the hook to `train(config, hooks=[...])`."""

    def epoch(self, trainer: Trainer) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def update(self, trainer: Trainer, step: int) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def end_epoch(self, trainer: Trainer) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


def train(config: Config, hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """Trains as `config` says and returns the run's summary (also written to summary.json)."""
    config = config.validate().for_run(launcher_world_size())
    check_writable(config.log_dir, "--log-dir")
    check_writable(Path(config.checkpoint_path(1)).parent, "--checkpoint-format")
    backend = init_backend(config)
    check_fits(config.model, config.width, backend.device)
    stop = StopRequest(loud=backend.is_main).install()
    quiet = not backend.is_main
    try:
        with contextlib.ExitStack() as resources:  # the run's log and its folders' lock, closed before the shutdown
            summary = Trainer(config, backend, stop, resources, hooks).run()
            bounded(backend.finish, TEARDOWN_SECONDS, 0, quiet)
        return summary
    finally:
        gc.unfreeze()  # a process that trains again (a study's long-lived trial) must collect this run's objects
        failure = sys.exc_info()[1]
        code = (failure.exit_code if isinstance(failure, BatchscaleError) else
                130 if isinstance(failure, KeyboardInterrupt) else 1 if failure is not None else 0)
        bounded(backend.shutdown, TEARDOWN_SECONDS, code, quiet)
        stop.restore()  # last: a launcher's SIGTERM during teardown must not turn a saved stop into a kill


class Trainer:
    """Everything is set up in `__init__` (restored, compiled, its log open); `run()` trains what is left."""

    def __init__(self, config: Config, backend: Backend, stop: StopRequest, resources: contextlib.ExitStack,
                 hooks: Sequence[Hook] = ()) -> None:
        self.config, self.backend, self.hooks = config, backend, list(hooks)
        self.started = time.perf_counter()
        seed_everything(config)
        self.simulated = config.simulate_workers
        if self.simulated > 1 and backend.world_size > 1:
            raise ConfigError("--simulate-workers runs in one process; launch it with python, not torchrun or horovodrun")
        self.workers = backend.world_size * self.simulated
        self.splits = load_splits(config, backend, self.workers)
        self.batches, self.steps_per_epoch = self.splits.train, self.splits.train.steps_per_epoch
        self.precision = resolve(config, backend.device)
        model, optimizer = build_model_and_optimizer(config, backend)
        self.parameters = sum(p.numel() for p in model.parameters())
        self.schedule = LRSchedule.from_config(config, backend.averaged_batches() * self.simulated, self.steps_per_epoch)
        # One handle on each: the backend's model (it combines the workers' gradients) and its optimizer.
        self.model, self.optimizer = backend.prepare(model, optimizer)
        self.state = TrainState(self.model, self.optimizer, self.precision.scaler, config.to_dict(), self.workers,
                                owner=backend)
        self.state.noise.window = config.noise_window
        self.state.trial = TargetWatch(config.target_accuracy, config.eval_growth, config.stop_at_target, config.max_steps)
        self.guard = Guard(backend, stop, self.state, self.schedule, config.finite_check_every)
        self.checkpointer = Checkpointer(Checkpointing.of(config), backend, self.state, self.guard, self.steps_per_epoch)
        self.checkpointer.restore(resources, self.schedule.depends_on_epochs, self.parameters, self.finished)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        # What the loop calls: forward, loss and metrics of the backend's model, one graph with --compile.
        self.forward: nn.Module = StepForward(self.model, self.criterion, self.precision, config.tta)
        self.cuda_graphs = config.compile and config.compile_mode == "reduce-overhead"
        self.compile_seconds, self.skipped = 0.0, None  # skipped: graphs CUDA graphs declined (summary.json)
        if config.compile:
            self.forward, self.compile_seconds, self.skipped = compile_forward(
                self.forward, self.model, self.batches, self.splits.test, self.precision, config.compile_mode,
                warn=backend.is_main)
        # Everything alive now lives to the end: the collector need not walk it again during training.
        gc.collect()
        gc.freeze()
        self.log = RunLog(Logging.of(config), backend.is_main, self.state.history, self.batches.global_batch,
                          self.total_steps(), self.steps_per_epoch)
        resources.callback(self.log.close)

    def run(self) -> dict[str, Any]:
        state, config = self.state, self.config
        announce(self)
        try:
            while not self.finished():
                with self.hooked("epoch"):
                    self.train_epoch()
        except Diverged as err:  # a study counts a diverged trial as a result (it missed its target), not a crash
            if self.backend.is_main:
                write_json_atomic(Path(config.log_dir) / "diverged.json", {
                    "message": str(err), "step": state.step(self.steps_per_epoch),
                    "global_batch": self.batches.global_batch, "world_size": self.workers,
                    "trial": {**state.trial.summary(), "ended": "diverged"}, "config": config.to_dict()})
            raise
        summary = summarize(config, self.backend.name, self.workers, state.history, self.parameters,
                            self.steps_per_epoch)
        summary.update(noise_scale_note=noise_note(self))
        summary.update(precision=self.precision.name, device=device_name(self.backend.device),
                       compile_seconds=self.compile_seconds, cuda_graphs_skipped=self.skipped,
                       changes=state.changes, config={**summary["config"], **state.config},
                       trial={**state.trial.summary(), "split": "holdout" if self.splits.holdout else "test"})
        self.backend.agree(lambda: self.log.finish(summary))
        return summary

    def total_steps(self) -> int:
        steps = self.config.epochs * self.steps_per_epoch
        return min(steps, self.config.max_steps) if self.config.max_steps else steps

    def finished(self) -> bool:
        return self.state.epoch >= self.config.epochs or self.state.trial.ended is not None

    def hooked(self, phase: Literal["epoch", "update", "end_epoch"], *args: int) -> contextlib.AbstractContextManager[Any]:
        if not self.hooks:
            return NO_HOOKS
        stack = contextlib.ExitStack()
        for hook in self.hooks:
            stack.enter_context(getattr(hook, phase)(self, *args))
        return stack

    # -- one epoch ---------------------------------------------------------------------------------------------

    def train_epoch(self) -> None:
        state, config = self.state, self.config
        sums = EpochSums.resumed(state.partial, self.backend.device)
        state.partial = None
        self.guard.start_epoch()
        norms = GradNorms()
        local_images = config.batch_size * config.batches_per_allreduce * self.simulated
        self.model.train()
        bar = self.log.bar(self.steps_per_epoch, f"epoch {state.epoch + 1}/{config.epochs}", initial=state.epoch_step)
        clock = time.perf_counter()
        for micro in self.batches.epoch(state.epoch + 1, state.epoch_step):
            step = state.step(self.steps_per_epoch)  # 0-based index of this update
            lr = self.schedule(step)
            with self.hooked("update", step):
                loss, correct = self.update(micro, step, lr, norms)
            state.epoch_step += 1
            self.guard.record(step + 1, loss)
            sums.add(loss, correct, local_images)
            self.log.step(bar, step + 1, lr, sums.images, sums.loss_sum, sums.correct)
            faults.point("step", step + 1, self.backend.rank, self.model)
            state.trial.after_step(step + 1)
            if state.trial.due(step + 1) and state.epoch_step < self.steps_per_epoch:  # an epoch's end evaluates anyway
                sums.seconds += time.perf_counter() - clock
                self.check_target(step + 1, sums.seconds)
                clock = time.perf_counter()
            if state.epoch_step == self.steps_per_epoch or state.trial.ended:
                break
            save = self.checkpointer.due()
            if save or self.guard.due(step + 1):
                stopping = self.guard.check()
                if save or stopping:
                    sums.seconds += time.perf_counter() - clock
                    clock = time.perf_counter()
                    path = self.checkpointer.save_partial(sums, self.model)
                    if stopping:
                        self.guard.stopped(path)
        self.log.end_bar()
        sums.seconds += time.perf_counter() - clock
        with self.hooked("end_epoch"):
            self.end_epoch(sums)

    def update(self, micro: list[tuple[Tensor, Tensor]], step: int, lr: float, norms: GradNorms) -> tuple[Tensor, Tensor]:
        """One optimizer step at `lr`; every --noise-every steps it also measures the noise scale: a small batch
        (one worker's, or one micro-batch) against the combined gradient, which needs a larger combined batch
        (not one worker without accumulation, nor Adasum, which has no averaged gradient)."""
        config, backend = self.config, self.backend
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        measure = (not config.use_adasum and self.batches.global_batch > config.batch_size
                   and (step + 1) % config.noise_every == 0 and (len(micro) > 1 or backend.can_probe))
        probing = measure and len(micro) == 1
        if measure:
            norms.reset(backend.device)
        if probing:
            backend.probe(norms)
        loss, correct = train_step(self.model, self.optimizer, micro, backend, self.criterion, self.precision,
                                   norms if measure else None, self.forward, self.cuda_graphs)
        if probing:
            backend.probe(None)
        if measure:
            self.state.noise.update(norms.small_sq, norms.big_sq, config.batch_size, self.batches.global_batch,
                                    examples=config.noise_every * self.batches.global_batch)
        return loss, correct

    def end_epoch(self, sums: EpochSums) -> None:
        state, backend = self.state, self.backend
        stopping = self.guard.check()
        totals = torch.stack([sums.loss_sum.double(), sums.correct.double(),
                              torch.tensor(float(sums.images), dtype=torch.float64, device=backend.device)])
        train_loss, train_correct, images = backend.all_reduce_sum(totals).tolist()  # .tolist() waits for the device
        backend.average_buffers(self.model)
        val_loss, val_acc = self.evaluate(self.splits.test)
        held = self.evaluate(self.splits.holdout) if self.splits.holdout else None
        self.guard.check_weights(self.model, "the weights or the validation loss", val_loss, train_loss)
        step = state.step(self.steps_per_epoch)
        before = state.history[-1] if state.history else {"train_seconds": 0.0, "wall_seconds": 0.0}
        record = {
            "epoch": state.epoch + 1, "step": step, "lr": self.schedule(step - 1),
            "train_loss": train_loss / images, "train_acc": train_correct / images, "val_loss": val_loss,
            "val_acc": val_acc, "images": int(images), "epoch_seconds": sums.seconds,
            "images_per_sec": images / sums.seconds, "train_seconds": before["train_seconds"] + sums.seconds,
            "wall_seconds": before["wall_seconds"] + time.perf_counter() - self.started,
            "noise_scale": state.noise.b_simple, "noise_scale_se": state.noise.standard_error,
            "noise_pairs": state.noise.updates,
        }
        if held is not None:
            record.update(holdout_loss=held[0], holdout_acc=held[1])
        state.trial.record(step, held[1] if held else val_acc, loss=held[0] if held else val_loss,
                           examples=step * self.batches.global_batch, b_simple=record["noise_scale"],
                           b_simple_se=record["noise_scale_se"],
                           train_seconds=record["train_seconds"])
        self.started = time.perf_counter()  # wall time is counted per epoch from here on
        state.history.append(record)
        state.epoch, state.epoch_step = state.epoch + 1, 0
        path = self.checkpointer.save_epoch()
        backend.agree(lambda: self.log.epoch(record))
        if stopping:
            self.guard.stopped(path)

    def check_target(self, step: int, epoch_seconds: float) -> None:
        """Evaluates the target split (or its quick part) inside an epoch; the trial may end here (the caller
        then ends the epoch)."""
        state = self.state
        self.backend.average_buffers(self.model)
        before = state.history[-1]["train_seconds"] if state.history else 0.0
        while state.trial.due(step):  # a quick look that comes near the target is followed by a whole one
            full = state.trial.fine
            loss, acc = self.evaluate(self.splits.target if full else self.splits.quick)
            state.trial.record(step, acc, full, loss=loss, examples=step * self.batches.global_batch,
                               b_simple=state.noise.b_simple, b_simple_se=state.noise.standard_error,
                               train_seconds=before + epoch_seconds)
        self.model.train()

    def evaluate(self, batches: data.EvalBatches) -> tuple[float, float]:
        return evaluate(self.model, batches, self.backend, self.precision, self.forward, self.config.tta,
                        self.cuda_graphs)


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
        f"{trainer.steps_per_epoch} steps/epoch, peak lr {schedule.peak_lr:.4g}{resumed}")
    split = f"{config.holdout} held-out images" if config.holdout else "the test set"
    ends = ([f"at {100 * config.target_accuracy:g}% accuracy on {split}"] if config.stop_at_target else []) + \
           ([f"after {config.max_steps} steps"] if config.max_steps else [])
    if ends:
        say(f"trial: ends {' or '.join(ends)}")
    new = [c for c in state.changes if c["step"] == state.step(trainer.steps_per_epoch)]
    if new and resumed_from is not None:
        listed = ", ".join(f"{c['setting']} {c['from']!r} -> {c['to']!r}" for c in new)
        say(f"note: from step {new[0]['step']} on this run uses {listed} (recorded in summary.json)")
    if config.warmup_epochs >= config.epochs and schedule.peak_lr != schedule.base_lr:
        say(f"warning: --warmup-epochs {config.warmup_epochs:g} covers the whole run; the LR never reaches its peak")


def noise_note(trainer: Trainer) -> str | None:
    """Why this run can measure no noise scale, or None when it can."""
    config, backend = trainer.config, trainer.backend
    if config.use_adasum:
        return "Adasum combines updates, so there is no averaged gradient to measure"
    if trainer.batches.global_batch <= config.batch_size:
        return "one worker without accumulation: no batch smaller than the one that steps (add --batches-per-allreduce 2)"
    if config.batches_per_allreduce * trainer.simulated == 1 and not backend.can_probe:
        return f"the {backend.name} backend cannot see one worker's gradient; add --batches-per-allreduce 2"
    if trainer.state.noise.b_simple is None:
        return f"fewer than {MIN_PAIRS} measurements, or |G|^2 not yet estimated positive"
    return None
