"""Everything a checkpoint holds, defined once: `TrainState.state_dict()` writes it, `load_state_dict()` reads it.

Format 2 added `changes` (settings changed on resume) to format 1; a format-1 checkpoint loads
with no recorded changes. Format 3 stores the run clock (`RunClock`: images seen, the epoch's images, whole
epochs) beside the step; an earlier checkpoint's clock is rebuilt from its step and batch (`upgraded`).
`trial` (the target split's evaluations, and why the run ended) is optional. Anything else is refused with a
message naming the version.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .config import global_batch
from .errors import ConfigError
from .noise import SUMS, NoiseScale
from .parallel.base import ReplicaState
from .target import TargetWatch

if TYPE_CHECKING:
    from .parallel.base import Backend

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
HISTORY_KEYS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "images", "epoch_seconds",
                "train_seconds", "wall_seconds")


@dataclass
class EpochSums:
    """Running sums of the epoch in progress, kept on the device; summed over ranks only when saved."""

    loss_sum: Tensor
    correct: Tensor
    images: int = 0
    seconds: float = 0.0  # of training: evaluations inside the epoch are left out
    clock: float = field(default=0.0, repr=False)  # where the running lap of `seconds` began

    @classmethod
    def zeros(cls, device: torch.device) -> "EpochSums":
        return cls(torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device))

    @classmethod
    def resumed(cls, partial: dict[str, Any] | None, device: torch.device) -> "EpochSums":
        """The sums a part-done epoch was saved with (TrainState.partial), or zeros."""
        sums = cls.zeros(device)
        if partial:
            sums.loss_sum += partial["loss_sum"]
            sums.correct += int(partial["correct"])
            sums.images, sums.seconds = int(partial["images"]), float(partial["seconds"])
        return sums

    def add(self, loss_sum: Tensor, correct: Tensor, images: int) -> None:
        self.loss_sum += loss_sum
        self.correct += correct
        self.images += images

    def start(self) -> None:
        """Starts (or restarts, after an evaluation) the clock of the epoch's training seconds."""
        self.clock = time.perf_counter()

    def lap(self) -> float:
        """Adds the time since the clock started to the training seconds, restarts it, and returns them."""
        now = time.perf_counter()
        self.seconds += now - self.clock
        self.clock = now
        return self.seconds

    def reduced(self, backend: Backend) -> tuple[float, float, float]:
        """The job's loss sum, correct count and images so far, summed over the ranks (waits for the device)."""
        totals = torch.stack([self.loss_sum.double(), self.correct.double(),
                              torch.tensor(float(self.images), dtype=torch.float64, device=backend.device)])
        loss_sum, correct, images = backend.all_reduce_sum(totals).tolist()
        return loss_sum, correct, images


@dataclass
class RunClock:
    """Where training stands, counted as it goes and never derived from a batch size: optimizer steps and training
    images since the start, epochs closed, and the position in the open epoch. Each step advances it by the images
    that step took, so a batch size read afresh at every step (one that changes mid-run) moves the clock exactly,
    and schedules over the run read its images (as torchtitan saves `ntokens_seen` and torchtune its
    TrainingProgress)."""

    step: int = 0  # optimizer updates taken
    images: int = 0  # training images those updates took, summed over workers
    epoch: int = 0  # epochs closed, each with its line in the history (a trial's last perhaps cut short)
    epoch_step: int = 0  # updates into the open epoch
    epoch_images: int = 0  # images of the open epoch taken: where its permutation resumes
    whole_epochs: int = 0  # closed epochs that ran out of images (not cut short by the trial's end)

    def advance(self, images: int) -> None:
        """One optimizer update of `images` training images."""
        self.step += 1
        self.images += images
        self.epoch_step += 1
        self.epoch_images += images

    def close_epoch(self, whole: bool) -> None:
        """The open epoch ends: `whole` when its images ran out, not when the trial ended inside it."""
        self.epoch += 1
        self.whole_epochs += whole
        self.epoch_step = self.epoch_images = 0

    def state_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """In place: whatever holds the clock reads the restored one."""
        for key in CLOCK_KEYS:
            setattr(self, key, int(state[key]))


