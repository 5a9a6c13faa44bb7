"""`batchscale study`: measure the critical batch size, and put the paper's batch-size result to the test.

Stage 1, the curve (Shallue et al. 2019; McCandlish et al. 2018): for each global batch B, trials over a
log-spaced LR grid around a linear-scaling guess, each warmed up, each stopping at the first evaluation of
a held-out split (training images never trained on) that reaches the target, inside a step budget. The
fewest steps per B make the curve S(B), fitted to S_min (1 + B_noise / B) (protocol.py).

Stage 2, the paper: its grid (4 workers x per-worker batch 8...256) as the paper ran it (LR 0.1 x workers)
and with stage 1's best LR for the same global batch, for a fixed number of epochs, as the paper measured.

Every trial is a training run in its own folder, run by the sweep's executors (local slots or SLURM): a
rerun skips finished trials and resumes interrupted ones, so the study resumes as a whole.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import data
from ..config import Config
from ..errors import ConfigError
from ..flags import flag, same_as
from ..atomic import write_json_atomic
from ..rundir import check_writable
from .executors import Job
from .protocol import DIVERGED, MISSED, REACHED, Trial, analyze, lr_grid
from .runs import read_json
from .sweep import EXECUTION, Progress, SweepConfig, _ints, check_execution, check_seeds, execute, refuse_overrides

PAPER_BATCHES = (8, 16, 32, 64, 128, 256)  # per worker, on 4 workers (Kim et al. 2023)
PAPER_WORKERS = 4
PAPER_ACCURACY = {8: 23.9, 16: 81.0, 32: 86.0, 64: 87.8, 128: 88.2, 256: 80.5}  # their val accuracy, %, 90 epochs
STUDY_PRESETS = ("cpu", "full")
SCHEDULES = {"constant": "constant", "linear": "onecycle"}  # the trial's LR after warmup -> the trainer's schedule
PROTOCOL, PAPER = "the critical-batch protocol", "the paper's grid"


@dataclass
class StudyConfig:
    """A study; each field is a `batchscale study` flag. A preset fills the fields the command line left out."""

    out: str = flag("study", "study folder (one subfolder per trial)", group=PROTOCOL)
    data: str = flag("./data", "folder holding cifar-10-batches-py/ (every trial's --train-dir and --val-dir)",
                     group=PROTOCOL, aliases=("--train-dir",))
    preset: str | None = flag(None, "cpu: a small model and a low target, about 30 minutes on 2 CPU cores; full: "
                              "width 64, 94%, B 32-8192 (see the README for its cost)", group=PROTOCOL,
                              choices=STUDY_PRESETS)
    batch_sizes: tuple[int, ...] = flag(tuple(2**i for i in range(5, 14)), "global batch sizes", group=PROTOCOL,
                                        parse=_ints)
    lr_points: int = flag(4, "LRs tried per batch size", group=PROTOCOL)
    lr_spacing: float = flag(2.0, "ratio between neighbouring LRs of the grid", group=PROTOCOL)
    lr_per_128: float = flag(0.1, "the grid is centred on this LR x B / 128 (linear scaling)", group=PROTOCOL)
    extend_edges: int = flag(2, "where a batch's best LR is the grid's smallest or largest, try up to N more LRs "
                             "beyond it, one at a time", group=PROTOCOL)
    seeds: tuple[int, ...] = flag((42,), "seeds of every (batch, LR) trial", group=PROTOCOL, parse=_ints)
    target: float = flag(0.94, "held-out accuracy a trial must reach", group=PROTOCOL, aliases=("--target-accuracy",))
    holdout: int = flag(5000, "training images held out to judge the target (the test set stays for final accuracy)",
                        group=PROTOCOL)
    width: int = flag(64, "channels of ResNet-18's first stage", group=PROTOCOL)
    train_subset: int = same_as(Config, "train_subset", group=PROTOCOL,
                                help="every trial trains on only the first N training images left after --holdout: "
                                "a quick smoke run (default: 0, all)")
    budget_epochs: float = flag(60.0, "a trial's budget in images, as epochs of the training split", group=PROTOCOL)
    budget_steps: int = flag(40_000, "a trial's budget in optimizer steps (whichever comes first)", group=PROTOCOL)
    warmup: float = flag(0.05, "LR warmup from 0, as a share of the trial's step budget", group=PROTOCOL,
                         name="--warmup-share", aliases=("--warmup",))
    schedule: str = flag("linear", "LR after warmup: constant, or linear decay to 0 at the budget's end",
                         group=PROTOCOL, choices=tuple(SCHEDULES))
    micro_batch: int = flag(512, "larger batches are accumulated from micro-batches this size (batch norm's batch, "
                            "and B_simple's small batch)", group=PROTOCOL)
    eval_growth: float = flag(1.05, "evaluations near the target grow by this factor: steps known within it",
                              group=PROTOCOL)
    paper: bool = flag(True, "the paper's grid, as it ran and with the tuned LR (default: on)", group=PAPER,
                       toggle=True)
    paper_epochs: int = flag(90, "epochs of each paper-grid run (the paper: 90)", group=PAPER)
    executor: str = same_as(SweepConfig, "executor")
    slots: int = same_as(SweepConfig, "slots")
    partition: str | None = same_as(SweepConfig, "partition")
    time: int = same_as(SweepConfig, "time")
    gpus_per_run: int = same_as(SweepConfig, "gpus_per_run")
    cpus_per_run: int = same_as(SweepConfig, "cpus_per_run")
    sbatch: tuple[str, ...] = same_as(SweepConfig, "sbatch")
    wait: bool = same_as(SweepConfig, "wait", help="submit and return; rerun the same command to look again, wait "
                         "and write the report")
    dry_run: bool = flag(False, "print the trials and the most images they may train, then stop", group=EXECUTION)
    train_args: tuple[str, ...] = field(default_factory=tuple)
    nodes_per_run: int = 1
    _images: int | None = field(default=None, repr=False, compare=False)

    def validate(self) -> "StudyConfig":
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError("--batch-sizes must be comma-separated integers >= 1, like 32,64,128")
        if self.lr_points < 1 or self.lr_spacing <= 1 or self.lr_per_128 <= 0:
            raise ConfigError("--lr-points must be >= 1, --lr-spacing > 1 and --lr-per-128 > 0")
        if not 0 < self.target <= 1:
            raise ConfigError(f"--target must be an accuracy in (0, 1], like 0.94 (got {self.target})")
        if self.holdout < 1:
            raise ConfigError(f"--holdout must be at least 1 image, like 5000 (got {self.holdout})")
        if self.budget_epochs <= 0 or self.budget_steps < 1 or not 0 <= self.warmup < 1:
            raise ConfigError("--budget-epochs and --budget-steps must be positive, --warmup-share in [0, 1)")
        if self.micro_batch < 1 or any(b > self.micro_batch and b % self.micro_batch for b in self.batch_sizes):
            raise ConfigError(f"every batch size above --micro-batch {self.micro_batch} must be a multiple of it")
        if self.extend_edges < 0 or self.paper_epochs < 1 or self.width < 1:
            raise ConfigError(f"--extend-edges must be >= 0, --paper-epochs and --width >= 1 (got {self.extend_edges}, "
                              f"{self.paper_epochs}, {self.width})")
        if not 1 < self.eval_growth <= 2:
            raise ConfigError(f"--eval-growth must be in (1, 2], like 1.05 (got {self.eval_growth})")
        check_seeds(self.seeds)
        check_execution(self, "study")
        if self.train_subset < 0:
            raise ConfigError(f"--train-subset must be an integer >= 0, 0 meaning all (got {self.train_subset})")
        refuse_overrides("study", self.train_args, STUDY_SETS)
        return self

    @property
    def train_images(self) -> int:
        """Training images left once the holdout is set aside (the data folder is read once)."""
        if self._images is None:
            images = data.load_split(Path(self.data).absolute(), True)[1].shape[0]
            if self.holdout >= images // 2:
                raise ConfigError(f"--holdout {self.holdout} is half or more of the {images} training images in "
                                  f"{self.data}; hold out fewer")
            if max(self.batch_sizes) > images - self.holdout:
                raise ConfigError(f"batch {max(self.batch_sizes)} is larger than the {images - self.holdout} training "
                                  "images; lower --batch-sizes or --holdout")
            self._images = images - self.holdout
            if self.train_subset:
                self._images = min(self._images, self.train_subset)
                if max(self.batch_sizes) > self._images:
                    raise ConfigError(f"batch {max(self.batch_sizes)} is larger than --train-subset {self.train_subset}"
                                      "; lower --batch-sizes or raise --train-subset")
        return self._images


STUDY_PRESET_VALUES: dict[str, dict[str, Any]] = {
    # What the issue asks of the real thing: ResNet-18 at full width to 94% held-out accuracy.
    "full": {"width": 64, "target": 0.94, "batch_sizes": tuple(2**i for i in range(5, 14)), "holdout": 5000,
             "budget_epochs": 60.0, "budget_steps": 40_000, "schedule": "linear", "micro_batch": 512,
             "paper_epochs": 90},
    # Everything scaled to about 30 minutes on 2 CPU cores (1,731 s: benchmarks/results/cpu-study): width 8, a low target a
    # constant LR reaches, a smaller holdout, a short paper grid.
    "cpu": {"width": 8, "target": 0.45, "batch_sizes": (16, 32, 64, 128, 256, 512, 1024), "holdout": 2000,
            "budget_epochs": 4.0, "budget_steps": 6000, "schedule": "constant", "micro_batch": 128,
            "paper_epochs": 1, "slots": 2},
}


def study_preset(name: str, config: StudyConfig, given: set[str] = frozenset()) -> StudyConfig:  # type: ignore[assignment]
    chosen = {k: v for k, v in STUDY_PRESET_VALUES[name].items() if k not in given}
    return StudyConfig(**{**asdict(config), **chosen, "preset": name})


# The training flags every trial gets from the study, and the study flag that sets them instead.
STUDY_SETS = {
    "train_dir": "--data", "val_dir": "--data", "width": "--width", "holdout": "--holdout",
    "target_accuracy": "--target", "batch_size": "--batch-sizes", "batches_per_allreduce": "--micro-batch",
    "lr_scaling": "--lr-per-128", "base_lr": "--lr-per-128, --lr-points, --lr-spacing",
    "warmup_start_lr": "--warmup-share", "warmup_steps": "--warmup-share", "warmup_epochs": "--warmup-share",
    "lr_schedule": "--schedule", "lr_decay_epochs": "--paper-epochs", "epochs": "--budget-epochs or --paper-epochs",
    "max_steps": "--budget-steps", "eval_growth": "--eval-growth", "seed": "--seeds", "log_dir": "--out",
    "simulate_workers": "--no-paper (the paper grid has 4 workers)", "train_subset": "--train-subset",
}


@dataclass(frozen=True)
class Planned:
    """A trial or paper run: its folder name, training flags, and the most images it may train."""

    name: str
    args: tuple[str, ...]
    budget_images: int
    steps: int = 0  # a trial's step budget (0: a paper run, bounded by its epochs)


def trial_steps(config: StudyConfig, batch: int) -> int:
    return max(1, min(config.budget_steps, math.ceil(config.budget_epochs * config.train_images / batch)))


def common_args(config: StudyConfig) -> list[str]:
    folder = str(Path(config.data).absolute())  # a trial may run elsewhere (SLURM): name the data absolutely
    return ["--train-dir", folder, "--val-dir", folder, "--no-download", "--width", str(config.width), "--holdout", str(config.holdout), "--target-accuracy", str(config.target),
            "--val-batch-size", "500", "--keep-checkpoints", "1", "--no-progress",
            "--noise-every", "1",  # a trial is short: B_simple from every step, not one in ten
            "--train-subset", str(config.train_subset), *config.train_args]


def curve_trial(config: StudyConfig, batch: int, lr: float, seed: int) -> Planned:
    micro = min(batch, config.micro_batch)
    steps = trial_steps(config, batch)
    epochs = math.ceil(steps / (config.train_images // batch))
    args = [*common_args(config), "--batch-size", str(micro), "--batches-per-allreduce", str(batch // micro),
            "--lr-scaling", "none", "--base-lr", f"{lr:.6g}", "--warmup-start-lr", "0", "--warmup-steps",
            str(max(1, round(config.warmup * steps))), "--lr-schedule", SCHEDULES[config.schedule], "--epochs",
            str(epochs), "--max-steps", str(steps), "--stop-at-target", "--eval-growth", str(config.eval_growth),
            "--seed", str(seed)]
    return Planned(f"curve/b{batch}-lr{lr:.4g}-s{seed}", tuple(args), steps * batch, steps)


def curve_trials(config: StudyConfig) -> list[Planned]:
    return [curve_trial(config, batch, lr, seed) for batch in config.batch_sizes
            for lr in lr_grid(config.lr_per_128 * batch / 128, config.lr_points, config.lr_spacing)
            for seed in config.seeds]


def grid_steps_beyond(config: StudyConfig, batch: int, lr: float) -> int:
    """How many grid spacings `lr` lies outside batch `batch`'s base grid (0 inside it)."""
    grid = lr_grid(config.lr_per_128 * batch / 128, config.lr_points, config.lr_spacing)
    below, above = math.log(grid[0] / lr), math.log(lr / grid[-1])
    return max(0, round(max(below, above) / math.log(config.lr_spacing)))


