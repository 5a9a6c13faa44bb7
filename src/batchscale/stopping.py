"""A graceful stop: SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 (what schedulers and terminals send before a kill or a
requeue; submitit asks SLURM for USR2 before a time limit) and a first Ctrl-C only raise a flag; the loop saves a
step checkpoint at its next check and exits with code 75. A second Ctrl-C interrupts at once.

A launcher that dies without passing a signal on (torchrun and horovodrun end at once on SIGUSR1, a sweep on
SIGKILL) would leave its workers training on as orphans: each worker watches the launchers above it and stops
itself, the same graceful way, when one of them is gone.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
# Command-line words that mark a process as a launcher of this training (its death ends the job).
LAUNCHER_MARKS = {"torch.distributed.run": "torchrun", "torchrun": "torchrun", "horovodrun": "horovodrun",
                  "mpirun": "mpirun", "mpiexec": "mpiexec", "prterun": "mpirun", "orterun": "mpirun",
                  "batchscale.cli sweep": "the sweep", "batchscale sweep": "the sweep",
                  "batchscale.cli study": "the study", "batchscale study": "the study"}


class StopRequest:
    def __init__(self, loud: bool = False) -> None:
        self.signal_name: str | None = None
        self.launcher_gone: str | None = None  # set when a watched launcher ended: why this rank stopped
        self.loud = loud  # rank 0 says at once that a Ctrl-C was heard; a step may take many seconds on a CPU
        self._previous: dict[int, object] = {}
        self._wake: int | None = None  # written to end the watching thread

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    @property
    def reason(self) -> str:
        if self.launcher_gone:
            return f"the end of its launcher ({self.launcher_gone})"
        return self.signal_name or "a signal on another rank"

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            self._watch(launchers())
        return self

    def restore(self) -> None:
        if self._wake is not None:
            os.close(self._wake)  # the watching thread sees end-of-file and leaves
            self._wake = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        if self.loud and not self.requested and signum == signal.SIGINT:  # a person at the keyboard, waiting
            from tqdm import tqdm  # above an open progress bar, not glued onto it

            tqdm.write("SIGINT: stopping after this step and saving a checkpoint; Ctrl-C again to abort without "
                       "saving", file=sys.stderr)
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def _watch(self, watched: list[tuple[int, str, str]]) -> None:
        """A thread that wakes when a watched launcher ends (a pidfd turns readable: no polling) and stops this
        process as a signal would."""
        fds = {}
        for pid, start, name in watched:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:  # it ended while this process started
                self.launcher_gone = f"{name}, pid {pid}"
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except OSError:  # a kernel without pidfds (before Linux 5.3): nothing to wait on
                continue
            if started(pid) != start:  # the pid was reused between reading it and opening it
                os.close(fd)
                continue
            fds[fd] = f"{name}, pid {pid}"
        if not fds:
            return
        wake, self._wake = os.pipe()

        def wait() -> None:
            ready, _, _ = select.select([wake, *fds], [], [])
            if wake not in ready:
                self.launcher_gone = fds[ready[0]]
                os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread, as any other stop
            for fd in (wake, *fds):
                os.close(fd)

        threading.Thread(target=wait, name="batchscale-launcher-watch", daemon=True).start()


def started(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), or None if it is gone: a pid alone may be reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # ENOENT, or ESRCH while it is being reaped
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else None


def launchers() -> list[tuple[int, str, str]]:
    """(pid, start time, name) of each launcher above this process: torchrun, horovodrun, mpirun, a sweep."""
    found = []
    pid = os.getppid()
    while pid > 1:
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        line = " ".join(w.decode(errors="replace") for w in words if w)
        mark = next((m for m in LAUNCHER_MARKS if m in line), None)
        start = started(pid)
        if mark is not None and start is not None:
            found.append((pid, start, LAUNCHER_MARKS[mark]))
        pid = int(stat.rsplit(")", 1)[-1].split()[1])
    return found
