"""The training loop, top to bottom: epochs of steps, the end of each epoch, the summary.

Each component decides for itself: the checkpointer when to save and what to resume from, the guard when to
check that the run may go on, the evaluation (through the trial, `state.trial`) when to look at its target, the
step when to measure the noise scale. `Trainer.state` (a `TrainState`) is everything a checkpoint holds; where
training stands lives there and nowhere else: its clock (`state.clock`: steps, images, the epoch's position), which
every schedule and cadence reads and only the loop advances, by the global batch read at each step. What the loop
is built from is in setup.py; what it says about itself, its banner and its summary, in report.py.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal

from .. import faults
from ..config import Config
from ..errors import BatchscaleError, ConfigError, Diverged, Stopped
from ..metrics import Logging, RunLog
from ..noise import NOISE_SHARE, GradNorms
from ..parallel import Backend
from ..parallel.base import TEARDOWN_SECONDS, bounded
from ..precision import resolve
from ..schedule import LRSchedule
from ..state import EpochSums
from ..stopping import StopRequest
from . import report
from .checkpointer import Checkpointer, Checkpointing
from .evaluation import Evaluation
from .guard import Guard
from .probe import probe_noise
from .setup import count_workers, load_splits, new_state, seed_everything, start
from .step import Stepper, Stepping, build_model_and_optimizer

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
    config, backend = start(config)
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
        self.simulated, self.workers = config.simulate_workers, count_workers(config, backend)
        self.splits = load_splits(config, backend, self.workers)
        self.batches = self.splits.train
        precision = resolve(config, backend.device)
        model, optimizer = build_model_and_optimizer(config, backend)
        self.parameters = sum(p.numel() for p in model.parameters())
        self.schedule = LRSchedule.from_config(config, backend.averaged_batches() * self.simulated,
                                               self.batches.epoch_images, self.batches.global_batch)
        # One handle on each: the backend's model (it combines the workers' gradients) and its optimizer.
        self.model, self.optimizer = backend.prepare(model, optimizer)
        self.state = new_state(config, backend, self.model, self.optimizer, precision.scaler, self.workers)
        if not config.noise_window:  # the current value: the last quarter of the run, not the run's average
            self.state.noise.window = NOISE_SHARE * self.schedule.total_images
        self.probe: dict[str, Any] | None = None  # --noise-probe's record, at the end
        self.guard = Guard(backend, stop, self.state, config.finite_check_every)
        self.checkpointer = Checkpointer(Checkpointing.of(config), backend, self.state, self.guard)
        self.checkpointer.restore(resources, self.schedule.depends_on_epochs, self.parameters, self.finished)
        self.check_position()
        self.stepper = Stepper(Stepping.of(config), backend, self.model, self.optimizer, precision, self.batches,
                               self.splits.test, self.simulated)
        self.evaluation = Evaluation(self.stepper, self.splits, backend, self.state)
        # Everything alive now lives to the end: the collector need not walk it again during training.
        gc.collect()
        gc.freeze()
        self.log = RunLog(Logging.of(config), backend.is_main, self.state.history, self.batches.global_batch,
                          self.state.clock, self.schedule.total_images, self.batches.epoch_images)
        resources.callback(self.log.close)

    def run(self) -> dict[str, Any]:
        state = self.state
        report.announce(self)
        try:
            while not self.finished():
                with self.hooked("epoch"):
                    self.train_epoch()
        except Diverged as err:
            self.log.diverged(str(err), state.clock.step, self.workers, state.trial.summary())
            raise
        except Stopped as err:  # where a launcher that died with its pipes (horovodrun on SIGUSR1) leaves it readable
            self.log.stopped(err.what or str(err), state.clock.step)
            raise
        if self.config.noise_probe:
            self.probe = probe_noise(self.model, self.batches, self.config.noise_probe, self.stepper.criterion,
                                     self.backend, self.config.seed)
        summary = report.summary(self)
        self.backend.agree(lambda: self.log.finish(summary))
        return summary

    def total_steps(self) -> int:
        """The run's steps at the batch it starts with (the schedule's length)."""
        return self.schedule.total_images // self.schedule.batch

    def check_position(self) -> None:
        """A restored epoch position must leave a step of this run's batch to take (an epoch's last step closes it)."""
        clock, batches = self.state.clock, self.batches
        if clock.epoch_step and not batches.fits(clock.epoch_images):
            raise ConfigError(
                f"{self.checkpointer.resumed_from} is malformed: it stops at step {clock.epoch_step} of an epoch "
                f"({clock.epoch_images} images in) that has {batches.epoch_images // batches.global_batch} steps of "
                f"{batches.global_batch} images; move it away or use --no-resume"
            )

    def finished(self) -> bool:
        return self.state.epoch >= self.config.epochs or self.state.trial.ended is not None

    def hooked(self, phase: Literal["epoch", "update", "end_epoch"], *args: int) -> contextlib.AbstractContextManager[Any]:
        if not self.hooks:
            return NO_HOOKS
        stack = contextlib.ExitStack()
        for hook in self.hooks:
            stack.enter_context(getattr(hook, phase)(self, *args))
        return stack

    def train_epoch(self) -> None:
        state, config, clock = self.state, self.config, self.state.clock
        sums = EpochSums.resumed(state.partial, self.backend.device)
        state.partial = None
        self.guard.start_epoch()
        norms = GradNorms()
        local_images = config.batch_size * config.batches_per_allreduce * self.simulated
        self.model.train()
        bar = self.log.bar(self.batches.epoch_images, f"epoch {clock.epoch + 1}/{config.epochs}", initial=clock.epoch_images)
        sums.start()
        lr = self.schedule(clock.images)
        for micro in self.batches.epoch(clock.epoch + 1, clock.epoch_images):
            step = clock.step  # 0-based index of this update
            lr = self.schedule(clock.images)
            with self.hooked("update", step):
                loss, correct = self.stepper(micro, step, lr, norms, state.noise)
            taken = self.batches.global_batch  # read at every step: the clock moves by what this step took
            clock.advance(taken)
            self.guard.record(clock.step, loss, lr)
            sums.add(loss, correct, local_images)
            self.log.step(bar, lr, taken, sums.images, sums.loss_sum, sums.correct)
            faults.point("step", clock.step, self.backend.rank, self.model)
            state.trial.after_step(clock.step)
            last = not self.batches.fits(clock.epoch_images)
            if self.evaluation.due(clock.step, last):
                self.evaluation.inside_epoch(clock.step, sums.lap())
                sums.start()  # an evaluation is not training time
            if last or state.trial.ended:
                break
            self.checkpointer.inside_epoch(clock.step, sums, self.model)
        self.log.end_bar()
        sums.lap()
        with self.hooked("end_epoch"):
            self.end_epoch(sums, lr)

    def end_epoch(self, sums: EpochSums, lr: float) -> None:
        """Closes the open epoch, whose last step ran at `lr`: checks, evaluates, records and saves it."""
        state, backend = self.state, self.backend
        stopping = self.guard.check()
        totals = sums.reduced(backend)  # waits for the device
        backend.average_buffers(self.model)
        scores = self.evaluation.at_epoch_end()
        self.guard.check_weights(self.model, "the weights or the validation loss", scores[0], totals[0])
        record = self.evaluation.record_epoch(lr, totals, sums.seconds, time.perf_counter() - self.started, scores)
        self.started = time.perf_counter()  # wall time is counted per epoch from here on
        state.history.append(record)
        state.clock.close_epoch(whole=not self.batches.fits(state.clock.epoch_images))
        path = self.checkpointer.save_epoch()
        backend.agree(lambda: self.log.epoch(record))
        if stopping:
            self.guard.stopped(path)
