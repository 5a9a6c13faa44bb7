"""`batchscale sweep`: a grid of full training runs, each in its own folder, resumable as a whole."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import itertools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..config import Config, global_batch
from ..errors import BatchscaleError, ConfigError, Diverged, Stopped
from ..flags import flag, given_options, same_as
from ..atomic import write_json_atomic
from ..rundir import check_writable
from . import paper
from .executors import Job, LocalPool, Outcome, SlurmQueue, forwarding_signals
from .runs import diverged_why, epochs_done, folder_state, has_diverged, is_done, read_json, unreadable

LAUNCHERS = ("simulate", "torchrun", "horovodrun")
PRESETS = ("paper",)  # the critical batch is measured by `batchscale study` (study/critical.py)
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


def _as_flag_value(kind: type) -> Callable[[str], tuple]:
    """A list parser for argparse: its error says what was expected, not the parser's own name."""
    def parse(text: str) -> tuple:
        try:
            return parse_list(text, kind)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


_ints, _floats, _strings = _as_flag_value(int), _as_flag_value(float), _as_flag_value(str)


GRID = "the grid (flags after -- go to every run)"
EXECUTION = "where the trainings run"
EXECUTORS = ("local", "slurm")


@dataclass
class Execution:
    """Where and how a command's trainings run: the flags a sweep and a study share, declared once."""

    COMMAND: ClassVar[str] = "sweep"  # the batchscale command, named in what its trainings' pool says

    executor: str = flag("local", "local: on this machine, --slots at a time; slurm: a job array on a SLURM cluster",
                         group=EXECUTION, choices=EXECUTORS)
    slots: int = flag(1, "local: trainings at once (each gets its GPUs, or an equal share of the CPU cores)",
                      group=EXECUTION)
    fresh_process: bool = flag(False, "local: start a new process for every training, as before trial workers (by "
                               "default each slot runs its trainings one after another in one long-lived process, "
                               "which starts torch, reads the data and compiles once)", group=EXECUTION)
    partition: str | None = flag(None, "slurm: the partition (default: the cluster's)", group=EXECUTION)
    time: int = flag(60, "slurm: minutes each job may run (a longer training is requeued and resumes)",
                     group=EXECUTION)
    gpus_per_run: int = flag(0, "slurm: GPUs per training (default: 0; give the workers of GPU runs)", group=EXECUTION)
    cpus_per_run: int = flag(2, "slurm: CPU cores per training (per node)", group=EXECUTION)
    nodes_per_run: int = flag(1, "slurm: nodes per training; with --launcher torchrun its workers are split evenly "
                              "across them", group=EXECUTION)
    sbatch: tuple[str, ...] = flag((), "slurm: more sbatch options, comma-separated key=value (e.g. account=me,qos=low)",
                                   group=EXECUTION, parse=_strings)
    wait: bool = flag(True, "submit and return; look again with batchscale sweep --status --out DIR", group=EXECUTION,
                      name="--no-wait")

    def check(self, command: str) -> None:
        """The execution flags, checked alike for both commands (a study with --slots 0 would wait forever)."""
        if self.executor not in EXECUTORS:
            raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)} (got {self.executor!r})")
        if self.slots < 1 or self.time < 1 or self.cpus_per_run < 1 or self.gpus_per_run < 0:
            raise ConfigError(f"--slots, --time and --cpus-per-run must be >= 1 and --gpus-per-run >= 0 (got "
                              f"{self.slots}, {self.time}, {self.cpus_per_run}, {self.gpus_per_run})")
        if self.nodes_per_run < 1 or (self.nodes_per_run > 1 and self.executor != "slurm"):
            raise ConfigError(f"--nodes-per-run must be >= 1, and above 1 needs --executor slurm (got "
                              f"{self.nodes_per_run})")
        if not self.wait and self.executor != "slurm":
            raise ConfigError(f"--no-wait needs --executor slurm: local trainings end with the {command}")
        if any("=" not in option for option in self.sbatch):
            raise ConfigError(f"--sbatch takes key=value options, like account=me,qos=low (got {','.join(self.sbatch)})")


