"""Which launcher started this process, read from its environment before any backend exists, and the backends'
names (config.py reads --backend's choices from here, below the package's registry, importing nothing)."""

from __future__ import annotations

import os
import signal
import threading

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


# How long a failed rank that has nothing to say waits for its launcher to end it. torchrun, mpirun and horovodrun
# end every rank as soon as one fails, so the bound is reached only under a launcher that does not (srun without
# --kill-on-bad-exit, ranks started by hand); there the quiet ranks leave on their own after it.
OUTLAST_SECONDS = 60.0
_LAUNCHER_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2}


def outlast_the_speaker(seconds: float = OUTLAST_SECONDS) -> None:
    """A failed rank that does not print the job's error leaves only when its launcher ends it (or after `seconds`).

    Were it to exit first, its launcher would stop the other ranks at once (torchrun within 0.1 s, by SIGTERM),
    and the rank that speaks, slower on a busy machine, could be killed before it printed: seen as a 3-worker
    Adasum refusal with no line at all. The launcher's signal ends the wait; the rank then exits as it would have."""
    if launcher_world_size() < 2 or threading.current_thread() is not threading.main_thread():
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _LAUNCHER_SIGNALS)
    try:
        signal.sigtimedwait(_LAUNCHER_SIGNALS, seconds)  # taken here, so the rank exits with its own code
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
