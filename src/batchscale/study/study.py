"""`batchscale study`: measure the critical batch size, and put the paper's batch-size result to the test.

Stage 1, the curve (Shallue et al. 2019; McCandlish et al. 2018): batch sizes in ascending order, each a
stage of trials over a log-spaced LR grid centred on the previous batch's best (protocol.centre_after; the
first on a linear-scaling guess), extended one LR at a time while the best is on its edge
(protocol.next_lr), every (LR, seed) with the same warmup in images and the same micro-batch, each trial
stopping at the first evaluation of a held-out split (training images never trained on) that reaches the
target, inside a step budget. Each batch's optimum makes the curve S(B), fitted to S_min (1 + B_noise / B)
(protocol.py). testing/nqm.py's run_study plans the same way on a problem whose answer is known.

Stage 2, the paper (paper.py): its grid (4 workers x per-worker batch 8...256) for a fixed number of epochs, as
the paper ran it (LR 0.1 x workers), at the LR best for its own objective, and with a batch-norm control.

Every trial is a training run in its own folder, run by the sweep's executors (local slots or SLURM): a
rerun skips finished trials and resumes interrupted ones, so the study resumes as a whole.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from .. import data
from ..config import Config
from ..errors import ConfigError
from ..flags import flag, same_as
from ..atomic import write_json_atomic, write_text_atomic
from ..rundir import LOCK_NAME, RunLock, check_writable
from .executors import Job
from .paper import PaperPlan, paper_stage, budget as paper_budget, runs as paper_runs
from .planned import Planned
from .protocol import DIVERGED, MISSED, REACHED, Cells, Trial, analyze, cells_of, lr_grid, plan_curve
from .reuse import check_runs, check_study
from .sequential import Plan, Settings, plan_round
from .runs import clear_record, damaged, finished, images_trained, read_json, trial_record
from .sweep import EXECUTION, Execution, Progress, _ints, check_seeds, clock, execute, refuse_overrides

STUDY_PRESETS = ("smoke", "cpu", "gpu", "full")
SCHEDULES = {"constant": "constant", "linear": "onecycle"}  # the trial's LR after warmup -> the trainer's schedule
PROTOCOL, PAPER = "the critical-batch protocol", "the paper's grid"


@dataclass
class StudyConfig(Execution):
    """A study; each field is a `batchscale study` flag. A preset fills the fields the command line left out."""

    COMMAND: ClassVar[str] = "study"

    out: str = flag("study", "study folder (one subfolder per trial)", group=PROTOCOL)
    data: str = flag("./data", "folder holding cifar-10-batches-py/ (every trial's --train-dir and --val-dir)",
                     group=PROTOCOL, name="--train-dir", aliases=("--data",), metavar="DIR")
    preset: str | None = flag(None, "smoke: a first look, not a measurement: width 8 to 25% on 2,000 images, B "
                              "32-256 at one untuned LR and one seed, a rough B_crit and its interval in a few minutes "
                              "on 2 CPU cores; cpu: a small model and a low target, 2 seeds, about an hour on 2 CPU cores (see "
                              "the README); gpu: width 64, 80%, B 64-4096, 2 seeds, no paper grid, about 10 minutes "
                              "on one H100/H200; full: width 64, 94%, B 32-8192 (see "
                              "the README for its cost)", group=PROTOCOL,
                              choices=STUDY_PRESETS)
    batch_sizes: tuple[int, ...] = flag(tuple(2**i for i in range(5, 14)), "global batch sizes", group=PROTOCOL,
                                        parse=_ints)
    lr_points: int = flag(5, "LRs tried per batch size", group=PROTOCOL)
    lr_spacing: float = flag(2**0.5, "ratio between neighbouring LRs of the grid (default: sqrt(2) = 1.41421)",
                             group=PROTOCOL)
    lr_per_128: float = flag(0.1, "the smallest batch's grid is centred on this LR x B / 128; each larger one on its "
                             "neighbour's best LR x sqrt(batch ratio)", group=PROTOCOL)
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
    warmup_images: int = flag(24_576, "LR warmup from 0 over the first N training images, at every batch size "
                              "(N / B steps, so N must be a multiple of every batch size, or 0): the same images for "
                              "every B, not a share of a budget (default: 24576 = 3 x 8192)",
                              group=PROTOCOL, metavar="N")
    schedule: str = flag("constant", "LR after warmup: constant, or linear decay to 0 at the budget's end (which "
                         "ties steps to target to the budget)", group=PROTOCOL, choices=tuple(SCHEDULES),
                         name="--lr-schedule", aliases=("--schedule",))
    micro_batch: int = flag(0, "every batch is accumulated from micro-batches this size, the same for every B (batch "
                            "norm's batch, and B_simple's small batch); at most the smallest batch size (default: 0, "
                            "the smallest batch size)", group=PROTOCOL)
    precision: float = flag(1.5, "the study stops once B_crit's 90% interval lies within x this of the estimate "
                            "(both ends), with two measured batch sizes past the knee on each side", group=PROTOCOL,
                            metavar="FACTOR")
    budget: str = flag("", "stop planning rounds once this is spent: wall time like 90m or 1h30m (at the committed "
                       "throughput, else the trials' measured one), or images like 5M (default: none; the first, "
                       "coarse round always runs whole)", group=PROTOCOL)
    rounds: int = flag(10, "the most rounds, the coarse first one included: 1 runs the fixed grid alone",
                       group=PROTOCOL)
    noise_probe: int = flag(64, "micro-batch gradients at each trial's end (its target, or budget) for B_simple, "
                            "no step between them; pooled over every batch size's best LR and seeds (0: none)",
                            group=PROTOCOL, metavar="N")
    eval_growth: float = flag(1.2, "evaluations near the target grow by this factor; the crossing is interpolated "
                              "between the last below and the first at the target", group=PROTOCOL)
    momentum_check: bool = flag(False, "after the curve, the two largest batch sizes again at momentum "
                                f"{0.97:g} (3 LRs around the best at the same effective LR, every seed): whether the "
                                "fixed momentum costs large batches more, which would bias B_crit low", group=PROTOCOL,
                                toggle=True)
    paper: bool = flag(True, "the paper's grid, as it ran, at a tuned LR, and a batch-norm control, with every seed "
                       "(default: on)", group=PAPER,
                       toggle=True)
    paper_epochs: int = flag(50, "epochs of each paper-grid run (the paper: 50, as the original runs it, with its step "
                             "schedule; another count keeps that schedule's shape and is labelled as not comparable "
                             "with its figures)", group=PAPER)
    paper_lr_points: int = flag(3, "LRs x2 apart tried per paper-grid batch, centred on stage 1's best LR for its "
                                "global batch; the best final held-out accuracy over the seeds is kept", group=PAPER)
    wait: bool = same_as(Execution, "wait", help="submit and return; rerun the same command to look again, wait "
                         "and write the report")
    dry_run: bool = flag(False, "print the smallest batch's trials (later grids depend on results), how many "
                         "trials may follow, and the most images they may train, then stop", group=EXECUTION)
    train_args: tuple[str, ...] = field(default_factory=tuple)
    nodes_per_run: int = 1  # a trial is one process: no --nodes-per-run
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
        if self.budget_epochs <= 0 or self.budget_steps < 1 or self.warmup_images < 0:
            raise ConfigError("--budget-epochs and --budget-steps must be positive, --warmup-images >= 0")
        if self.micro_batch < 0 or self.micro_batch > min(self.batch_sizes):
            # A larger micro-batch would be the whole batch below it: batch norm's batch would change along B.
            raise ConfigError(f"--micro-batch {self.micro_batch} is larger than the smallest batch size "
                              f"{min(self.batch_sizes)}; give --micro-batch {min(self.batch_sizes)} or less, or leave it out")
        if any(b % self.micro for b in self.batch_sizes):
            raise ConfigError(f"every batch size must be a multiple of the micro-batch {self.micro}; change "
                              "--batch-sizes or --micro-batch")
        if self.extend_edges < 0 or self.paper_epochs < 1 or self.width < 1 or self.paper_lr_points < 1:
            raise ConfigError(f"--extend-edges must be >= 0, --paper-epochs, --paper-lr-points and --width >= 1 (got "
                              f"{self.extend_edges}, {self.paper_epochs}, {self.paper_lr_points}, {self.width})")
        if self.noise_probe != 0 and self.noise_probe < 32:
            raise ConfigError(f"--noise-probe must be 0 (none) or at least 32 gradients, 2 for each of its 16 "
                              f"groups (got {self.noise_probe})")
        if not 1 < self.eval_growth <= 2:
            raise ConfigError(f"--eval-growth must be in (1, 2], like 1.05 (got {self.eval_growth})")
        uneven = [b for b in self.batch_sizes if self.warmup_images % b]
        if uneven:
            # Whole steps would stretch the ramp past N images at these B (ceil(N / B) x B), a 1/B term in S(B).
            step = math.lcm(*self.batch_sizes)
            near = max(step, round(self.warmup_images / step) * step)
            raise ConfigError(f"--warmup-images {self.warmup_images} is not a whole number of steps at B = "
                              f"{', '.join(map(str, uneven))}, so the ramp would cover more images there; give a "
                              f"multiple of {step} (like {near}) or 0")
        if not self.precision > 1:
            raise ConfigError(f"--precision must be a factor above 1, like 1.5: the interval within x1.5 of the "
                              f"estimate (got {self.precision})")
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be 1 or more, 1 being the fixed grid alone (got {self.rounds})")
        parse_budget(self.budget)
        check_seeds(self.seeds)
        self.check("study")
        if self.train_subset < 0:
            raise ConfigError(f"--train-subset must be an integer >= 0, 0 meaning all (got {self.train_subset})")
        refuse_overrides("study", self.train_args, STUDY_SETS)
        return self

    @property
    def micro(self) -> int:
        """The micro-batch every trial accumulates its batch from."""
        return self.micro_batch or min(self.batch_sizes)

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


UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
COUNTS = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}


def parse_budget(text: str) -> tuple[str, float] | None:
    """--budget: ("seconds", s) from 90m, 1h30m, 45s or 2h; ("images", n) from 5M, 500k or 200000; None when
    empty. Minutes are a small m, millions of images a capital M."""
    text = text.strip()
    if not text:
        return None
    if re.fullmatch(r"(\d+(\.\d+)?[hms])+", text):
        total = sum(float(n) * UNITS[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)([hms])", text))
        if total > 0:
            return "seconds", total
    else:
        found = re.fullmatch(r"(\d+(\.\d+)?)([kMG]?)( images)?", text)
        if found and float(found[1]) > 0:
            return "images", float(found[1]) * COUNTS[found[3]]
    raise ConfigError(f"--budget must be a positive wall time like 90m or 1h30m, or images like 5M (got {text!r})")


STUDY_PRESET_VALUES: dict[str, dict[str, Any]] = {
    # What the issue asks of the real thing: ResNet-18 at full width to 94% held-out accuracy. A constant LR, so
    # that steps to target do not depend on a decay tied to each B's budget; the budget is then only a cap, in
    # epochs for every B (so large batches get as many images as small ones) and in steps (so small batches are
    # not held to 200 epochs). Unmeasured: whether a constant LR reaches 94% at every B inside it (a trial that
    # does not is in the report as missed); lower --target if they miss. Warmup: 24,576 images at every B, about
    # half an epoch, small against the tens of epochs 94% usually takes.
    "full": {"width": 64, "target": 0.94, "batch_sizes": tuple(2**i for i in range(5, 14)), "holdout": 5000,
             "budget_epochs": 200.0, "budget_steps": 100_000, "schedule": "constant", "warmup_images": 24_576,
             "lr_points": 5, "seeds": (1, 2, 3), "paper_epochs": 50},
    # Full width, sized for about 10 minutes on one H100/H200 with 4 trainings sharing it: 7 batch sizes x 3 LRs x
    # 2 seeds = 42 trials, up to 56 with one edge extension each. The target, 80% held out: the fast recipe's test
    # accuracy passes it at epoch 7 of 15 at batch 512, its LR still near the peak (benchmarks/results/gpu-h100-
    # 20261127/fast-metrics.jsonl), so a trial near its best LR trains some 300,000 images; a 10-epoch budget
    # (450,000) caps the misses. Not measured: a step at micro-batch 64 is launch-bound, guessed at 10,000 img/s
    # per training from the host-bound 6-7 ms steps at batch 128 there (bench-b128-call*.json, eval-mode batch
    # norm); then 42 trials at 300,000 images over 4 slots take about 5 minutes, 56 to budget about 10. No paper
    # grid (--paper adds it): its per-worker batch 8 is the slowest step of all on a GPU, and its cost is its own.
    # No warmup, as for "cpu" below.
    "gpu": {"width": 64, "target": 0.80, "batch_sizes": tuple(2**i for i in range(6, 13)), "holdout": 5000,
            "budget_epochs": 10.0, "budget_steps": 20_000, "schedule": "constant", "warmup_images": 0,
            "lr_points": 3, "extend_edges": 1, "seeds": (1, 2), "paper": False, "slots": 4},
    # Scaled for an hour on 2 CPU cores (benchmarks/results/cpu-study): width 8, a low target a constant LR
    # reaches, a smaller holdout. Micro-batches of 32 (batch norm's batch at every B), 25% faster per image on
    # one CPU thread than 16 and the smallest batch itself; B 32-1024 brackets the earlier study's knee. 2 seeds,
    # since each batch's optimum is a parabola fitted to its LR response (protocol.optimum), not the luckiest
    # trial. No warmup: at a constant LR the grid finds LRs that train from the first step (a diverged trial is
    # a result, and the grid extends below it), and any warmup adds a 1/B term to S(B), the shape being
    # measured. No paper grid: one epoch at width 8 tests nothing the paper's 90 epochs at width 64 claim.
    # A first look, in a few minutes on 2 CPU cores, that ends with a fitted B_crit and its interval: 4 batch
    # sizes (a fit needs 3) at one LR each, scaled along B as the protocol centres its grids, one seed, to a target
    # width 8 passes within about an epoch of 2,000 images (real CIFAR-10: 62 steps at B = 32, 18 at 256); a budget
    # of 8 epochs leaves room. Evaluations 25% apart: the steps are rough anyway. Not a measurement: no LR is tuned
    # and no seed scatter measured (SMOKE says so at the start). One slot: the batch sizes run one after another.
    # One round: the coarse grid alone (later rounds would add seeds and batch sizes until x1.5: a measurement).
    "smoke": {"width": 8, "target": 0.25, "batch_sizes": (32, 64, 128, 256), "holdout": 500, "train_subset": 2000,
              "budget_epochs": 8.0, "budget_steps": 2000, "schedule": "constant", "warmup_images": 0,
              "lr_points": 1, "extend_edges": 0, "seeds": (1,), "paper": False, "eval_growth": 1.25, "slots": 1,
              "rounds": 1},
    "cpu": {"width": 8, "target": 0.45, "batch_sizes": (32, 64, 128, 256, 512, 1024), "holdout": 2000,
            "budget_epochs": 4.0, "budget_steps": 6000, "schedule": "constant", "warmup_images": 0, "lr_points": 3,
            "extend_edges": 3, "seeds": (1, 2), "paper": False, "paper_epochs": 1, "slots": 2},
}


SMOKE = ("a smoke study: one untuned LR per batch size, one seed, 25% held-out accuracy on 2,000 training images; "
         "its B_crit shows the study working, not the critical batch. --preset cpu tunes 3 to 6 LRs per batch with 2 "
         "seeds to 45% on 48,000 images (about an hour on 2 CPU cores); --preset full 5 to 7 LRs, 3 seeds, 94% on "
         "45,000 (a GPU's work)")


def study_preset(name: str, config: StudyConfig, given: set[str] = frozenset()) -> StudyConfig:  # type: ignore[assignment]
    chosen = {k: v for k, v in STUDY_PRESET_VALUES[name].items() if k not in given}
    return StudyConfig(**{**asdict(config), **chosen, "preset": name})


# The training flags every trial gets from the study, and the study flag that sets them instead.
STUDY_SETS = {
    "train_dir": "--train-dir", "val_dir": "--train-dir", "width": "--width", "holdout": "--holdout",
    "target_accuracy": "--target", "batch_size": "--batch-sizes", "batches_per_allreduce": "--micro-batch",
    "lr_scaling": "--lr-per-128", "base_lr": "--lr-per-128, --lr-points, --lr-spacing",
    "warmup_start_lr": "--warmup-images", "warmup_steps": "--warmup-images", "warmup_epochs": "--warmup-images",
    "lr_schedule": "--lr-schedule", "lr_decay_epochs": "--paper-epochs", "epochs": "--budget-epochs or --paper-epochs",
    "max_steps": "--budget-steps", "eval_growth": "--eval-growth", "seed": "--seeds", "log_dir": "--out",
    "noise_probe": "--noise-probe",
    "simulate_workers": "--no-paper (the paper grid has 4 workers)", "train_subset": "--train-subset",
}


def trial_steps(config: StudyConfig, batch: int) -> int:
    return max(1, min(config.budget_steps, math.ceil(config.budget_epochs * config.train_images / batch)))


def common_args(config: StudyConfig) -> list[str]:
    folder = str(Path(config.data).absolute())  # a trial may run elsewhere (SLURM): name the data absolutely
    return ["--train-dir", folder, "--val-dir", folder, "--no-download", "--width", str(config.width), "--holdout", str(config.holdout), "--target-accuracy", str(config.target),
            "--val-batch-size", "500", "--keep-checkpoints", "1", "--no-progress",
            "--noise-every", "1",  # a trial is short: B_simple from every step, not one in ten
            # An average that never forgets: B_simple at the target is then its average over the whole stretch
            # before it, the comparison McCandlish et al. make with B_crit, not a value weighted to one moment.
            "--noise-window", "1e12",
            # B_simple for the comparison: one fixed-weights probe at each trial's end, the same for every B
            "--noise-probe", str(config.noise_probe),
            "--train-subset", str(config.train_subset), *config.train_args]


def curve_trial(config: StudyConfig, batch: int, lr: float, seed: int, steps: int | None = None) -> Planned:
    """One trial; `steps` its step budget (default: --budget-steps or --budget-epochs, whichever comes first; a
    later round sets it from the fit)."""
    micro = config.micro  # one batch-norm batch for every B: B is accumulated from micro-batches of it
    steps = steps or trial_steps(config, batch)
    epochs = math.ceil(steps / (config.train_images // batch))
    warmup = config.warmup_images // batch  # exact: validate() refuses a warmup that is not whole steps
    args = [*common_args(config), "--batch-size", str(micro), "--batches-per-allreduce", str(batch // micro),
            "--lr-scaling", "none", "--base-lr", f"{lr:.6g}", "--warmup-start-lr", "0", "--warmup-steps",
            str(warmup), "--warmup-epochs", "0",  # --warmup-steps 0 would mean "use epochs"
            "--lr-schedule", SCHEDULES[config.schedule], "--epochs",
            str(epochs), "--max-steps", str(steps), "--stop-at-target", "--eval-growth", str(config.eval_growth),
            "--seed", str(seed)]
    return Planned(f"curve/b{batch}-lr{lr:.4g}-s{seed}", tuple(args), steps * batch, steps)


def batch_trials(config: StudyConfig, batch: int, lrs: list[float] | tuple[float, ...]) -> list[Planned]:
    """Every (LR, seed) trial of one batch size."""
    return [curve_trial(config, batch, lr, seed) for lr in lrs for seed in config.seeds]


def first_grid(config: StudyConfig) -> tuple[float, ...]:
    """The smallest batch's LRs, around the linear-scaling guess; every later grid depends on results."""
    batch = min(config.batch_sizes)
    return lr_grid(config.lr_per_128 * batch / 128, config.lr_points, config.lr_spacing)


