"""Which launcher started this process, read from its environment before any backend exists, and the backends'
names (config.py reads --backend's choices from here, below the package's registry, importing nothing)."""

from __future__ import annotations

import os

NAMES = ("single", "torch", "horovod")  # parallel.BACKENDS holds a class for each
CHOICES = ("auto", *NAMES)  # auto: the one the launcher's environment names (launched_by)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
HOROVOD_VARS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


def launcher_rank() -> int:
    """This process's rank as the launcher set it, before any backend exists (0 when not launched)."""
    for var in ("RANK", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def launched_by() -> str:
    if any(v in os.environ for v in HOROVOD_VARS):
        return "horovod"
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return "torch"
    return "single"


def launcher_world_size() -> int:
    """How many processes the launcher started (1 when not launched), before any backend exists."""
    for var in ("WORLD_SIZE", "HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if var in os.environ:
            return int(os.environ[var])
    return 1
