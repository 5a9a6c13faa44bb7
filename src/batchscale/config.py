"""The run's configuration: one typed object that the command line fills and `train()` takes."""

from __future__ import annotations

import dataclasses
import math
import string
from dataclasses import dataclass
from typing import Any

from .errors import BatchscaleError, ConfigError, Diverged  # noqa: F401  (re-exported)

MODELS = ("resnet18", "resnet18-imagenet")
LR_SCALINGS = ("linear", "sqrt", "none")
LR_SCHEDULES = ("cosine", "step", "onecycle")
BACKENDS = ("auto", "single", "torch", "horovod")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# torch.distributed keeps timeouts as int64 milliseconds; 1e7 s (115 days) is far beyond any real wait.
MAX_TIMEOUT = 1e7


@dataclass
class Config:
    # Data
    train_dir: str = "./data"
    val_dir: str = "./data"
    download: bool = True
    # Outputs
    log_dir: str = "./logs"
    checkpoint_format: str = "{log_dir}/checkpoint-{epoch}.pth.tar"
    resume: bool = True
    resume_from: str | None = None
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 0
    progress: bool = True
    # Schedule
    epochs: int = 50
    batch_size: int = 256
    val_batch_size: int = 256
    batches_per_allreduce: int = 1
    # Optimizer and LR
    base_lr: float = 0.1
    lr_scaling: str = "linear"
    lr_schedule: str = "cosine"
    warmup_epochs: float = 5.0
    warmup_start_lr: float | None = None
    lr_decay_epochs: tuple[int, ...] = (30, 60, 80)
    lr_decay_factor: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    wd: float = 5e-4
    label_smoothing: float = 0.0
    # Model and speed
    model: str = "resnet18"
    width: int = 64
    precision: str = "auto"
    compile: bool = False
    # Distributed
    backend: str = "auto"
    fp16_allreduce: bool = False
    bf16_allreduce: bool = False
    use_adasum: bool = False
    gradient_predivide_factor: float = 1.0
    collective_timeout: float = 600.0
    simulate_workers: int = 1
    noise_every: int = 10
    target_accuracy: float = 0.94
    # Reproducibility and devices
    seed: int = 42
    deterministic: bool = False
    no_cuda: bool = False
    finite_check_every: int = 50

    def validate(self) -> "Config":
        """Checks every value that can be judged without touching the disk or the network."""
        positive_ints = (
            "epochs", "batch_size", "val_batch_size", "batches_per_allreduce", "width", "finite_check_every",
            "simulate_workers", "noise_every",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"--{_flag(name)} must be an integer >= 1 (got {value!r})")
        for name in ("checkpoint_every_steps", "keep_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"--{_flag(name)} must be an integer >= 0, 0 meaning off (got {value!r})")
        for name in ("base_lr", "lr_decay_factor", "gradient_predivide_factor", "collective_timeout"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"--{_flag(name)} must be a positive number (got {value!r})")
        for name in ("wd", "warmup_epochs"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"--{_flag(name)} must be a number >= 0 (got {value!r})")
        if self.collective_timeout > MAX_TIMEOUT:
            raise ConfigError(f"--collective-timeout must be at most {MAX_TIMEOUT:g} seconds (got {self.collective_timeout!r})")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise ConfigError(f"--seed must be an integer from 0 to 2**64 - 1 (got {self.seed!r})")
        if self.warmup_start_lr is not None and not (math.isfinite(self.warmup_start_lr) and self.warmup_start_lr >= 0):
            raise ConfigError(f"--warmup-start-lr must be a number >= 0 (got {self.warmup_start_lr!r})")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1) (got {self.momentum!r})")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("Nesterov momentum needs --momentum > 0; pass --no-nesterov or set --momentum")
        if not 0 < self.target_accuracy <= 1:
            raise ConfigError(f"--target-accuracy must be in (0, 1], e.g. 0.94 (got {self.target_accuracy!r})")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing!r})")
        _choice("model", self.model, MODELS)
        _choice("lr_scaling", self.lr_scaling, LR_SCALINGS)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("backend", self.backend, BACKENDS)
        _choice("precision", self.precision, PRECISIONS)
        decay = list(self.lr_decay_epochs)
        if any(not isinstance(e, int) or e < 1 for e in decay) or decay != sorted(set(decay)):
            raise ConfigError(
                f"--lr-decay-epochs must be increasing positive integers like 30,60,80 (got {self.lr_decay_epochs!r})"
            )
        if self.use_adasum and self.gradient_predivide_factor != 1.0:
            raise ConfigError("--gradient-predivide-factor applies to averaging only; drop it or --use-adasum")
        if self.simulate_workers > 1 and self.use_adasum:
            raise ConfigError("--simulate-workers averages the simulated workers; it cannot simulate Adasum")
        if self.fp16_allreduce and self.bf16_allreduce:
            raise ConfigError("choose one of --fp16-allreduce and --bf16-allreduce, not both")
        _check_checkpoint_format(self.checkpoint_format)
        if self.resume_from is not None and not self.resume:
            raise ConfigError("--resume PATH and --no-resume contradict each other; keep one")
        return self

    def checkpoint_path(self, epoch: int) -> str:
        return self.checkpoint_format.format(epoch=epoch, log_dir=self.log_dir)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lr_decay_epochs"] = list(self.lr_decay_epochs)
        return data


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"--{_flag(name)} must be one of {', '.join(allowed)} (got {value!r})")


def _check_checkpoint_format(fmt: str) -> None:
    hint = "write it like ./checkpoints/checkpoint-{epoch}.pth.tar"
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None}
    except ValueError as err:
        raise ConfigError(f"--checkpoint-format {fmt!r} is not a valid format ({err}); {hint}") from None
    if "epoch" not in fields:
        raise ConfigError(f"--checkpoint-format {fmt!r} has no {{epoch}} field; {hint}")
    unknown = fields - {"epoch", "log_dir"}
    if unknown:
        raise ConfigError(
            f"--checkpoint-format {fmt!r} uses unknown field(s) {sorted(unknown)}; only {{epoch}} and {{log_dir}} exist"
        )
    try:
        first, second = fmt.format(epoch=1, log_dir="x"), fmt.format(epoch=2, log_dir="x")
    except (ValueError, IndexError, KeyError) as err:
        raise ConfigError(f"--checkpoint-format {fmt!r} cannot be filled in ({err}); {hint}") from None
    if first == second:
        raise ConfigError(f"--checkpoint-format {fmt!r} gives the same file for every epoch; {hint}")