def edge_trials(config: StudyConfig, trials: list[Trial]) -> list[Planned]:
    """One more LR beyond the edge for each batch whose best LR is the smallest or largest tried so far, up to
    --extend-edges spacings beyond the base grid. Counted from the grid, not from how often this ran, so a rerun
    of a finished study asks for nothing more."""
    extra = []
    for best in analyze(trials, replicates=0).bests:
        if best.at_edge and best.trial is not None:
            step = 1 / config.lr_spacing if best.trial.lr == best.lrs[0] else config.lr_spacing
            lr = best.trial.lr * step
            if grid_steps_beyond(config, best.batch, lr) <= config.extend_edges:
                extra += [curve_trial(config, best.batch, lr, seed) for seed in config.seeds]
    return extra


def paper_runs(config: StudyConfig, tuned: dict[int, float]) -> list[Planned]:
    """The paper's grid at LR 0.1 x workers, and at `tuned` (global batch -> stage 1's best peak LR) where known."""
    epochs = config.paper_epochs
    # The paper's step schedule where its 90 epochs fit; a short run keeps the shape: warmup, then decay.
    schedule = (["--lr-schedule", "step", "--lr-decay-epochs", "30,60,80", "--warmup-epochs", "5"] if epochs >= 90
                else ["--lr-schedule", "cosine", "--warmup-epochs", f"{5 * epochs / 90:.4g}"])
    planned = []
    for b in PAPER_BATCHES:
        if b * PAPER_WORKERS > config.train_images:
            continue  # a smaller data set than CIFAR-10's (paper_stage says so)
        layout = [*common_args(config), *schedule, "--batch-size", str(b), "--simulate-workers", str(PAPER_WORKERS),
                  "--epochs", str(epochs), "--seed", str(config.seeds[0])]
        images = epochs * config.train_images
        planned.append(Planned(f"paper/b{b}-paper-lr", (*layout, "--lr-scaling", "linear", "--base-lr", "0.1"), images))
        lr = tuned.get(b * PAPER_WORKERS)
        if lr is not None:
            # Warmed up from a quarter of the peak, as the paper's ramp starts at one worker's LR.
            planned.append(Planned(tuned_name(b, lr), (*layout, "--lr-scaling", "none", "--base-lr",
                                   f"{lr:.6g}", "--warmup-start-lr", f"{lr / PAPER_WORKERS:.6g}"), images))
    return planned


