"""A long-lived trial worker: one process per local slot that runs training after training in itself, so a
sweep's or study's short trials pay Python's and torch's start-up, the reading of CIFAR-10 and torch.compile's
compilation once per slot instead of once per trial (executors.LocalPool starts it; --fresh-process does not).

Each training is the same `batchscale train` command line a fresh process would run, in its own folder, its
output (a traceback included) in that folder's train.log, and resumable as before. What one training changes
in the process and a fresh one would not inherit is put back after it (`Baseline`).

Protocol: one JSON line per training on stdin ({"args": [...], "log": path}); one JSON line per training on
stdout ({"exit_code": N}), the training's exit code as a fresh process would have had it. End of stdin ends the
worker. A signal while no training has taken its signals over stops the worker, or the starting training with
the requeue code (75), as a fresh process killed before it trained would have to be rerun.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import Stopped
from ..stopping import SIGNALS

REQUEUE = Stopped.exit_code


class Baseline:
    """The process-wide state a training may change, as it was before the first one, put back after each so
    that no setting leaks into the next: signal handlers, environment, working folder, thread and exception
    hooks, warning filters, torch's thread count, determinism and cuDNN autotuning, and metrics' one-time hook."""

    def __init__(self) -> None:
        import torch

        self.handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
        self.environ = dict(os.environ)
        self.cwd = os.getcwd()
        self.thread_hook, self.except_hook = threading.excepthook, sys.excepthook
        self.filters = list(warnings.filters)
        self.threads = torch.get_num_threads()
        self.deterministic = torch.are_deterministic_algorithms_enabled()
        self.benchmark = torch.backends.cudnn.benchmark

    def restore(self) -> None:
        import torch

        from .. import metrics

        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        os.environ.clear()
        os.environ.update(self.environ)
        os.chdir(self.cwd)
        threading.excepthook, sys.excepthook = self.thread_hook, self.except_hook
        metrics._threads_quieted = False  # its hook was just removed: the next run's log installs it again
        warnings.filters[:] = self.filters
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(self.deterministic)
        torch.backends.cudnn.benchmark = self.benchmark
        gc.unfreeze()
        gc.collect()
        if torch.cuda.is_initialized():  # slots sharing a GPU get back what this training held
            torch.cuda.empty_cache()


def keep_loaded(load: Callable[[str | Path, bool], Any]) -> Callable[[str | Path, bool], Any]:
    """`data.load_split`, read once per (folder, split, files' sizes and times): the last one read of each
    split is kept. Each caller gets its own copy, so no training can change what the next one reads."""
    from .. import data

    kept: dict[bool, tuple[tuple[Any, ...], Any]] = {}  # split -> (its key, its tensors)

    def cached(root: str | Path, train: bool) -> Any:
        folder = Path(root).resolve() / data.FOLDER
        stamp = []
        for name in data.TRAIN_FILES if train else data.TEST_FILES:
            try:
                info = (folder / name).stat()
                stamp.append((info.st_size, info.st_mtime_ns))
            except OSError:  # missing: the loader's own error says what to do
                return load(root, train)
        key = (str(folder), tuple(stamp))
        if train not in kept or kept[train][0] != key:
            kept[train] = key, load(root, train)
        images, labels = kept[train][1]
        return images.clone(), labels.clone()

    return cached


@contextlib.contextmanager
def output_to(log: IO[str]) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors 1 and 2: C libraries and child processes too) into
    `log` while a training runs, back afterwards."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def run_one(args: list[str], log_path: Path, number: int) -> int:
    """One training, as `batchscale train ARGS` in a fresh process would run it; returns its exit code."""
    from ..command import run_train

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, output_to(log):
        print(f"[trial worker pid {os.getpid()}: training {number} of this process]", flush=True)
        try:
            return run_train(args, "batchscale train")
        except Stopped:  # a signal before the training took its signals over: nothing trained, rerun it
            return REQUEUE
        except SystemExit as exit:  # argparse's errors, as a fresh process's exit status
            return exit.code if isinstance(exit.code, int) else 1
        except BaseException:  # an unexpected error: its traceback in this training's log, the worker goes on
            traceback.print_exc()
            return 1


def stop_between_trainings(signum: int, frame: Any) -> None:
    raise Stopped(f"stopped by {signal.Signals(signum).name} before training began; rerun to train it")


def serve(jobs: IO[str], results: IO[str]) -> int:
    """Runs each training read from `jobs` and writes its exit code to `results`, until `jobs` ends."""
    from .. import data

    data.load_split = keep_loaded(data.load_split)  # type: ignore[assignment]
    baseline = Baseline()
    number = 0
    while line := jobs.readline():
        job = json.loads(line)
        number += 1
        try:
            code = run_one(list(job["args"]), Path(job["log"]), number)
        except Stopped:  # between the training's end and its report
            code = REQUEUE
        finally:
            baseline.restore()
        try:
            results.write(json.dumps({"exit_code": code}) + "\n")
            results.flush()
        except BrokenPipeError:  # the pool is gone (killed): the training has saved, nobody waits for more
            return code
        if code == REQUEUE:  # a stop was asked for: the pool starts a new worker if it goes on
            return REQUEUE
    return 0


def main() -> int:
    for sig in SIGNALS:  # first, before torch's import: a stop now ends the worker with the requeue code
        signal.signal(sig, stop_between_trainings)
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a stray print between trainings goes to the sweep's stderr, not into the protocol
    try:
        return serve(sys.stdin, results)
    except Stopped:
        return REQUEUE


if __name__ == "__main__":
    sys.exit(main())