def curve_stage(config: StudyConfig, say: Callable[..., None]) -> list[str] | None:
    """The curve in rounds. The first, coarse round as `protocol.plan_curve` plans it (and testing/nqm.py's
    run_study on a known answer): batch sizes in ascending order, each a stage of its grid centred on the
    previous batch's best (the first on the linear-scaling guess), extended one LR at a time while its best is
    on the edge, up to --extend-edges. Then, up to --rounds, the rounds `sequential.plan_round` plans from the
    finished trials until B_crit is known within x--precision or --budget is spent. Each round's plan is written
    to rounds.jsonl before its trials run and read back on a rerun, and every plan is made from the trials'
    records on disk, so a rerun of a finished study plans the same trials and trains none of them. Returns
    the failed runs' names, or None where --no-wait left a round's trials to run (a rerun continues)."""
    out = Path(config.out)
    log = read_rounds(out)
    if not log:
        write_rounds(out, [{"round": 1, "plan": "coarse: protocol.plan_curve", "batches": sorted(config.batch_sizes)}])
        log = read_rounds(out)

    def results(batch: int, lrs: tuple[float, ...]) -> Cells:
        trials = [t for p in batch_trials(config, batch, lrs) if (t := read_trial(out / p.name)) is not None]
        return cells_of(trials).get(batch, {})

    first = config.lr_per_128 * min(config.batch_sizes) / 128
    for batch, lrs in plan_curve(config.batch_sizes, first, config.lr_points, config.lr_spacing, config.extend_edges,
                                 results):
        if len(lrs) > config.lr_points:
            say(f"curve: the best LR of B = {batch} is at the edge of its grid; trying {lrs[-1]:.4g} beyond it")
        planned = batch_trials(config, batch, lrs)
        if not config.wait:  # submit this batch's unfinished trials, or plan on from its finished ones
            if not all(finished(out / p.name) for p in planned):
                run_stage(config, planned, f"curve B={batch}", say)
                return None
            continue
        failed = run_stage(config, planned, f"curve B={batch}", say)
        if failed:
            say(f"curve: {len(failed)} trial(s) of B = {batch} failed; larger batches' grids are centred on its "
                "best, so the curve stops here: fix them and rerun the same command")
            return failed
    for number in range(2, 10_000):
        logged = next((r for r in log if r["round"] == number), None)
        if logged is None:
            trials = read_trials(out, strict=False)
            plan = plan_round(trials, sequential_settings(config, trials), number)
            if plan.stop:
                say(f"curve: {answer_line(plan, config, trials)}")
                return []
            logged = plan.record()
            log.append(logged)
            write_rounds(out, log)  # before its trials run: a rerun runs this round, not a new plan
        planned = [curve_trial(config, a["batch"], a["lr"], a["seed"], a["steps"]) for a in logged["trials"]]
        if not all(finished(out / p.name) for p in planned):
            reasons = sorted({a["reason"] for a in logged["trials"]})
            say(f"round {number}: {len(planned)} trial(s), B_crit so far {num_or(logged.get('estimate'))}: "
                + "; ".join(reasons))
        failed = run_stage(config, planned, f"round {number}", say)
        if not config.wait and not all(finished(out / p.name) for p in planned):
            return None
        if failed:
            say(f"round {number}: {len(failed)} trial(s) failed; the next round is planned from every trial, so "
                "the study stops here: fix them and rerun the same command")
            return failed
    return []


