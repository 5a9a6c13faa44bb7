"""The distributed layer: a backend interface (`base.Backend`), torch.distributed and Horovod behind it,
Adasum for both, and launcher detection. `init_backend(config)` is the one entry point.

`BACKENDS` is the registry of backends, by the names in launch.NAMES: `--backend`'s choices (config.py) are read
from there, so a new backend touches this package only. Each is imported when chosen, and `Backend`,
`Communication` and `unwrap` when first used: reading a flag table must not import torch or Horovod. Nothing here
imports config.py, which sits above this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .launch import CHOICES, NAMES, launched_by, launcher_rank

if TYPE_CHECKING:
    from .base import Backend, Communication, unwrap


class Launching(Protocol):
    """What `init_backend` reads of a configuration (a config.Config), besides Communication's fields."""

    backend: str  # "auto" or one of NAMES


def _single() -> type[Backend]:
    from .base import Backend

    return Backend


def _torch() -> type[Backend]:
    from .torchdist import TorchBackend

    return TorchBackend


def _horovod() -> type[Backend]:
    from .horovod_backend import HorovodBackend

    return HorovodBackend


# --backend's name -> its class, imported on first use.
BACKENDS = dict(zip(NAMES, (_single, _torch, _horovod), strict=True))


def init_backend(config: Launching) -> Backend:
    """The backend the launcher (or --backend) asks for, given only the settings it reads."""
    from .base import Communication

    choice = launched_by() if config.backend == "auto" else config.backend
    return BACKENDS[choice]()(Communication.of(config))


def __getattr__(name: str) -> Any:
    if name in ("Backend", "Communication", "unwrap"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BACKENDS", "CHOICES", "Backend", "Communication", "init_backend", "launched_by", "launcher_rank", "unwrap"]
