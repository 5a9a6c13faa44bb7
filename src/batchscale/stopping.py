"""A graceful stop: SIGTERM, SIGUSR1 and SIGUSR2 (what schedulers send before a kill or a requeue; submitit
asks SLURM for USR2 before a time limit) and a first Ctrl-C only raise a flag; the loop saves a step checkpoint at its next check and exits with code 75.
A second Ctrl-C interrupts at once."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


class StopRequest:
    def __init__(self, loud: bool = False) -> None:
        self.signal_name: str | None = None
        self.loud = loud  # rank 0 says at once that a Ctrl-C was heard; a step may take many seconds on a CPU
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
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