CHECK_MOMENTUM = 0.97  # Shallue et al. tune momentum with the LR; this is one step above the fixed 0.9


def momentum_trials(config: StudyConfig, trials: list[Trial]) -> list[Planned]:
    """The check of the fixed momentum: the two largest batch sizes whose best LR reached the target, again at
    CHECK_MOMENTUM, over 3 LRs centred where the effective LR (LR / (1 - momentum)) is the best one's, each seed,
    with the curve trials' budget. Faster there means the curve's fixed momentum held those batches back."""
    bests = [b for b in analyze(trials, replicates=0).bests if b.trial is not None][-2:]
    planned = []
    for best in bests:
        ran = best.trial.extra.get("momentum") or 0.9  # type: ignore[union-attr]
        centre = best.trial.lr * (1 - CHECK_MOMENTUM) / (1 - ran)  # type: ignore[union-attr]
        for lr in lr_grid(centre, 3, config.lr_spacing):
            for seed in config.seeds:
                trial = curve_trial(config, best.batch, lr, seed)
                planned.append(Planned(f"momentum/b{best.batch}-lr{lr:.4g}-m{CHECK_MOMENTUM:g}-s{seed}",
                                       (*trial.args, "--momentum", str(CHECK_MOMENTUM)), trial.budget_images,
                                       trial.steps))
    return planned


