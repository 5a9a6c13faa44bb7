"""What can stop a run, each with the exit code the README's failure table documents.

0 done; 2 bad input (nothing trained); 3 diverged; 4 an output could not be written;
75 stopped by a signal after saving a step checkpoint (rerun or requeue to resume); 130 interrupted.
"""

from __future__ import annotations


class BatchscaleError(Exception):
    """An error the command line prints as one line (no traceback) before exiting with `exit_code`.

    One line per job, not per rank: an error that every rank finds alike (a bad flag) is printed
    by rank 0; one that ranks agreed on (`agreed`) by the lowest rank that found it, and the
    other ranks' copies are `quiet` but carry the same exit code.
    """

    exit_code = 1

    def __init__(self, message: str, quiet: bool = False, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.quiet = quiet
        self.agreed = False
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(BatchscaleError, ValueError):
    """A value, path or file the user must change: exit code 2."""

    exit_code = 2


class Diverged(BatchscaleError):
    """The loss, the weights or the validation loss became NaN or infinite: exit code 3; nothing non-finite is saved."""

    exit_code = 3


class OutputError(BatchscaleError):
    """A checkpoint, log or summary could not be written (disk full, permissions): exit code 4."""

    exit_code = 4


class Stopped(BatchscaleError):
    """SIGTERM/SIGUSR1/SIGUSR2/SIGINT arrived; a step checkpoint was saved: exit code 75 (EX_TEMPFAIL, "try again")."""

    exit_code = 75
    what = ""  # the stop itself, without the advice: what the run folder's stopped.json keeps for the next start


EXIT_CODES = {0: "done", 2: "bad input", 3: "diverged", 4: "output not written", 75: "stopped by a signal, saved",
              130: "interrupted"}
