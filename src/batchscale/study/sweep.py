"""`batchscale sweep`: a grid of full training runs, each in its own folder, resumable as a whole."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import global_batch
from ..errors import ConfigError, Stopped
from ..flags import flag
from ..metrics import write_json_atomic

LAUNCHERS = ("simulate", "torchrun", "horovodrun")
PRESETS = ("paper", "critical-batch")
MAX_MICRO_BATCH = 512  # larger global batches are accumulated, so 8192 fits one GPU


@dataclass(frozen=True)
class Run:
    """One training run of the grid: `global_batch = batch_size x batches_per_allreduce x workers`."""

    batch_size: int
    workers: int
    lr_scaling: str
    base_lr: float
    seed: int
    batches_per_allreduce: int = 1

    @property
    def global_batch(self) -> int:
        return global_batch(self.batch_size, self.batches_per_allreduce, self.workers)

    @property
    def name(self) -> str:
        accumulate = f"x{self.batches_per_allreduce}" if self.batches_per_allreduce > 1 else ""
        return f"b{self.batch_size}{accumulate}-w{self.workers}-{self.lr_scaling}-lr{self.base_lr:g}-s{self.seed}"


def parse_list(text: str, kind: type) -> tuple:
    try:
        return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"expected a comma-separated list of {kind.__name__}s, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    return parse_list(text, int)


def _floats(text: str) -> tuple[float, ...]:
    return parse_list(text, float)


def _strings(text: str) -> tuple[str, ...]:
    return parse_list(text, str)


GRID = "the grid (flags after -- go to every run)"


@dataclass
class SweepConfig:
    """A sweep; each field is a `batchscale sweep` flag. A preset fills the fields the command line left out."""

    out: str = flag("sweep", "sweep folder", group=GRID)
    preset: str | None = flag(None, "paper: the original's grid; critical-batch: global batch 32-8192", group=GRID,
                              choices=PRESETS)
    batch_sizes: tuple[int, ...] = flag((64, 128, 256), "per-worker batch sizes, comma-separated (critical-batch: "
                                        "global)", group=GRID, parse=_ints)
    workers: tuple[int, ...] = flag((1,), "worker counts", group=GRID, parse=_ints)
    lr_scalings: tuple[str, ...] = flag(("linear",), "LR scaling rules (linear, sqrt, none)", group=GRID,
                                        parse=_strings)
    base_lrs: tuple[float, ...] = flag((0.1,), "base LRs", group=GRID, parse=_floats)
    seeds: tuple[int, ...] = flag((42,), "seeds", group=GRID, parse=_ints)
    epochs: int = flag(50, "epochs of every run", group=GRID)
    launcher: str = flag("simulate", "simulate: N workers' arithmetic in one process; torchrun/horovodrun: N real "
                         "processes", group=GRID, choices=LAUNCHERS)
    train_args: tuple[str, ...] = field(default_factory=tuple)

    def runs(self) -> list[Run]:
        if self.preset == "critical-batch":
            return [critical_batch_run(b, seed) for b in self.batch_sizes for seed in self.seeds]
        grid = itertools.product(self.batch_sizes, self.workers, self.lr_scalings, self.base_lrs, self.seeds)
        return [Run(b, w, s, lr, seed) for b, w, s, lr, seed in grid]

    def validate(self) -> "SweepConfig":
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)} (got {self.launcher!r})")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or not self.workers or min(self.workers) < 1:
            raise ConfigError("--batch-sizes and --workers must be comma-separated integers >= 1, like 64,128")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1 (got {self.epochs})")
        return self


PRESET_GRIDS: dict[str, dict[str, Any]] = {
    # Kim et al. 2023: 4 workers, per-worker batch 8-256, LR = 0.1 x workers.
    "paper": {"batch_sizes": (8, 16, 32, 64, 128, 256), "workers": (4,), "lr_scalings": ("linear",), "base_lrs": (0.1,)},
    # Global batch 32 ... 8192 on one device, LR from critical_batch_lr.
    "critical-batch": {"batch_sizes": tuple(2**i for i in range(5, 14)), "workers": (1,)},
}


def preset(name: str, config: SweepConfig, given: set[str] = frozenset()) -> SweepConfig:  # type: ignore[assignment]
    """`config` with preset `name`'s grid in every field not in `given` (what the command line set)."""
    if name not in PRESET_GRIDS:
        raise ConfigError(f"--preset must be one of {', '.join(PRESETS)} (got {name!r})")
    chosen = {k: v for k, v in PRESET_GRIDS[name].items() if k not in given}
    return SweepConfig(**{**asdict(config), **chosen, "preset": name})