def momentum_stage(config: StudyConfig, say: Callable[..., None]) -> list[str]:
    planned = momentum_trials(config, read_trials(Path(config.out), strict=False))
    if not planned:
        say("momentum check: no batch size reached the target, so there is nothing to check")
        return []
    return run_stage(config, planned, f"momentum {CHECK_MOMENTUM:g}", say)


def num_or(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


ROUNDS = "rounds.jsonl"
MAX_SEEDS_TEXT = "8 seeds at every batch's optimum"


def read_rounds(out: Path) -> list[dict[str, Any]]:
    """Each round's plan, as written before its trials ran (round 1: the coarse plan)."""
    path = out / ROUNDS
    if not path.is_file():
        return []
    import json

    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not JSON lines ({e}); move it out to plan the rounds again from the trials") from e


def write_rounds(out: Path, rounds: list[dict[str, Any]]) -> None:
    import json

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / ROUNDS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rounds))


def committed_rate(config: StudyConfig, device: str) -> float | None:
    """The committed throughput figure (images/s, the whole study's slots together) for this device, width and
    micro-batch, as `expected_time` picks it; None where there is none."""
    near = 2.0 if device == "cpu" else 1.0
    figures = {micro: figure for (d, width, micro), figure in THROUGHPUT.items()
               if d == device and width == config.width and max(micro / config.micro, config.micro / micro) <= near}
    if not figures:
        return None
    return figures[min(figures, key=lambda m: (abs(math.log(m / config.micro)), m))][0]


