"""The learning-rate rule: peak LR from the number of workers, per-step warmup, then the decay schedule (or none)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import Config


def lr_scale(rule: str, replicas: int) -> float:
    """How much larger the peak LR is than --base-lr for `replicas` batches averaged per update."""
    if rule == "linear":
        return float(replicas)
    if rule == "sqrt":
        return math.sqrt(replicas)
    return 1.0


@dataclass(frozen=True)
class LRSchedule:
    base_lr: float
    peak_lr: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    kind: str
    decay_epochs: tuple[int, ...] = ()
    decay_factor: float = 0.1
    warmup_start_lr: float | None = None

    @classmethod
    def from_config(cls, config: Config, replicas: int, steps_per_epoch: int) -> "LRSchedule":
        """`replicas` is the number of batches of --batch-size averaged into one update."""
        return cls(
            base_lr=config.base_lr,
            peak_lr=config.base_lr * lr_scale(config.lr_scaling, replicas),
            steps_per_epoch=steps_per_epoch,
            total_steps=min(steps_per_epoch * config.epochs, config.max_steps or steps_per_epoch * config.epochs),
            warmup_steps=config.warmup_steps or round(config.warmup_epochs * steps_per_epoch),
            kind=config.lr_schedule,
            decay_epochs=tuple(config.lr_decay_epochs),
            decay_factor=config.lr_decay_factor,
            warmup_start_lr=config.warmup_start_lr,
        )

    @property
    def depends_on_epochs(self) -> bool:
        """Whether the LR at a step changes with --epochs: cosine and onecycle spread their decay over the run's
        steps, so a resume under another --epochs would bend the curve already trained (resume refuses it)."""
        return self.kind in ("cosine", "onecycle")

    def __call__(self, step: int) -> float:
        """LR for optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            # Goyal et al.: ramp from the single-worker LR to the scaled one, per step.
            start = self.base_lr if self.warmup_start_lr is None else self.warmup_start_lr
            return start + (self.peak_lr - start) * step / self.warmup_steps
        if self.kind == "constant":  # a trial that ends at its target: no decay tied to a budget
            return self.peak_lr
        if self.kind == "step":
            epoch = step / self.steps_per_epoch
            return self.peak_lr * self.decay_factor ** sum(epoch >= e for e in self.decay_epochs)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if self.kind == "cosine":
            return self.peak_lr * 0.5 * (1 + math.cos(math.pi * progress))
        return self.peak_lr * (1 - progress)  # onecycle: warmup up, straight line down to zero
