"""Numeric precision of the training step: autocast dtype and, for fp16, the gradient scaler."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from .config import Config
from .errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass
class Precision:
    name: str
    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()


FP32 = Precision("fp32", "cpu", None, None)


def resolve(config: Config, device: torch.device) -> Precision:
    """`auto` is bf16 autocast on a GPU that has it and fp32 on the CPU, where bf16 is rarely faster."""
    name = config.precision
    if name == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp16" and config.use_adasum:
        raise ConfigError("--precision fp16 needs a gradient scaler, which Adasum's update rule cannot use; use bf16")
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(name, device.type, DTYPES[name], scaler)
