"""What a torch.profiler run says the device did: its kernels, counted once each.

A profile's events hold each kernel's time three times over: on the kernel itself (a device event), on the
operator that launched it (a CPU event's device time) and inside every user annotation around it (record_function,
and the one Inductor puts around each compiled call, which also shows as a device-side span). Summing them all
made "device busy" exceed the wall time. Only device events that are not user annotations are kernels (the rule
torch's own profiler table sums by).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

DEVICE_TYPES = ("CUDA", "PrivateUse1", "MTIA", "XPU")


def is_kernel(event: Any) -> bool:
    """A device event (kernel, memcpy, memset) that is not a user annotation's span on the device."""
    kind = getattr(event, "device_type", None)
    return (kind is not None and kind in {getattr(torch.autograd.DeviceType, n) for n in DEVICE_TYPES
                                          if hasattr(torch.autograd.DeviceType, n)}
            and not getattr(event, "is_user_annotation", False))


def kernels(events: Iterable[Any]) -> list[Any]:
    """The kernels among a profile's (unaggregated) events, `profile.events()`."""
    return [e for e in events if is_kernel(e)]


def kernel_us(event: Any) -> float:
    """Microseconds a kernel ran: its own span (the same attribute in every torch version)."""
    return float(event.time_range.elapsed_us())


def busy_us(events: Iterable[Any]) -> float:
    """Microseconds the device spent in kernels, each counted once."""
    return sum(kernel_us(e) for e in kernels(events))