CLOCK_KEYS = tuple(f.name for f in dataclasses.fields(RunClock))


@dataclass
class TrainState:
    """The model, optimizer and scaler in use, plus where training stands (`clock`).

    The model's and optimizer's own state go through `owner` (the run's backend, which may wrap or shard them);
    the default is one whole replica in this process."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    config: dict[str, Any]
    workers: int
    noise: NoiseScale = field(default_factory=NoiseScale)
    trial: TargetWatch = field(default_factory=lambda: TargetWatch(target=1.0))  # evaluations of the target split
    history: list[dict[str, Any]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    clock: RunClock = field(default_factory=RunClock)
    partial: dict[str, Any] | None = None  # the whole job's sums of a part-done epoch, as saved
    owner: ReplicaState = field(default_factory=ReplicaState)

    @property
    def epoch(self) -> int:
        """Epochs closed (the clock's)."""
        return self.clock.epoch

    def position(self) -> str:
        """Where training stands, in the words every line uses (the stop line, the resume line), from the clock,
        epochs counted from 1 as the epoch lines count them: `epoch 2 (step 20)` at an epoch's end, `step 14 (step 4
        of epoch 2)` inside one."""
        if not self.epoch_step:
            return f"epoch {self.epoch} (step {self.clock.step})"
        return f"step {self.clock.step} (step {self.epoch_step} of epoch {self.epoch + 1})"

    @property
    def epoch_step(self) -> int:
        """Updates into the open epoch (the clock's)."""
        return self.clock.epoch_step

    def state_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model": self.owner.model_state_dict(self.model),
            "optimizer": self.owner.optimizer_state_dict(self.optimizer),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            **self.clock.state_dict(),  # at the top level: `step` and `epoch` are where format 1 kept them
            "rng": rng_state(),
            "config": self.config,
            "world_size": self.workers,
            "history": self.history,
            "noise": self.noise.state_dict(),
            "partial": self.partial,
            "changes": self.changes,
            "trial": self.trial.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        """Restores everything; `state` has passed `problem()` and is in this format (`upgraded`). The current
        config's settings stay in force."""
        try:
            self.owner.load_model_state_dict(self.model, state["model"])
            self.owner.load_optimizer_state_dict(self.optimizer, state["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{source} does not fit this model ({reason}); move it away or use --no-resume") from None
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.noise.load_state_dict(state["noise"])
        set_rng_state(state["rng"])
        self.history = list(state["history"])
        self.changes = list(state.get("changes") or [])
        self.trial.load_state_dict(state.get("trial"))  # absent before target checks existed
        self.clock.load_state_dict(state)
        self.partial = state.get("partial") if self.clock.epoch_step else None


def upgraded(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint that passed `problem()`, in this format: one of format 1 or 2 gets the clock it did not store,
    from its step and its global batch (fixed in those runs). Its whole epochs are its closed ones, but for a trial
    that ended: its last epoch counts as whole when it took as many steps as the first (so a one-epoch trial that
    ended counts none)."""
    if state["format_version"] >= 3:
        return state
    config, history = state["config"], state["history"]
    batch = global_batch(config.get("batch_size", 1), config.get("batches_per_allreduce", 1), state["world_size"])
    ended = (state.get("trial") or {}).get("ended") is not None
    whole = state["epoch"]
    if ended and history:
        last = history[-1]["step"] - (history[-2]["step"] if len(history) > 1 else 0)
        whole -= not (len(history) > 1 and last == history[0]["step"])
    clock = RunClock(step=state["step"], images=state["step"] * batch, epoch=state["epoch"],
                     epoch_step=state["epoch_step"], epoch_images=state["epoch_step"] * batch, whole_epochs=whole)
    return {**state, **clock.state_dict(), "format_version": FORMAT_VERSION}


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def problem(state: Any) -> str | None:
    """What is wrong with a loaded checkpoint's structure, or None: checked before anything is restored."""
    if not isinstance(state, dict) or "format_version" not in state:
        return f"it is not a batchscale checkpoint (format {FORMAT_VERSION})"
    if state["format_version"] not in READABLE_VERSIONS:
        return (f"it is checkpoint format {state['format_version']!r}, this batchscale reads formats "
                f"{', '.join(map(str, READABLE_VERSIONS))}")
    checks = (
        ("model", lambda v: isinstance(v, dict) and v and all(isinstance(t, Tensor) for t in v.values())),
        ("optimizer", lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
         and isinstance(v.get("param_groups"), list)),
        ("epoch", lambda v: _int(v) and v >= 0),
        ("epoch_step", lambda v: _int(v) and v >= 0),
        ("step", lambda v: _int(v) and v >= 0),
        ("rng", lambda v: isinstance(v, dict) and isinstance(v.get("torch"), Tensor) and v["torch"].dtype == torch.uint8
         and isinstance(v.get("python"), list) and len(v["python"]) == 625 and all(_int(x) for x in v["python"])),
        ("noise", _noise_ok),
        ("history", lambda v: isinstance(v, list) and all(_record_ok(r) for r in v)),
        ("config", lambda v: isinstance(v, dict)),
        ("world_size", lambda v: _int(v) and v >= 1),
        ("partial", lambda v: v is None or (isinstance(v, dict) and all(
            _number(v.get(k)) for k in ("loss_sum", "correct", "images", "seconds")))),
        ("changes", lambda v: v is None or isinstance(v, list)),
        ("trial", lambda v: v is None or (isinstance(v, dict) and isinstance(v["evals"], list) and _int(v["next_eval"])
                                          and v["ended"] in (None, "target", "budget"))),
    )
    if state["format_version"] >= 3:
        checks += tuple((key, lambda v: _int(v) and v >= 0) for key in ("images", "epoch_images", "whole_epochs"))
    for key, ok in checks:
        if key in ("changes", "trial") and key not in state:
            continue  # written before these existed
        if key not in state:
            return f"its {key!r} entry is missing"
        try:
            good = ok(state[key])
        except Exception:  # a malformed entry can fail a check in many ways
            good = False
        if not good:
            return f"its {key!r} entry is malformed"
    if len(state["history"]) != state["epoch"]:
        return f"its history has {len(state['history'])} epochs but it says {state['epoch']} are done"
    if state["format_version"] >= 3 and not (
            state["epoch_step"] <= state["step"] and state["epoch_images"] <= state["images"]
            and (state["epoch_step"] == 0) == (state["epoch_images"] == 0) and state["whole_epochs"] <= state["epoch"]):
        return (f"its clock is inconsistent (step {state['step']}, {state['epoch_step']} into the epoch; "
                f"{state['images']} images, {state['epoch_images']} into the epoch)")
    if not all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point()):
        return "its weights are NaN or infinite (it was saved by a run that diverged)"
    return None


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _noise_ok(v: Any) -> bool:
    """The noise scale's sums (noise.SUMS), or an earlier checkpoint's averages, which a resume starts afresh."""
    if not isinstance(v, dict) or not (v.get("updates") is None or _int(v["updates"])):
        return False
    if "sums" in v:
        sums = v["sums"]
        return sums is None or (isinstance(sums, list) and len(sums) == len(SUMS) and all(_number(x) for x in sums))
    return {"trace_sigma", "grad_sq"} <= v.keys() and all(v[k] is None or _number(v[k]) for k in ("trace_sigma", "grad_sq"))


def _record_ok(r: Any) -> bool:
    return isinstance(r, dict) and all(_number(r.get(k)) for k in HISTORY_KEYS)
