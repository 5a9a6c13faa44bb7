"""Starting trainings as a user would (python train.py, torchrun), for the tests that check whole runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
# The bound of a hang, never a speed: at least ten times what the slowest wait takes on an idle machine.
HANG_S = 900
TESTS = Path(__file__).resolve().parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def train_args(data: Path, log_dir: Path, *extra: str, batch: int = 32, epochs: int = 2) -> list[str]:
    """A deterministic width-8 run on the tiny set: 320 images, 10 steps per epoch at global batch 32."""
    return ["--train-dir", str(data), "--val-dir", str(data), "--log-dir", str(log_dir), "--epochs", str(epochs),
            "--batch-size", str(batch), "--width", "8", "--warmup-epochs", "1", "--no-download", "--no-progress",
            "--deterministic", "--no-cuda", *extra]


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSCALE_")}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


HOROVODRUN = Path(sys.executable).parent / "horovodrun"
needs_horovod = pytest.mark.skipif(not HOROVODRUN.exists(), reason="Horovod not installed: run `make horovod`")


def command(args: list[str], ranks: int = 1, launcher: str = "torchrun", torchrun_flags: tuple[str, ...] = ()) -> list[str]:
    """python train.py for one rank; torchrun (a c10d rendezvous on a free port, fresh keys per restart) or
    horovodrun for more."""
    if launcher == "horovodrun" and ranks > 1:
        return [str(HOROVODRUN), "-np", str(ranks), "-H", f"localhost:{ranks}", sys.executable, str(ROOT / "train.py"), *args]
    if ranks > 1:
        return [*TORCHRUN, "--standalone", "--nproc-per-node", str(ranks), *torchrun_flags, str(ROOT / "train.py"), *args]
    return [sys.executable, str(ROOT / "train.py"), *args]


def train(data: Path, log_dir: Path, *extra: str, env: dict[str, str] | None = None, ranks: int = 1,
          epochs: int = 2, batch: int | None = None, launcher: str = "torchrun", torchrun_flags: tuple[str, ...] = (),
          timeout: float = HANG_S) -> subprocess.CompletedProcess:
    """A whole training as a user starts it; the global batch is 32 however many ranks share it."""
    args = train_args(data, log_dir, *extra, batch=batch or 32 // ranks, epochs=epochs)
    return subprocess.run(command(args, ranks, launcher, torchrun_flags), capture_output=True, text=True,
                          env=env_with(**(env or {})), timeout=timeout)


def start(data: Path, log_dir: Path, *extra: str, env: dict[str, str] | None = None, epochs: int = 2) -> subprocess.Popen:
    args = train_args(data, log_dir, *extra, epochs=epochs)
    return subprocess.Popen(command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env_with(**(env or {})))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def one_line(stderr: str) -> str:
    """The single line a failing run prints; fails the test if it printed a traceback or several lines."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and len(lines) == 1, stderr[-3000:]
    return lines[0]


def cli(*argv: str, capsys) -> tuple[int, str]:
    """`batchscale ARGV...` in this process: its exit code and what it printed on stderr."""
    from batchscale.cli import main

    code = main(list(argv))
    return code, capsys.readouterr().err


def state_of(pid: int) -> str:
    """A process's state letter from /proc ("T": stopped), or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # ended between listing and reading: /proc answers either
        return "gone"


def pending(pid: int, sig: signal.Signals) -> bool:
    """Whether `sig` waits to be delivered to the (stopped) process `pid`."""
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    return any(int(status[key], 16) >> (sig - 1) & 1 for key in ("SigPnd", "ShdPnd"))


def until(ready: Callable[[], T], watched: subprocess.Popen, what: str, within: float = HANG_S) -> T:
    """Polls `ready()` until it gives something true, and returns that: for a state another process reaches on its
    own (a fault point's SIGSTOP, a lock, a pending signal) that sends no event. Fails at once if `watched` ends
    first, and after `within` seconds. It looks 20 times a second: a spinning test would take a core from the very
    processes it waits for."""
    deadline = time.monotonic() + within
    while not (value := ready()):
        if watched.poll() is not None:
            err = watched.communicate()[1] or ""
            raise AssertionError(f"{what}: the process ended first (exit {watched.returncode})\n{err[-3000:]}")
        assert time.monotonic() < deadline, f"{what}: not within {within:.0f} s"
        time.sleep(0.05)
    return value
