"""The training command, below both the command line (cli.py) and the study's trial workers (study/worker.py), which
run trainings as `batchscale train` would: its parser, its Config from argv, and its one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from .config import Config
from .errors import BatchscaleError, Stopped
from .flags import add_flags, build
from .parallel.launch import launcher_rank, outlast_the_speaker

if TYPE_CHECKING:  # the loop imports torch: commands that do not train start without it
    from .training.loop import Hook


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage block: the message says what to change.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def train_parser(prog: str) -> argparse.ArgumentParser:
    p = Parser(prog=prog, description="Train ResNet-18 on CIFAR-10 with synchronous data-parallel SGD.")
    add_flags(p, Config)
    return p


def guarded(prog: str, work: Callable[[], str | None]) -> int:
    """Runs a command: its errors become one line and an exit code (2 for bad input), no traceback.

    One line per job: rank 0 says it, or the lowest rank that found a problem the ranks agreed on.
    """
    try:
        message = work()
    except BatchscaleError as err:
        if not err.quiet and (err.agreed or launcher_rank() == 0):
            kind = "" if isinstance(err, Stopped) else "error: "  # a stop asked for is not a failure
            print(f"{prog}: {kind}{err}", file=sys.stderr)
        elif not isinstance(err, Stopped):  # a stop: the launcher that passed its signal on waits, sending no other
            outlast_the_speaker()
        return err.exit_code
    except KeyboardInterrupt:
        if launcher_rank() == 0:
            print(f"{prog}: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    if message and launcher_rank() == 0:
        print(message)
    return 0


def train_config(argv: Sequence[str], prog: str = "train.py") -> Config:
    """The run's Config from its command line; a --recipe fills in what the flags left out."""
    args = train_parser(prog).parse_args(argv)
    given: set[str] = set()
    if args.recipe is not None:
        only = Parser(prog=prog)
        add_flags(only, Config, only_given=True)
        given = set(vars(only.parse_args(argv)))
    return build(Config, args).with_recipe(given)


def run_train(argv: Sequence[str], prog: str, hooks: Sequence[Hook] = ()) -> int:
    """`hooks` (training.loop.Hook): a profiler's or a logger's seam in the loop, for scripts that wrap the command."""
    train_parser(prog).parse_args(argv)  # argparse's own errors first, as every command's
    from .metrics import closing_line
    from .training.loop import train

    def work() -> str:
        return closing_line(train(train_config(argv, prog), hooks))  # rank 0 has printed every epoch and summary.json

    return guarded(prog, work)