def tuned_name(per_worker_batch: int, lr: float) -> str:
    return f"paper/b{per_worker_batch}-tuned-lr{lr:.4g}"


def tuned_lrs(trials: list[Trial]) -> dict[int, float]:
    """Global batch -> the LR of its best trial: what the paper grid's tuned runs use."""
    return {b.batch: b.trial.lr for b in analyze(trials, replicates=0).bests if b.trial is not None}


def train_command(args: tuple[str, ...], run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "batchscale.cli", "train", *args, "--log-dir", str(run_dir)]


def images_trained(run_dir: Path) -> float:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return 0.0
    total = 0.0
    for line in metrics.read_text().splitlines():
        try:
            total += json.loads(line)["images"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by a crash; the run's own resume rewrites it
    return total


ENDINGS = ("target", "budget", "epochs")  # how a finished trial or paper run ended (target.TargetWatch)


def damaged(run_dir: Path) -> str | None:
    """Why the run's summary.json or diverged.json is not a finished run's record, or None (sound, or absent)."""
    for name in ("diverged.json", "summary.json"):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            saved = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"{name} cannot be read ({err})"
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            return f"{name} has no config"
        trial = saved.get("trial")
        if not isinstance(trial, dict) or (name == "summary.json" and trial.get("ended") not in ENDINGS):
            return f"{name} has no trial record of how it ended"
        if not isinstance(trial.get("evals") or [], list) or not isinstance(trial.get("reached") or {}, dict):
            return f"{name} has a malformed trial record"
        return None
    return None


def finished(run_dir: Path) -> bool:
    """A trial or paper run is over once it wrote a sound summary (a run in progress has none) or diverged."""
    present = (run_dir / "summary.json").is_file() or (run_dir / "diverged.json").is_file()
    return present and damaged(run_dir) is None


def run_stage(config: StudyConfig, planned: list[Planned], label: str, say: Callable[..., None]) -> list[str]:
    """Runs what is not finished; returns the failed runs' names (a diverged trial is a result, not a failure).
    A run whose record is damaged is named and run again (it resumes from its last checkpoint)."""
    out = Path(config.out)
    pending = [Job(p.name, train_command(p.args, out / p.name), out / p.name) for p in planned
               if not finished(out / p.name)]
    for job in pending:
        why = damaged(job.run_dir)
        if why is not None:
            say(f"{label}: {job.name}: {why}; running it again (it resumes from its last checkpoint)")
            for name in ("summary.json", "diverged.json"):
                (job.run_dir / name).unlink(missing_ok=True)
    if len(pending) < len(planned):
        say(f"{label}: {len(planned) - len(pending)} of {len(planned)} already finished, skipped")
    progress = Progress(out, {p.name: float(p.budget_images) for p in planned}, finished, images_trained, say,
                        label=label, unit="image")
    execute(config, out, pending, progress, say)
    if not config.wait:
        return []
    progress.show(final=True)
    return progress.failed()


def read_trial(run_dir: Path) -> Trial | None:
    """A finished trial's outcome from its folder (summary.json, or diverged.json), or None if unfinished. Its
    batch, LR and seed are read from the config it ran with. A damaged record is an error naming it."""
    why = damaged(run_dir)
    if why is not None:
        raise ConfigError(f"{run_dir}: {why}; rerun the study (it runs that trial again) or move the folder out")
    if (run_dir / "diverged.json").is_file():
        saved, status = read_json(run_dir / "diverged.json"), DIVERGED
    elif (run_dir / "summary.json").is_file():
        saved = read_json(run_dir / "summary.json")
        status = REACHED if (saved.get("trial") or {}).get("reached") else MISSED
        if (saved.get("trial") or {}).get("ended") not in ("target", "budget"):
            return None
    else:
        return None
    trial, config = saved["trial"], saved["config"]
    hit = trial.get("reached") or {}
    evals = trial.get("evals") or []
    curve = tuple((e["examples"], e["b_simple"]) for e in evals if e.get("b_simple"))
    last = evals[-1] if evals else {}
    at = hit or last  # B_simple where the target was reached, or at the end
    return Trial(config["batch_size"] * config["batches_per_allreduce"], float(config["base_lr"]), config["seed"],
                 status, hit.get("step") if hit else None, hit.get("previous_eval"), trial.get("max_steps"),
                 trial.get("best_acc"), at.get("b_simple"), curve, at.get("b_simple_se"),
                 {"train_seconds": hit.get("train_seconds"), "folder": run_dir.name})


def read_trials(out: Path, strict: bool = True) -> list[Trial]:
    """Every finished trial; one that is not finished is left for `unfinished_trials` to name. A damaged one is
    an error naming it, or with `strict` off (planning what to run, which runs it again) left out."""
    folders = sorted((out / "curve").glob("b*-lr*-s*"))
    trials = [read_trial(run_dir) for run_dir in folders if strict or damaged(run_dir) is None]
    return [t for t in trials if t is not None]


def unfinished_trials(out: Path) -> list[str]:
    """Trial folders with no finished record: still running, stopped, failed, or damaged."""
    return [run_dir.name for run_dir in sorted((out / "curve").glob("b*-lr*-s*"))
            if not finished(run_dir)]


def read_study(out: Path) -> StudyConfig:
    saved = read_json(out / "study.json")
    return StudyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k != "_images"})


