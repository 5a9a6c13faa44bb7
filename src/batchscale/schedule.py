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
    """The LR as a function of the training images seen (the run clock's `images`), not of the step: a batch that
    changes mid-run changes how far one step moves along the schedule, not the schedule. Its lengths are images:
    the run's (--epochs of whole epochs, or --max-steps) and the warmup's, both in whole steps of the batch the
    run starts with, as the step counts they replace."""

    base_lr: float
    peak_lr: float
    batch: int  # the global batch the run starts with: the unit the ratios are taken in (see __call__)
    epoch_images: int  # a whole epoch's, at the starting batch (the --lr-decay-epochs unit)
    total_images: int
    warmup_images: int
    kind: str
    decay_epochs: tuple[int, ...] = ()
    decay_factor: float = 0.1
    warmup_start_lr: float | None = None

    @classmethod
    def from_config(cls, config: Config, replicas: int, epoch_images: int, batch: int) -> "LRSchedule":
        """`replicas` is the number of batches of --batch-size averaged into one update, `batch` the global batch
        the run starts with and `epoch_images` the images a whole epoch takes at it."""
        steps = epoch_images // batch
        total = steps * config.epochs
        return cls(
            base_lr=config.base_lr,
            peak_lr=config.base_lr * lr_scale(config.lr_scaling, replicas),
            batch=batch,
            epoch_images=epoch_images,
            total_images=min(total, config.max_steps or total) * batch,
            warmup_images=(config.warmup_steps or round(config.warmup_epochs * steps)) * batch,
            kind=config.lr_schedule,
            decay_epochs=tuple(config.lr_decay_epochs),
            decay_factor=config.lr_decay_factor,
            warmup_start_lr=config.warmup_start_lr,
        )

    @property
    def depends_on_epochs(self) -> bool:
        """Whether the LR at a step changes with --epochs: cosine and onecycle spread their decay over the run's
        images, so a resume under another --epochs would bend the curve already trained (resume refuses it)."""
        return self.kind in ("cosine", "onecycle")

    def __call__(self, images: int) -> float:
        """LR for the optimizer step taken after `images` training images (0 for the first step). Progress is
        counted in steps of the starting batch (a fraction of one after a batch change), so that at a fixed batch
        every LR is the per-step formula's float exactly, rounding included."""
        step, warmup = images / self.batch, self.warmup_images // self.batch
        if images < self.warmup_images:
            # Goyal et al.: ramp from the single-worker LR to the scaled one, per step.
            start = self.base_lr if self.warmup_start_lr is None else self.warmup_start_lr
            return start + (self.peak_lr - start) * step / warmup
        if self.kind == "constant":  # a trial that ends at its target: no decay tied to a budget
            return self.peak_lr
        if self.kind == "step":
            epoch = images / self.epoch_images
            return self.peak_lr * self.decay_factor ** sum(epoch >= e for e in self.decay_epochs)
        progress = (step - warmup) / max(1, self.total_images // self.batch - warmup)
        if self.kind == "cosine":
            return self.peak_lr * 0.5 * (1 + math.cos(math.pi * progress))
        return self.peak_lr * (1 - progress)  # onecycle: warmup up, straight line down to zero