def seconds_per_image(config: StudyConfig, trials: list[Trial]) -> float | None:
    """The cost model's wall seconds per training image: the committed figure's rate, or else the finished
    trials' own training seconds per image over the slots (training only: evaluations add to it)."""
    rate = committed_rate(config, estimate_device(config))
    if rate:
        return 1 / rate
    timed = [(t.extra["train_seconds"], t.examples) for t in trials if t.extra.get("train_seconds") and t.examples]
    if not timed:
        return None
    return sum(s for s, _ in timed) / sum(n for _, n in timed) / max(1, config.slots)


def sequential_settings(config: StudyConfig, trials: list[Trial]) -> Settings:
    budget = parse_budget(config.budget)
    per_image = seconds_per_image(config, trials)
    if budget and budget[0] == "seconds" and per_image is None:
        raise ConfigError(f"--budget {config.budget}: no throughput is known for width {config.width} at micro-batch "
                          f"{config.micro} and no finished trial recorded its time; give --budget in images, like 5M")
    return Settings(seeds=tuple(config.seeds), lr_points=config.lr_points, lr_spacing=config.lr_spacing,
                    extend_edges=config.extend_edges, precision=config.precision, rounds=config.rounds,
                    budget_images=budget[1] if budget and budget[0] == "images" else None,
                    budget_seconds=budget[1] if budget and budget[0] == "seconds" else None,
                    seconds_per_image=per_image, smallest=config.micro, largest=config.train_images,
                    multiple=config.micro, warmup_images=config.warmup_images, budget_steps=config.budget_steps,
                    budget_epoch_images=config.budget_epochs * config.train_images)


def check_budget(config: StudyConfig) -> None:
    """--budget below what one trial may cost (the cheapest trial's whole step budget) is refused."""
    budget = parse_budget(config.budget)
    if budget is None:
        return
    batch = min(config.batch_sizes, key=lambda b: trial_steps(config, b) * b)
    images = trial_steps(config, batch) * batch
    if budget[0] == "images" and budget[1] < images:
        raise ConfigError(f"--budget {config.budget} is less than one trial may train ({images:,} images at B = "
                          f"{batch}); give more, or leave --budget out")
    per_image = seconds_per_image(config, [])
    if budget[0] == "seconds" and per_image is not None and budget[1] < images * per_image:
        raise ConfigError(f"--budget {config.budget} is less than one trial may take ({clock(images * per_image)} at "
                          f"B = {batch}); give more, or leave --budget out")


