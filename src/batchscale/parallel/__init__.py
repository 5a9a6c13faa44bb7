"""The distributed layer: a backend interface (`base.Backend`), torch.distributed and Horovod behind it,
Adasum for both, and launcher detection. `init_backend(config)` is the one entry point."""

from __future__ import annotations

from ..config import Config
from .base import Backend, Communication, unwrap
from .launch import launched_by, launcher_rank


def init_backend(config: Config) -> Backend:
    """The backend the launcher (or --backend) asks for, given only the settings it reads."""
    choice = launched_by() if config.backend == "auto" else config.backend
    settings = Communication.of(config)
    if choice == "horovod":
        from .horovod_backend import HorovodBackend

        return HorovodBackend(settings)
    if choice == "torch":
        from .torchdist import TorchBackend

        return TorchBackend(settings)
    return Backend(settings)


__all__ = ["Backend", "Communication", "init_backend", "launched_by", "launcher_rank", "unwrap"]