@dataclass
class SweepConfig(Execution):
    """A sweep; each field is a `batchscale sweep` flag. A preset fills the fields the command line left out."""

    out: str = flag("sweep", "sweep folder", group=GRID)
    preset: str | None = flag(None, "paper: the original's grid (for the critical batch, see batchscale study)",
                              group=GRID, choices=PRESETS)
    batch_sizes: tuple[int, ...] = flag((64, 128, 256), "per-worker batch sizes, comma-separated", group=GRID,
                                        parse=_ints)
    workers: tuple[int, ...] = flag((1,), "worker counts", group=GRID, parse=_ints)
    lr_scalings: tuple[str, ...] = flag(("linear",), "LR scaling rules (linear, sqrt, none)", group=GRID,
                                        parse=_strings)
    base_lrs: tuple[float, ...] = flag((0.1,), "base LRs", group=GRID, parse=_floats)
    seeds: tuple[int, ...] = flag((42,), "seeds", group=GRID, parse=_ints)
    epochs: int = flag(50, "epochs of every run", group=GRID)
    train_subset: int = same_as(Config, "train_subset", group=GRID,
                                help="every run trains on only the first N training images: a quick smoke run "
                                "(default: 0, all)")
    launcher: str = flag("simulate", "simulate: N workers' arithmetic in one process; torchrun/horovodrun: N real "
                         "processes", group=GRID, choices=LAUNCHERS)
    # Training flags a sweep is commonly given, spelled as train and study spell them (also accepted after --).
    width: int | None = flag(None, "every run's --width: channels of ResNet-18's first stage (default: the "
                             "training's, 64)", group=GRID, parse=int)
    train_dir: str | None = flag(None, "folder holding cifar-10-batches-py/: every run's --train-dir and --val-dir "
                                 "(default: the training's, ./data)", group=GRID, aliases=("--data",), metavar="DIR")
    status: bool = flag(False, "print where each run of --out stands, and return", group=EXECUTION)
    train_args: tuple[str, ...] = field(default_factory=tuple)

    def runs(self) -> list[Run]:
        grid = itertools.product(self.batch_sizes, self.workers, self.lr_scalings, self.base_lrs, self.seeds)
        return [Run(b, w, s, lr, seed) for b, w, s, lr, seed in grid]

    def validate(self) -> "SweepConfig":
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)} (got {self.launcher!r})")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or not self.workers or min(self.workers) < 1:
            raise ConfigError("--batch-sizes and --workers must be comma-separated integers >= 1, like 64,128")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1 (got {self.epochs})")
        if not self.base_lrs or not all(0 < lr < math.inf for lr in self.base_lrs):
            raise ConfigError(f"--base-lrs must be positive numbers, like 0.05,0.1 (got {self.base_lrs})")
        check_seeds(self.seeds)
        self.check("sweep")
        if self.nodes_per_run > 1 and (self.launcher != "torchrun" or any(w % self.nodes_per_run for w in self.workers)):
            raise ConfigError("--nodes-per-run > 1 needs --executor slurm, --launcher torchrun and worker counts that "
                              "split evenly across the nodes")
        if self.width is not None and self.width < 1:
            raise ConfigError(f"--width must be an integer >= 1 (got {self.width})")
        given = {"width": "--width"} if self.width is not None else {}
        given |= {"train_dir": "--train-dir", "val_dir": "--train-dir"} if self.train_dir is not None else {}
        refuse_overrides("sweep", self.train_args, SWEEP_SETS | given)
        return self

    def training_flags(self) -> list[str]:
        """The training flags given to the sweep itself, for every run."""
        width = ["--width", str(self.width)] if self.width is not None else []
        folder = str(Path(self.train_dir).absolute()) if self.train_dir is not None else ""  # SLURM runs elsewhere
        data = ["--train-dir", folder, "--val-dir", folder] if folder else []
        return [*width, *data]