def answer_line(plan: Plan, config: StudyConfig, trials: list[Trial]) -> str:
    """Decided or not, in one line: the interval, and where undecided, what more would take."""
    if plan.fit is None or plan.interval is None:
        return f"not decided: no interval yet ({len(trials)} trials; {plan.why})"
    text = f"B_crit = {plan.fit.b_noise:,.0f}, 90% interval {plan.interval.text()}"
    if plan.decided:
        return f"decided: {text}, within x{config.precision:g}, after {len(trials)} trials"
    within = plan.interval.within(plan.fit.b_noise)
    ends = (f"x{plan.interval.low / plan.fit.b_noise:.2f} / x{plan.interval.high / plan.fit.b_noise:.2f}"
            if plan.interval.closed else "open")
    why = {"rounds": f"--rounds {config.rounds} reached", "budget": f"--budget {config.budget} spent",
           "nothing to add": "no allowed trial narrows it further"}.get(plan.why, plan.why)
    more = ""
    if plan.forecast is not None:
        n, images = plan.forecast
        per = seconds_per_image(config, trials)
        more = (f"; about {n} more trials (~{clock(images * per) if per else f'{images / 1e6:.1f}M images'}) would "
                f"reach x{config.precision:g}")
    else:
        more = f"; by the planner's estimate not even {MAX_SEEDS_TEXT} would reach x{config.precision:g}"
    del within
    return f"not decided ({why}): {text}, the interval is {ends}{more}"


def tuned_lrs(trials: list[Trial]) -> dict[int, float]:
    """Global batch -> the LR of its best trial: where the paper grid's tuned LRs are centred."""
    return {b.batch: b.trial.lr for b in analyze(trials, replicates=0).bests if b.trial is not None}


def train_command(args: tuple[str, ...], run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "batchscale.cli", "train", *args, "--log-dir", str(run_dir)]


def run_stage(config: StudyConfig, planned: list[Planned], label: str, say: Callable[..., None]) -> list[str]:
    """Runs what is not finished; returns the failed runs' names (a diverged trial is a result, not a failure).
    A run whose record is damaged is named and run again (it resumes from its last checkpoint)."""
    out = Path(config.out)
    check_runs(out, [p for p in planned if finished(out / p.name)])  # reused only where it is the run planned
    pending = [Job(p.name, train_command(p.args, out / p.name), out / p.name) for p in planned
               if not finished(out / p.name)]
    for job in pending:
        why = damaged(job.run_dir)
        if why is not None:
            say(f"{label}: {job.name}: {why}; running it again (it resumes from its last checkpoint)")
            clear_record(job.run_dir)
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
    record = trial_record(run_dir)
    if record is None:
        return None
    saved, diverged = record
    if diverged:
        status = DIVERGED
    else:
        status = REACHED if (saved.get("trial") or {}).get("reached") else MISSED
        if (saved.get("trial") or {}).get("ended") not in ("target", "budget"):
            return None  # a paper run (it ends at its epochs), not a trial
    trial, config = saved["trial"], saved["config"]
    hit = trial.get("reached") or {}
    evals = trial.get("evals") or []
    curve = tuple((e["examples"], e["b_simple"]) for e in evals if e.get("b_simple"))
    last = evals[-1] if evals else {}
    at = hit or last  # B_simple where the target was reached, or at the end
    probe = saved.get("noise_probe") or {}  # the fixed-weights probe at the trial's end (--noise-probe)
    sums = tuple(float(x) for x in probe["sums"]) if probe.get("sums") else None
    return Trial(config["batch_size"] * config["batches_per_allreduce"], float(config["base_lr"]), config["seed"],
                 status, (hit.get("crossing") or hit.get("step")) if hit else None, hit.get("previous_eval"),
                 trial.get("max_steps"),
                 trial.get("best_acc"), probe.get("b_simple") if probe else at.get("b_simple"), curve,
                 None if probe else at.get("b_simple_se"),
                 {"train_seconds": hit.get("train_seconds"), "folder": run_dir.name, "looked_at": hit.get("step"),
                  # what every trial optimizes with besides its LR, fixed at every B unless a check varies it
                  "momentum": config.get("momentum"), "nesterov": config.get("nesterov"), "wd": config.get("wd")},
                 sums)


def read_trials(out: Path, strict: bool = True, stage: str = "curve") -> list[Trial]:
    """Every finished trial of `stage` (curve, or momentum: the check's); one that is not finished is left for
    `unfinished_trials` to name. A damaged one is an error naming it, or with `strict` off (planning what to
    run, which runs it again) left out."""
    folders = sorted((out / stage).glob("b*-lr*-s*"))
    trials = [read_trial(run_dir) for run_dir in folders if strict or damaged(run_dir) is None]
    return [t for t in trials if t is not None]


def unfinished_trials(out: Path) -> list[str]:
    """Trial folders with no finished record: still running, stopped, failed, or damaged."""
    return [run_dir.name for run_dir in sorted((out / "curve").glob("b*-lr*-s*"))
            if not finished(run_dir)]


def read_study(out: Path) -> StudyConfig:
    saved = read_json(out / "study.json")
    known = {f.name for f in fields(StudyConfig)} - {"_images"}  # an older study's retired fields are left out
    return StudyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known})


# Training images per second the dry run's time estimate divides by: (device, width, micro-batch) -> (rate, where,
# the committed figure it comes from). Only these; another width gets no estimate rather than an invented one.
THROUGHPUT: dict[tuple[str, int, int], tuple[float, str, str]] = {
    # `batchscale bench` (synthetic data, fp32, eager), "ours": images_per_sec.
    ("cpu", 64, 64): (75.0, "2 CPU cores", "benchmarks/results/cpu-bench-b64.json"),
    ("cpu", 16, 128): (650.0, "2 CPU cores", "benchmarks/results/cpu-bench-b128-w16.json"),
    # A whole --preset cpu study end to end (2 slots, a process per trial, evaluations included): 1.70M curve
    # images in 4,913 s, on 2 cores other sessions' tests shared.
    ("cpu", 8, 32): (345.0, "2 CPU cores", "benchmarks/results/cpu-study/README.md"),
    # The fast recipe's training loop, bf16, compiled, train mode: steady_images_per_sec.
    ("cuda", 64, 512): (37000.0, "one H100", "benchmarks/results/gpu-h100-20261127/fast-summary.json"),
}


