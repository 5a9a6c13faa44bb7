"""The distributed layer: a backend interface (`base.Backend`), torch.distributed and Horovod behind it,
Adasum for both, and launcher detection. `init_backend(config)` is the one entry point."""

from __future__ import annotations

from ..config import Config
from .base import Backend, unwrap
from .launch import launched_by, launcher_rank


def init_backend(config: Config) -> Backend:
    choice = launched_by() if config.backend == "auto" else config.backend
    if choice == "horovod":
        from .horovod_backend import HorovodBackend

        return HorovodBackend(config)
    if choice == "torch":
        from .torchdist import TorchBackend

        return TorchBackend(config)
    return Backend(config)


__all__ = ["Backend", "init_backend", "launched_by", "launcher_rank", "unwrap"]