# The training flags every sweep run gets from the sweep itself, and the sweep flag to use instead.
SWEEP_SETS = {"epochs": "--epochs", "batch_size": "--batch-sizes", "batches_per_allreduce": "--batch-sizes",
              "lr_scaling": "--lr-scalings", "base_lr": "--base-lrs", "seed": "--seeds", "log_dir": "--out",
              "simulate_workers": "--workers with --launcher simulate", "train_subset": "--train-subset"}


def refuse_overrides(command: str, train_args: tuple[str, ...], sets: dict[str, str]) -> None:
    """A training flag after -- that the command also sets would be overridden by the command's own value (the
    last one wins): refuse it, naming the command's flag that sets it, rather than run something else."""
    clashes = [f"{given} (use batchscale {command} {sets[name]})"
               for name, given in given_options(Config, list(train_args)).items() if name in sets]
    if clashes:
        raise ConfigError(f"{', '.join(clashes)} after -- is set by batchscale {command} for every run; give it "
                          "before -- as shown")


def check_seeds(seeds: tuple[int, ...]) -> None:
    if not seeds or not all(0 <= s < 2**64 for s in seeds):
        raise ConfigError(f"--seeds must be integers from 0 to 2**64 - 1, like 1,2,3 (got {seeds})")


PRESET_GRIDS: dict[str, dict[str, Any]] = {
    # Kim et al. 2023: 4 workers, per-worker batch 8-256, LR = 0.1 x workers, the original's 50 epochs and step
    # schedule (paper.schedule, the study's paper grid's too).
    "paper": {"batch_sizes": (8, 16, 32, 64, 128, 256), "workers": (4,), "lr_scalings": ("linear",), "base_lrs": (0.1,)},
}


def preset(name: str, config: SweepConfig, given: set[str] = frozenset()) -> SweepConfig:  # type: ignore[assignment]
    """`config` with preset `name`'s grid in every field not in `given` (what the command line set)."""
    if name not in PRESET_GRIDS:
        raise ConfigError(f"--preset must be one of {', '.join(PRESETS)} (got {name!r})")
    chosen = {k: v for k, v in PRESET_GRIDS[name].items() if k not in given}
    made = SweepConfig(**{**asdict(config), **chosen, "preset": name})
    if name == "paper":  # the original's schedule, the study's paper grid's too; flags after -- still win
        made.train_args = (*paper.schedule(made.epochs), *made.train_args)
    return made


def command(config: SweepConfig, run: Run, run_dir: Path) -> list[str]:
    args = [*config.train_args, *config.training_flags(), "--epochs", str(config.epochs), "--batch-size", str(run.batch_size),
            "--batches-per-allreduce", str(run.batches_per_allreduce), "--lr-scaling", run.lr_scaling,
            "--base-lr", str(run.base_lr), "--seed", str(run.seed), "--log-dir", str(run_dir), "--no-progress",
            "--train-subset", str(config.train_subset)]
    train = [sys.executable, "-m", "batchscale.cli", "train"]
    if run.workers == 1:
        return [*train, *args]
    if config.launcher == "simulate":
        return [*train, *args, "--simulate-workers", str(run.workers)]
    if config.launcher == "torchrun" and config.nodes_per_run > 1:
        # One torchrun per node (SLURM starts one task on each); they meet at the job's first node, which the
        # job fills in for {head} when it starts (executors.TrainingJob).
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(config.nodes_per_run),
                "--nproc-per-node", str(run.workers // config.nodes_per_run), "--rdzv-backend", "c10d",
                "--rdzv-endpoint", "{head}:29500", "--rdzv-id", run.name, "-m", "batchscale.cli", "train", *args]
    if config.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(run.workers),
                "-m", "batchscale.cli", "train", *args]
    horovodrun = str(Path(sys.executable).parent / "horovodrun")
    return [horovodrun, "-np", str(run.workers), "-H", f"localhost:{run.workers}", *train, *args]


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def sweep(config: SweepConfig, say: Callable[..., None] = print) -> list[Path]:
    """Runs every run not yet finished (skips the done, resumes the interrupted, retries the failed); returns
    the run folders. A failed run does not stop the others; the sweep names each failure's log at the end."""
    config.validate()
    out = Path(config.out)
    check_writable(out, "--out")  # a file in the way, a path too long, a symlink to nothing, no write permission
    out.mkdir(parents=True, exist_ok=True)
    runs = config.runs()
    write_json_atomic(out / "sweep.json", {**asdict(config), "runs": [r.name for r in runs]})
    folders = [out / r.name for r in runs]
    # Real workers each need a GPU of their own; simulated ones share one.
    pending = [Job(r.name, command(config, r, out / r.name), out / r.name,
                   gpus=r.workers if config.launcher != "simulate" else 1)
               for r in runs if not is_done(out / r.name, config.epochs)]
    if len(pending) < len(runs):
        say(f"{len(runs) - len(pending)} of {len(runs)} runs already done, skipped")
    progress = Progress(out, {r.name: float(config.epochs) for r in runs}, lambda d: is_done(d, config.epochs),
                        epochs_done, say)
    execute(config, out, pending, progress, say)
    if not config.wait:
        return folders
    progress.show(final=True)
    ended_badly(progress, out, len(runs), "sweep")
    return folders


