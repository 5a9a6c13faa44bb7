"""The checkpointer: when the run saves (every --checkpoint-every-steps inside an epoch, at each epoch's end, when
stopped), what it keeps (--keep-checkpoints), whether there is room, and what it resumes from. Rank 0 writes; every
rank learns if the write failed (exit 4 everywhere, not a hang)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .. import checkpoint, faults
from ..config import Config
from ..parallel import Backend
from ..state import EpochSums, TrainState
from . import resume
from .guard import Guard


@dataclass(frozen=True)
class Checkpointing:
    """The part of the configuration the checkpointer reads: how often it saves inside an epoch, what a resume
    reads, and the optimizer settings a resumed run trains on with."""

    every: int  # --checkpoint-every-steps
    momentum: float
    nesterov: bool
    wd: float
    resuming: resume.Resuming

    @property
    def files(self) -> checkpoint.Files:
        return self.resuming.files

    @classmethod
    def of(cls, config: Config) -> "Checkpointing":
        return cls(config.checkpoint_every_steps, config.momentum, config.nesterov, config.wd,
                   resume.Resuming.of(config))


class Checkpointer:
    def __init__(self, config: Checkpointing, backend: Backend, state: TrainState, guard: Guard) -> None:
        self.config, self.backend, self.state, self.guard = config, backend, state, guard
        self.every = config.every
        self.resumed_from: Path | None = None

    def restore(self, resources: contextlib.ExitStack, epoch_bound: bool, parameters: int,
                finished: Callable[[], bool]) -> None:
        """Rank 0 finds and checks the checkpoint to resume (holding the run's folders from here on, released with
        `resources`); every rank loads what it found. `finished`: whether the restored run has nothing to train."""
        config, backend, state = self.config, self.backend, self.state
        # Two checkpoints' room: the new one is written beside the last before replacing it.
        room = 2 * 4 * (1 + (config.momentum > 0)) * parameters + 2**20  # fp32 weights and momentum
        opened = backend.agree(lambda: resume.open_run(config.resuming, state.workers, epoch_bound, room, resources)
                               if backend.is_main else None)
        opened = backend.broadcast_object(opened)
        if opened is None:
            return
        state.load_state_dict(opened.state, str(opened.path))
        state.noise.to(backend.device)
        for group in state.optimizer.param_groups:  # the current flags are what trains from here on
            group.update(momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.wd)
        state.config = resume.settings_in_force(config.resuming.settings, opened.state["config"], finished())
        if not finished():
            state.changes += opened.changes
        self.resumed_from = opened.path
        if not backend.is_main:
            state.partial = None  # rank 0 carries the job's sums of a part-done epoch

    def due(self) -> bool:
        """Whether the step just taken ends with a checkpoint inside the epoch (the clock's step into it)."""
        return bool(self.every) and self.state.clock.epoch_step % self.every == 0

    def inside_epoch(self, step: int, sums: EpochSums, model: nn.Module) -> None:
        """After update `step`, not the epoch's last: a checkpoint when one is due, or when the guard finds the run
        must stop (which it then does, saved)."""
        save = self.due()
        if save or self.guard.due(step):
            stopping = self.guard.check()
            if save or stopping:
                sums.lap()
                path = self.save_partial(sums, model)
                if stopping:
                    self.guard.stopped(path)

    def save_partial(self, sums: EpochSums, model: nn.Module) -> Path:
        """A checkpoint inside the epoch: the job's sums so far travel with it, so the epoch's figures come out whole."""
        state, backend = self.state, self.backend
        backend.average_buffers(model)
        loss_sum, correct, images = sums.reduced(backend)
        self.guard.check_weights(model)
        state.partial = {"loss_sum": loss_sum, "correct": int(correct), "images": int(images), "seconds": sums.seconds}
        path = checkpoint.partial_path(self.config.files, state.epoch + 1)
        self.write(path)
        state.partial = None
        faults.point("after-step-checkpoint", state.clock.step, backend.rank)
        return path

    def save_epoch(self) -> Path:
        """The checkpoint of the epoch just ended; once it is written, the ones it replaces go."""
        epoch = self.state.epoch
        files = self.config.files
        path = Path(files.checkpoint_path(epoch))
        self.write(path, lambda: checkpoint.prune(files, epoch))
        faults.point("after-checkpoint", epoch, self.backend.rank)
        return path

    def write(self, path: Path, then: Callable[[], None] | None = None) -> None:
        def write() -> None:
            if self.backend.is_main:
                checkpoint.save(path, self.state.state_dict())
                if then is not None:
                    then()

        self.backend.agree(write)