def critical_batch_lr(global_batch: int) -> float:
    """0.1 per 128 images up to batch 1024 (Goyal et al.), then square-root growth (Hoffer et al.),
    because linear scaling past the critical batch diverges."""
    if global_batch <= 1024:
        return 0.1 * global_batch / 128
    return 0.8 * math.sqrt(global_batch / 1024)


def critical_batch_run(global_batch: int, seed: int) -> Run:
    micro = min(global_batch, MAX_MICRO_BATCH)
    return Run(micro, 1, "none", critical_batch_lr(global_batch), seed, global_batch // micro)


def is_done(run_dir: Path, epochs: int) -> bool:
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return False
    try:
        return json.loads(summary.read_text()).get("epochs_completed") == epochs
    except json.JSONDecodeError:
        return False


def command(config: SweepConfig, run: Run, run_dir: Path) -> list[str]:
    args = [*config.train_args, "--epochs", str(config.epochs), "--batch-size", str(run.batch_size),
            "--batches-per-allreduce", str(run.batches_per_allreduce), "--lr-scaling", run.lr_scaling,
            "--base-lr", str(run.base_lr), "--seed", str(run.seed), "--log-dir", str(run_dir), "--no-progress"]
    train = [sys.executable, "-m", "batchscale.cli", "train"]
    if run.workers == 1:
        return [*train, *args]
    if config.launcher == "simulate":
        return [*train, *args, "--simulate-workers", str(run.workers)]
    if config.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(run.workers),
                "-m", "batchscale.cli", "train", *args]
    horovodrun = str(Path(sys.executable).parent / "horovodrun")
    return [horovodrun, "-np", str(run.workers), "-H", f"localhost:{run.workers}", *train, *args]


def epochs_done(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def sweep(config: SweepConfig, say=print) -> list[Path]:
    """Runs every run not yet finished; returns the run folders. A failed run stops the sweep."""
    config.validate()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    runs = config.runs()
    write_json_atomic(out / "sweep.json", {**asdict(config), "runs": [r.name for r in runs]})
    total_epochs = len(runs) * config.epochs
    start = time.monotonic()
    trained_epochs = 0
    folders = []
    for i, run in enumerate(runs, 1):
        run_dir = out / run.name
        folders.append(run_dir)
        if is_done(run_dir, config.epochs):
            say(f"[{i}/{len(runs)}] {run.name}: done, skipped")
            total_epochs -= config.epochs
            continue
        before = epochs_done(run_dir)
        total_epochs -= before
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "train.log", "a") as log, _forwarding_signals() as child:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            process = child.process = subprocess.Popen(command(config, run, run_dir), stdout=log, stderr=subprocess.STDOUT,
                                                       env=env)
            while process.poll() is None:
                done = epochs_done(run_dir) - before
                rate = (time.monotonic() - start) / max(1, trained_epochs + done)
                left = "estimating" if trained_epochs + done == 0 else clock(rate * (total_epochs - trained_epochs - done))
                say(f"[{i}/{len(runs)}] {run.name}: epoch {before + done}/{config.epochs}, ~{left} left", end="\r")
                try:
                    process.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
        trained_epochs += epochs_done(run_dir) - before
        if process.returncode == Stopped.exit_code or child.signal_name:
            raise Stopped(f"the sweep was stopped by {child.signal_name or 'a signal'}; run "
                          f"{run.name} saved its progress (see {run_dir / 'train.log'}); rerun the same command to resume")
        if process.returncode != 0:
            tail = (run_dir / "train.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
            raise ConfigError(f"run {run.name} failed (exit {process.returncode}): {tail[0]}; see {run_dir / 'train.log'}, "
                              "then rerun the sweep to resume")
        say(f"[{i}/{len(runs)}] {run.name}: finished in {clock(time.monotonic() - start)} total          ")
    return folders


@dataclass
class _Child:
    process: subprocess.Popen | None = None
    signal_name: str | None = None


@contextlib.contextmanager
def _forwarding_signals() -> Iterator[_Child]:
    """While a training runs, SIGTERM/SIGINT/SIGUSR1 to the sweep go on to it as SIGTERM (its graceful stop), so it
    saves and ends with the sweep instead of living on as an orphan."""
    child = _Child()

    def forward(signum: int, frame: Any) -> None:
        child.signal_name = child.signal_name or signal.Signals(signum).name
        if child.process is not None:
            child.process.send_signal(signal.SIGTERM)
            child.process.send_signal(signal.SIGCONT)  # a stopped child must run to act on it

    if threading.current_thread() is not threading.main_thread():  # Python allows handlers only there
        yield child
        return
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        yield child
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