def ended_badly(progress: Progress, out: Path, total: int, command: str) -> None:
    """Raises if a run failed (exit 1) or diverged (exit 3): a run that did not reach its end is a result with a
    status, named here and listed in the report, never a silent success."""
    failed = [f"{name} (failed; see {out / name / 'train.log'})" for name in progress.failed()]
    diverged = [f"{name} ({diverged_why(out / name)})" for name in progress.diverged()]
    report = f"batchscale report {out} lists every run with its status"
    if failed:
        also = f"; {len(diverged)} diverged: {'; '.join(diverged)}" if diverged else ""
        raise BatchscaleError(f"{len(failed)} of {total} runs failed: {'; '.join(failed)}{also}; fix and rerun the "
                              f"{command} to retry the failed ones (finished runs are kept); {report}")
    if diverged:
        raise Diverged(f"{len(diverged)} of {total} runs diverged: {'; '.join(diverged)}; they are results (a rerun "
                       f"keeps them): {report}; a smaller LR trains them")


def execute(config: Execution, out: Path, pending: list[Job], progress: Progress, say: Callable[..., None]) -> None:
    """Runs `pending` where `config`'s execution fields say (a sweep's or a study's), showing `progress`."""
    with shared_compile_cache(out):
        run_pending(config, out, pending, progress, say)


def run_pending(config: Execution, out: Path, pending: list[Job], progress: Progress, say: Callable[..., None]) -> None:
    if config.executor == "slurm":
        queue = SlurmQueue(out / ".slurm", config.partition, config.time, config.gpus_per_run, config.cpus_per_run,
                           dict(option.split("=", 1) for option in config.sbatch), nodes=config.nodes_per_run)
        jobs = {**read_jobs(out), **queue.submit(pending)} if pending else read_jobs(out)
        write_json_atomic(out / "jobs.json", jobs)
        say(f"submitted {len(pending)} training(s) to SLURM ({', '.join(sorted(set(j.split('_')[0] for j in jobs.values())))})")
        if not config.wait:
            return
        wait_for_slurm(config, jobs, progress)
    else:
        progress.outcomes = {job.name: Outcome() for job in pending}

        def tick(running: set[str]) -> None:
            progress.running = running
            progress.show()

        pool = local_pool(config)
        pool.command = config.COMMAND
        pool.run(pending, progress.outcomes, tick)


POOLS: dict[tuple[int, int, bool], LocalPool] = {}


def local_pool(config: Execution) -> LocalPool:
    """One pool per layout for the life of the command, so that its workers carry on from one run to the next
    (a study runs one per stage) instead of starting torch and reading the data again; ended at exit (an idle
    worker also ends by itself when this process is gone: its input closes)."""
    key = (config.slots, gpu_count(), config.fresh_process)
    if key not in POOLS:
        if not POOLS:
            atexit.register(close_pools)
        POOLS[key] = LocalPool(key[0], key[1], fresh=key[2], keep=True)
    return POOLS[key]