# The share of their budgets' images a study's trials trained before they stopped at the target: 1.70M of 9.22M
# in the committed CPU study. Another model or target stops at another share; it is the one measured.
EARLY_STOP = (0.184, "benchmarks/results/cpu-study")


def estimate_device(config: StudyConfig) -> str:
    """Where the trials would train: a GPU if this machine has one and the trials may use it."""
    import torch

    return "cpu" if "--no-cuda" in config.train_args or not torch.cuda.is_available() else "cuda"


def duration(seconds: float) -> str:
    """A span of time in the unit a person reads it in: seconds, minutes, hours or days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:,.0f} days"


def between(low: float, high: float) -> str:
    """"about 3 to 4 days", "12.9 to 17.2 hours", or one figure where both read the same."""
    a, b = duration(low), duration(high)
    if a == b:
        return a
    (number, unit), (_, other) = a.rsplit(" ", 1), b.rsplit(" ", 1)
    return f"{number} to {b}" if unit == other else f"{a} to {b}"


def images(count: float) -> str:
    return f"{count / 1e6:,.1f}M" if count >= 1e6 else f"{count:,.0f}"


def expected_time(config: StudyConfig, images: tuple[float, float], device: str) -> str:
    """An estimate, never a bound: the planned images at the committed rate for this device, width and
    micro-batch, or why there is none. What the rate leaves out (a busier machine, evaluations and start-up where
    it times training alone, another number of slots) can only make the study slower, so it says so. On a CPU the
    step is compute-bound, so a figure within a factor 2 of the micro-batch serves (named); on a GPU small steps
    are launch-bound and images/s rises steeply with the micro-batch (gpu-h100-20261127/README.md), so only the
    same micro-batch does."""
    near = 2.0 if device == "cpu" else 1.0
    figures = {micro: figure for (d, width, micro), figure in THROUGHPUT.items()
               if d == device and width == config.width and max(micro / config.micro, config.micro / micro) <= near}
    if not figures:
        known = ", ".join(f"{d} width {w} micro-batch {m}" for d, w, m in THROUGHPUT)
        return (f"expected time: no committed throughput figure for width {config.width} at micro-batch "
                f"{config.micro} on {device} (there are: {known}); time one (batchscale bench --width "
                f"{config.width} --batch-size {config.micro}) to estimate")
    micro = min(figures, key=lambda m: (abs(math.log(m / config.micro)), m))
    rate, where, source = figures[micro]
    cores = os.cpu_count() or 1
    where += f" (this machine has {cores})" if device == "cpu" and f"{cores} CPU cores" != where else ""
    measured = f"; measured at micro-batch {micro}, this study's is {config.micro}" if micro != config.micro else ""
    whole = source in END_TO_END
    share, study = EARLY_STOP
    low, high = images
    span, stopped = between(low / rate, high / rate), between(share * low / rate, share * high / rate)
    return (f"estimated time on {where}, free of other work: about {span} if every trial trains its whole budget, "
            f"about {stopped} if trials stop as early as in {study} ({100 * share:.0f}% of their budgets' images); "
            f"at {rate:,.0f} img/s, from {source}{measured}"
            + ("" if whole else ", training steps alone: evaluations and start-up come on top")
            + "; an estimate, not a bound: a busier machine takes longer")


# The throughput figures that time a whole study, evaluations and each trial's start-up included.
END_TO_END = ("benchmarks/results/cpu-study/README.md",)


def for_a_gpu(config: StudyConfig, most: float, device: str) -> str | None:
    """Where a preset sized for a GPU would train on this machine's CPU: one line saying so, with the GPU-hours it
    takes on the one GPU figure there is (the fast recipe's loop at micro-batch 512, faster per image than this
    preset's micro-batch: a floor); None elsewhere."""
    if config.preset not in ("gpu", "full") or device != "cpu":
        return None
    (_, width, micro), (rate, where, source) = next((k, v) for k, v in THROUGHPUT.items() if k[0] == "cuda")
    gpu = f"{most / rate / 3600:,.1f} GPU-hours" if most / rate >= 3600 else f"{most / rate / 60:.0f} GPU-minutes"
    return (f"--preset {config.preset} is meant for a GPU, and this machine has none: its trials would train on the "
            f"CPU; on {where} about {gpu} if every trial trains its whole budget, at {rate:,.0f} img/s (width {width}, "
            f"micro-batch {micro}, from {source}), and more at this preset's micro-batch {config.micro}, slower per "
            "image. --preset cpu is sized for 2 CPU cores, --preset smoke for a first look in minutes")


def plan_counts(config: StudyConfig) -> tuple[int, int, float, float, float]:
    """(fewest trials, most trials, curve images without any extension, curve images at most, paper images)."""
    batches, seeds = sorted(config.batch_sizes), len(config.seeds)
    fewest, most = len(batches) * config.lr_points * seeds, len(batches) * (config.lr_points + config.extend_edges) * seeds
    least = sum(config.lr_points * seeds * trial_steps(config, b) * b for b in batches)
    budget = sum((config.lr_points + config.extend_edges) * seeds * trial_steps(config, b) * b for b in batches)
    paper = paper_budget(paper_plan(config)) * config.paper_epochs * config.train_images if config.paper else 0
    return fewest, most, least, budget, paper


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def dry_run(config: StudyConfig, say: Callable[..., None], device: str | None = None) -> None:
    """What may run: only the smallest batch's LRs are known before it has run, since every later grid is
    centred on its neighbour's best; the counts span no extension to every batch extended --extend-edges."""
    batches = sorted(config.batch_sizes)
    seeds = len(config.seeds)
    fewest, most, least, budget, paper = plan_counts(config)
    device = device or estimate_device(config)
    time = expected_time(config, (least + paper, budget + paper), device)
    trials = plural(fewest, "trial") if fewest == most else f"{fewest} to {most} trials"
    lrs = plural(config.lr_points, "LR") + (f" (up to {config.lr_points + config.extend_edges} where the best is on "
                                            "the grid's edge)" if config.extend_edges else "")
    grid = (f"{paper_budget(paper_plan(config))} runs x {plural(config.paper_epochs, 'epoch')}, at most "
            f"{images(paper)} images" if config.paper else "off")
    say(f"{trials}: {plural(len(batches), 'batch size')} x {lrs} x {plural(seeds, 'seed')}, at most "
        f"{images(budget)} training images ({budget / config.train_images:,.0f} epochs of {config.train_images:,}); "
        f"paper grid: {grid}\n{time}")
    gpu = for_a_gpu(config, budget + paper, device)
    if gpu:
        say(gpu)
    say(f"every batch's LR grid after B = {batches[0]} is centred on its neighbour's best LR x sqrt(batch ratio), "
        f"so only B = {batches[0]}'s LRs are known now:" if len(batches) > 1 else f"B = {batches[0]}'s trials:")
    for p in batch_trials(config, batches[0], first_grid(config)):
        say(f"  {p.name}: at most {p.steps} steps")
    for b in batches[1:]:
        say(f"  curve/b{b}: {lrs} x {plural(seeds, 'seed')}, at most {trial_steps(config, b)} steps each")
    if config.rounds > 1:
        say(f"that is round 1 of at most {config.rounds}; each later one is planned from the trials before it "
            f"(rounds.jsonl), until B_crit's 90% interval is within x{config.precision:g}"
            + (f" or --budget {config.budget} is spent" if config.budget else ""))
    if config.momentum_check:
        say(f"then the momentum check: the two largest batch sizes that reach the target again at momentum "
            f"{CHECK_MOMENTUM:g}, 3 LRs x {plural(seeds, 'seed')} ({6 * seeds} trials, not counted above)")


def study(config: StudyConfig, say: Callable[..., None] = print) -> list[str]:
    """Runs both stages (what is left of them); returns the runs that failed (the report comes after)."""
    config.validate()
    out = Path(config.out)
    check_writable(out, "--out")  # a file in the way, a path too long, a symlink to nothing, no write permission
    check_budget(config)
    if config.dry_run:
        check_reuse(config)
        if config.preset == "smoke":
            say(SMOKE)
        dry_run(config, say)
        return []
    out.mkdir(parents=True, exist_ok=True)
    with holding(out):
        check_reuse(config)
        if config.preset == "smoke":
            say(SMOKE)
        gpu = for_a_gpu(config, sum(plan_counts(config)[3:]), estimate_device(config)) if config.preset in (
            "gpu", "full") else None
        if gpu:  # before hours of trainings start on a CPU, not after
            say(f"{gpu}; the dry run (--dry-run) says how long here")
        write_json_atomic(out / "study.json", study_record(config))
        failed = curve_stage(config, say)
        if failed is None:  # --no-wait: submitted, and a rerun continues
            return []
        if failed:
            return failed
        if config.momentum_check:
            failed = momentum_stage(config, say)
            if failed:
                return failed
        return run_paper(config, say) if config.paper else []


@contextlib.contextmanager
def holding(out: Path) -> Iterator[None]:
    """One study at a time in a folder, locked as a run folder is (flock: the kernel drops it however the study
    ends): a second one would resume the first one's trials, and each would count the other's as failed."""
    try:
        lock = RunLock([out], "--out").acquire()
    except ConfigError:
        holder = "another process"
        with contextlib.suppress(OSError):
            holder = (out / LOCK_NAME).read_text().strip() or holder
        raise ConfigError(f"another study ({holder}) is running in {out}; wait for it to end or stop it, or choose "
                          "another --out") from None
    try:
        yield
    finally:
        lock.release()


def study_record(config: StudyConfig) -> dict[str, Any]:
    """study.json: the study's flags as given (what `read_study` reads back)."""
    return {k: v for k, v in asdict(config).items() if k != "_images"}


def check_reuse(config: StudyConfig) -> None:
    """Before anything runs (a dry run too): the study flags that define a trial's result must be those the folder's
    trials ran with (study.json), and every finished curve trial must be the trial this command would plan at its
    batch, LR and seed (its recorded config), and every finished paper run the run planned in its folder. Else one
    line naming the flag; nothing is relabelled."""
    out = Path(config.out)
    check_study(out, study_record(config))
    planned = []
    for run_dir in sorted((out / "curve").glob("b*-lr*-s*")):
        trial = read_trial(run_dir) if finished(run_dir) else None
        if trial is not None:
            # A later round's trial ran to a step budget from the fit (rounds.jsonl): its own, which the study flags
            # that set it (checked above) bound.
            p = curve_trial(config, trial.batch, trial.lr, trial.seed, trial.budget)
            planned += [p] if p.name == f"curve/{run_dir.name}" else []
    if config.paper and (out / "paper").is_dir():  # the paper runs planned from the curve as it stands
        centres = tuned_lrs(read_trials(out, strict=False))
        planned += [p for p in paper_runs(paper_plan(config), centres) if finished(out / p.name)]
    check_runs(out, planned)


def paper_plan(config: StudyConfig) -> PaperPlan:
    return PaperPlan(config.paper_epochs, config.seeds, config.paper_lr_points, config.train_images, config.width,
                     config.train_subset, tuple(common_args(config)))


def run_paper(config: StudyConfig, say: Callable[..., None]) -> list[str]:
    centres = tuned_lrs(read_trials(Path(config.out), strict=False))
    return paper_stage(paper_plan(config), centres, lambda planned, label: run_stage(config, planned, label, say), say)