def study(config: StudyConfig, say: Callable[..., None] = print) -> list[str]:
    """Runs both stages (what is left of them); returns the runs that failed (the report comes after)."""
    config.validate()
    out = Path(config.out)
    check_writable(out, "--out")  # a file in the way, a path too long, a symlink to nothing, no write permission
    curve = curve_trials(config)
    if config.dry_run:
        budget = sum(p.budget_images for p in curve)
        say(f"{len(curve)} trials ({len(config.batch_sizes)} batch sizes x {config.lr_points} LRs x "
            f"{len(config.seeds)} seeds), at most {budget / 1e6:.1f}M images ({budget / config.train_images:.0f} "
            f"epochs); paper grid: {2 * len(PAPER_BATCHES)} runs x {config.paper_epochs} epochs")
        for p in curve:
            say(f"  {p.name}: at most {p.steps} steps")
        return []
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "study.json", {k: v for k, v in asdict(config).items() if k != "_images"})
    failed = run_stage(config, curve, "curve", say)
    if not config.wait:
        return []
    for _ in range(config.extend_edges):  # Shallue et al.: a best LR on the grid's edge may not be the best
        extra = [p for p in edge_trials(config, read_trials(out, strict=False)) if p not in curve]
        if not extra:
            break
        batches = sorted({int(p.name.split("/b")[1].split("-")[0]) for p in extra})
        say(f"curve: the best LR is at the edge of the grid for B = {', '.join(map(str, batches))}; "
            f"{len(extra)} more trial(s) beyond it")
        curve += extra
        failed += run_stage(config, curve, "curve", say)
    return failed + (paper_stage(config, say) if config.paper else [])


def paper_stage(config: StudyConfig, say: Callable[..., None]) -> list[str]:
    tuned = tuned_lrs(read_trials(Path(config.out), strict=False))
    missing = [b * PAPER_WORKERS for b in PAPER_BATCHES if b * PAPER_WORKERS not in tuned]
    if missing:
        say(f"paper grid: no tuned LR for global batch {', '.join(map(str, missing))} (not in --batch-sizes, or no "
            "trial reached the target); those run at the paper's LR only")
    too_big = [b for b in PAPER_BATCHES if b * PAPER_WORKERS > config.train_images]
    if too_big:
        say(f"paper grid: per-worker batch {', '.join(map(str, too_big))} x {PAPER_WORKERS} workers is more than the "
            f"{config.train_images} training images; left out")
    return run_stage(config, paper_runs(config, tuned), "paper", say)