def close_pools() -> None:
    for pool in POOLS.values():
        pool.close()


@contextlib.contextmanager
def shared_compile_cache(out: Path) -> Iterator[None]:
    """Every trial of a sweep or study compiles the same graphs: one inductor cache under --out, in the
    environment the trainings inherit (local and SLURM alike) while they are launched and waited on, lets the
    first trial compile and the rest load. A cache the user set wins."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        yield
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str((out / ".compile-cache").resolve())
    try:
        yield
    finally:
        del os.environ["TORCHINDUCTOR_CACHE_DIR"]


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def read_jobs(out: Path) -> dict[str, str]:
    path = out / "jobs.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def wait_for_slurm(config: Execution, jobs: dict[str, str], progress: Progress) -> None:
    """Polls the run folders (and squeue for what is still alive) until every run is done or failed. A
    signal to the sweep stops the waiting only: the jobs go on, and --status looks again."""
    with forwarding_signals(lambda: []) as stop:
        progress.jobs = jobs
        while not stop.signal_name:
            progress.alive = SlurmQueue.alive(list(jobs.values()))
            progress.show()
            if all(state in ("done", "failed") for state in progress.states.values()):
                return
            time.sleep(POLL_SECONDS)  # a cluster has no event to wait on; squeue is cheap at this rate
    again = (f"batchscale sweep --status --out {config.out}" if config.COMMAND == "sweep" else
             "rerun the same command to look again and wait")
    raise Stopped(f"stopped waiting ({stop.signal_name}); the jobs keep running: {again}")


POLL_SECONDS = 5.0
# The line a training prints once its first steps are timed (metrics.RunLog.estimate_cost): steps left, s/step, step.
COST_LINE = re.compile(r"cost: about \S+ for the (\d+) steps left \(([0-9.e+-]+) s/step over steps \d+-(\d+)")


class Progress:
    """One line for the whole sweep or study: runs done / running / queued / failed, and the time left. What it
    knows comes from the run folders, and from whoever runs them: the local pool (running, exit codes) or squeue.

    `budget` is each run's work at most (epochs, or a trial's images) and `trained(folder)` how much it has
    done. A trial that ends at its target stops short of its budget, so the time left assumes the remaining
    runs use the share of their budget the finished ones did."""

    def __init__(self, out: Path, budget: dict[str, float], finished: Callable[[Path], bool],
                 trained: Callable[[Path], float], say: Callable[..., None], label: str = "sweep",
                 unit: str = "epoch") -> None:
        self.out, self.budget, self.finished, self.trained, self.say = out, budget, finished, trained, say
        self.label, self.unit = label, unit
        self.started = time.monotonic()
        self.at_start = sum(trained(out / name) for name in budget)
        self.states: dict[str, str] = {}
        self.running: set[str] = set()
        self.outcomes: dict[str, Outcome] = {}
        self.alive: set[str] | None = None  # SLURM job ids still queued or running
        self.jobs: dict[str, str] = {}
        self.offline = False

    def state(self, name: str) -> str:
        if has_diverged(self.out / name):
            return "diverged"
        if self.finished(self.out / name):
            return "done"
        if self.alive is not None:
            if name not in self.jobs:
                return "not submitted"
            if self.jobs.get(name) not in self.alive:
                return "failed"
            return "running" if (self.out / name / "train.log").is_file() else "queued"
        if self.offline:  # --status of a local sweep: no pool to ask, only the folders
            return folder_state(self.out / name)
        outcome = self.outcomes.get(name)
        if outcome is not None and outcome.exit_code is not None:
            return "failed"  # ended without a complete summary
        return "running" if name in self.running else "queued"

    def failed(self) -> list[str]:
        return [name for name, state in self.states.items() if state == "failed"]

    def diverged(self) -> list[str]:
        return [name for name, state in self.states.items() if state == "diverged"]

    def seconds_per_unit(self, name: str) -> float | None:
        """Seconds a unit of run `name`'s budget takes at the pace of its first steps, from the cost line its log
        shows once they are timed (metrics.RunLog.estimate_cost); None before."""
        try:
            text = (self.out / name / "train.log").read_text(errors="replace")
        except OSError:
            return None
        found = COST_LINE.findall(text)
        if not found:
            return None
        left, per_step, at = found[-1]  # a resumed run's log holds one per attempt: the newest
        return float(per_step) * (int(left) + int(at)) / self.budget[name]

    def show(self, final: bool = False) -> None:
        self.states = {name: self.state(name) for name in self.budget}
        counts = {k: sum(v == k for v in self.states.values())
                  for k in ("done", "running", "queued", "diverged", "failed", "stopped", "not started", "not submitted")}
        trained = {name: min(self.trained(self.out / name), budget) for name, budget in self.budget.items()}
        done = [name for name, state in self.states.items() if state in ("done", "diverged")]
        used = sum(trained[n] for n in done) / sum(self.budget[n] for n in done) if done else 1.0
        # A run past the share the finished ones used is not about to end: count a share of what it has left.
        left_work = sum(max(used * self.budget[n] - trained[n], used * (self.budget[n] - trained[n]))
                        for n, s in self.states.items() if s in ("running", "queued", "stopped", "not started"))
        rate = (sum(trained.values()) - self.at_start) / (time.monotonic() - self.started)
        if rate > 0:
            left = clock(left_work / rate)  # the rate already counts runs side by side
        else:  # nothing recorded yet: the running runs' own first measured steps, as each run's cost line said
            early = [s for s in (self.seconds_per_unit(n) for n, st in self.states.items() if st == "running") if s]
            left = clock(left_work * sum(early) / len(early) / counts["running"]) if early else "estimating"
        total = sum(self.budget.values())
        amount = (f"epoch {sum(trained.values()):.0f}/{total:.0f}" if self.unit == "epoch" else
                  f"{sum(trained.values()) / 1e6:.2f}M of at most {total / 1e6:.2f}M {self.unit}s")
        unsent = "".join(f", {counts[k]} {k}" for k in ("stopped", "not started", "not submitted") if counts[k])
        line = (f"[{self.label}] {counts['done']} done, {counts['running']} running, {counts['queued']} queued, "
                f"{counts['failed']} failed, {counts['diverged']} diverged{unsent}; {amount}, ~{left} left")
        self.say(line if final else line + "   ", end="\n" if final else "\r")


def status(config: SweepConfig, say: Callable[..., None] = print) -> None:
    """`batchscale sweep --status`: where each run of a sweep folder stands, from the folder (and squeue)."""
    out = Path(config.out)
    recorded = recorded_sweep(out)
    if recorded is None:
        raise ConfigError(f"{out} holds no sweep (no sweep.json); give the --out of a sweep")
    jobs = read_jobs(out)
    progress = Progress(out, {r.name: float(recorded.epochs) for r in recorded.runs()},
                        lambda d: is_done(d, recorded.epochs), epochs_done, say)
    if recorded.executor == "slurm":  # a run SLURM was never given is "not submitted", not "queued"
        progress.jobs, progress.alive = jobs, SlurmQueue.alive(list(jobs.values()))
    else:
        progress.offline = True
    progress.show(final=True)
    for run in recorded.runs():
        say(f"  {run.name}: {progress.states[run.name]}, epoch {epochs_done(out / run.name)}/{recorded.epochs}"
            + (f", job {jobs[run.name]}" if run.name in jobs else ""))


def recorded_sweep(out: Path) -> SweepConfig | None:
    """The sweep its sweep.json records, or None for a folder of loose runs."""
    path = out / "sweep.json"
    if not path.is_file():
        return None
    saved = read_json(path)
    try:
        return SweepConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k != "runs"})
    except (TypeError, AttributeError) as err:
        raise unreadable(path, f"is not a sweep's record ({err})") from None


def planned_runs(out: Path) -> dict[str, tuple[int, int]]:
    """Run name -> (global batch, workers) for every run sweep.json lists (empty for a folder of loose runs)."""
    recorded = recorded_sweep(out)
    return {r.name: (r.global_batch, r.workers) for r in recorded.runs()} if recorded is not None else {}
