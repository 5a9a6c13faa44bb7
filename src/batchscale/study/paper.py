"""Stage 2 of `batchscale study`: the paper's batch-size result (Kim et al. 2023), put to the test.

The paper trains 4 workers x per-worker batch 8...256 with the original code's defaults (its README: 50 epochs;
the Horovod example's schedule: 5 warmup epochs from one worker's LR, then x0.1 at epochs 30, 60 and 80, so one
decay within 50) at LR 0.1 x workers and reads final and mean test accuracy: accuracy falls at both ends. Besides the batch size itself, three things can make such a drop,
and each has its own runs here:
- the LR: one LR for every batch. The same grid also runs at LRs spaced x2 around stage 1's best LR for the
  same global batch (the paper's LR where stage 1 has none), and the best of them and the paper's own LR for
  the paper's objective is kept: final accuracy at the same epoch budget, on the held-out split, averaged over
  seeds (where the paper's other measure, the mean over the epochs, would pick another LR, the table says so).
  The held-out split picks; the test set only reports, so its figures are not tuned to it;
- chance: every run with each of the study's seeds, reported as mean and spread;
- batch norm over 8 images at per-worker batch 8: a control with the same global batch, LR and schedule on one
  worker, so that batch norm sees all 32 images. The gap between the two is what batch norm's batch costs.

Figures at another width or epoch count than the paper's 64 and 50 are labelled as not comparable with its
published column: they show the shape at the scale that ran, not the paper's numbers. Every gap between two
settings (a batch against the best one, the control against its arm) is a paired difference over the seeds, which
both arms share (weights at the start, data order), with a t interval for the seeds' few degrees of freedom.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .planned import Planned
from .runs import has_diverged, read_run

BATCHES = (8, 16, 32, 64, 128, 256)  # per worker, on 4 workers (Kim et al. 2023)
WORKERS = 4
PUBLISHED = {8: 23.9, 16: 81.0, 32: 86.0, 64: 87.8, 128: 88.2, 256: 80.5}  # their val accuracy, %
WIDTH, EPOCHS = 64, 50  # the paper's network width and epochs (the original's default, as its README runs it)
WARMUP_EPOCHS, DECAY_EPOCHS = 5, (30, 60, 80)  # the original's schedule (Horovod's ImageNet example), in epochs
PAPER_LR = 0.1  # per worker, scaled by the number of workers
GRID_SPACING = 2.0  # the tuned grid: coarse, since each point costs a whole epoch budget per seed
CONTROL = 8  # the per-worker batch whose batch norm sees only 8 images


@dataclass(frozen=True)
class PaperPlan:
    """What stage 2 takes from the study's configuration."""

    epochs: int
    seeds: tuple[int, ...]
    lr_points: int
    train_images: int
    width: int
    train_subset: int
    common: tuple[str, ...]  # the flags every run of the study gets (data, width, holdout, ...)

    @property
    def comparable(self) -> bool:
        """Whether the published column measures the same thing: the paper's width, epochs and data."""
        return self.width == WIDTH and self.epochs == EPOCHS and not self.train_subset

    def fits(self, per_worker: int) -> bool:
        return per_worker * WORKERS <= self.train_images


def grid(centre: float, points: int) -> tuple[float, ...]:
    """`points` LRs x2 apart around `centre` (the middle one, or the lower middle of an even count)."""
    return tuple(centre * GRID_SPACING ** (i - (points - 1) // 2) for i in range(points))


def schedule(epochs: int) -> list[str]:
    """The original's LR schedule for a run of `epochs`: at 50 epochs or more its own (warmup 5, x0.1 at the decay
    epochs the run reaches); a shorter run keeps its shape as shares of the run (warmup the first 10%, a decay at
    60%, where a whole epoch falls there), so that the same rule is the paper grid's everywhere."""
    if epochs >= EPOCHS:
        warmup, decays = float(WARMUP_EPOCHS), [e for e in DECAY_EPOCHS if e < epochs]
    else:
        warmup = WARMUP_EPOCHS * epochs / EPOCHS
        decays = sorted({round(e * epochs / EPOCHS) for e in DECAY_EPOCHS} & set(range(1, epochs)))
    if not decays:  # a run too short for a whole decay epoch: warmup, then the peak
        return ["--lr-schedule", "constant", "--warmup-epochs", f"{warmup:.4g}"]
    return ["--lr-schedule", "step", "--lr-decay-epochs", ",".join(map(str, decays)), "--warmup-epochs",
            f"{warmup:.4g}"]


def describe_schedule(epochs: int) -> str:
    """`schedule` in words, for reports."""
    flags = dict(zip(schedule(epochs)[::2], schedule(epochs)[1::2]))
    decay = (f", x0.1 at epoch{'s' if ',' in flags['--lr-decay-epochs'] else ''} {flags['--lr-decay-epochs']}"
             if "--lr-decay-epochs" in flags else ", no decay (too short for one)")
    return f"{flags['--warmup-epochs']} warmup epochs from one worker's LR{decay}"


def folder(per_worker: int, lr: float, seed: int) -> str:
    """A tuned-grid run's folder; the grid point at the paper's own LR is the paper-LR run (the same run)."""
    if math.isclose(lr, PAPER_LR * WORKERS):
        return f"paper/b{per_worker}-paper-lr-s{seed}"
    return f"paper/b{per_worker}-lr{lr:.4g}-s{seed}"


def peak_flags(peak: float) -> list[str]:
    # Warmed up from one worker's share of the peak, as the paper's ramp starts at one worker's LR.
    return ["--lr-scaling", "none", "--base-lr", f"{peak:.6g}", "--warmup-start-lr", f"{peak / WORKERS:.6g}"]


def runs(plan: PaperPlan, centres: dict[int, float]) -> list[Planned]:
    """Every run of stage 2: the paper's LR, the tuned grid around `centres` (global batch -> stage 1's best LR;
    the paper's LR where absent) and the batch-norm control, each with every seed."""
    planned = []
    for b in BATCHES:
        if not plan.fits(b):
            continue  # a smaller data set than CIFAR-10's (paper_stage says so)
        for seed in plan.seeds:
            layout = [*plan.common, *schedule(plan.epochs), "--epochs", str(plan.epochs), "--seed", str(seed)]
            workers = [*layout, "--batch-size", str(b), "--simulate-workers", str(WORKERS)]
            images = plan.epochs * plan.train_images
            planned.append(Planned(f"paper/b{b}-paper-lr-s{seed}", (*workers, "--lr-scaling", "linear", "--base-lr",
                                                                     str(PAPER_LR)), images))
            for lr in grid(centres.get(b * WORKERS, PAPER_LR * WORKERS), plan.lr_points):
                if not math.isclose(lr, PAPER_LR * WORKERS):
                    planned.append(Planned(folder(b, lr, seed), (*workers, *peak_flags(lr)), images))
            if b == CONTROL:  # one worker: the same arithmetic, batch norm over all b x WORKERS images
                planned.append(Planned(f"paper/b{b}-control-s{seed}", (*layout, "--batch-size", str(b * WORKERS),
                                                                        *peak_flags(PAPER_LR * WORKERS)), images))
    return planned


def paper_stage(plan: PaperPlan, centres: dict[int, float], run: Callable[[list[Planned], str], list[str]],
                say: Callable[..., None]) -> list[str]:
    """Runs stage 2 (what is left of it) through `run`; returns the failed runs' names."""
    missing = [b * WORKERS for b in BATCHES if b * WORKERS not in centres and plan.fits(b)]
    if missing:
        say(f"paper grid: stage 1 has no best LR for global batch {', '.join(map(str, missing))} (not in --batch-sizes,"
            f" or no trial reached the target); their tuned grid is centred on the paper's LR {PAPER_LR * WORKERS:g}")
    too_big = [b for b in BATCHES if not plan.fits(b)]
    if too_big:
        say(f"paper grid: per-worker batch {', '.join(map(str, too_big))} x {WORKERS} workers is more than the "
            f"{plan.train_images} training images; left out")
    return run(runs(plan, centres), "paper")


# -- the results --------------------------------------------------------------------------------------------


def run_accuracies(folder: Path) -> dict[str, Any] | None:
    """One finished run's accuracies (diverged: marked so), or None if it has not finished."""
    if has_diverged(folder):
        return {"diverged": True}
    run = read_run(folder, ("final_val_acc",))
    if run is None:
        return None
    return {"final_test_acc": run.summary["final_val_acc"],
            "mean_test_acc": statistics.fmean(r["val_acc"] for r in run.records),  # the paper's "mean": over epochs
            "final_holdout_acc": run.records[-1].get("holdout_acc"),
            "mean_holdout_acc": mean_of(r.get("holdout_acc") for r in run.records)}


def mean_of(values: Any) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def over_seeds(found: Sequence[dict[str, Any] | None], peak_lr: float,
               seeds: Sequence[int] | None = None) -> dict[str, Any] | None:
    """The seeds' runs of one setting: mean and standard deviation of each accuracy, how many diverged, and each
    sound seed's final accuracies (`per_seed`, for paired differences with another setting run on the same seeds)."""
    done = [r for r in found if r is not None]
    if not done:
        return None
    sound = [r for r in done if not r.get("diverged")]
    cell: dict[str, Any] = {"peak_lr": peak_lr, "seeds": len(done), "diverged": len(done) - len(sound),
                            "unfinished": len(found) - len(done)}
    for key in ("final_test_acc", "mean_test_acc", "final_holdout_acc", "mean_holdout_acc"):
        values = [r[key] for r in sound if r.get(key) is not None]
        cell[key] = statistics.fmean(values) if values else None
        cell[key.replace("_acc", "_sd")] = statistics.stdev(values) if len(values) > 1 else None
    names = list(seeds) if seeds is not None else list(range(len(found)))
    cell["per_seed"] = [[seed, r["final_test_acc"]] for seed, r in zip(names, found)
                        if r is not None and not r.get("diverged") and r.get("final_test_acc") is not None]
    return cell


# Student's t, two-sided 95% (the 0.975 quantile), by degrees of freedom: few seeds give few, and 2 would claim
# far more than 2-3 seeds measure (1 dof: 12.7; 2: 4.3).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000}


def t_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with `dof` degrees of freedom (the table's next lower dof: conservative)."""
    if dof < 1:
        raise ValueError("a t quantile needs at least 1 degree of freedom")
    return T_975[max(d for d in T_975 if d <= dof)] if dof <= 60 else 1.960


@dataclass(frozen=True)
class Gap:
    """a - b over the seeds both finished: the mean paired difference and its 95% t half-width (None: one seed)."""

    mean: float
    half_width: float | None
    pairs: int

    @property
    def beyond_chance(self) -> bool | None:
        return None if self.half_width is None else abs(self.mean) > self.half_width

    def points(self) -> str:
        """In accuracy points, with its uncertainty."""
        if self.half_width is None:
            return f"{100 * self.mean:+.1f} points (one seed in common: no uncertainty measured)"
        return f"{100 * self.mean:+.1f} ± {100 * self.half_width:.1f} points (95%, {self.pairs} seeds paired)"


def gap(a: dict[str, Any], b: dict[str, Any]) -> Gap | None:
    """`a` minus `b`, paired by seed: both arms share each seed's starting weights and data, so the difference's
    own scatter is what chance makes of it, not the two arms' scatters added."""
    theirs = dict((seed, v) for seed, v in b.get("per_seed") or [])
    diffs = [v - theirs[seed] for seed, v in a.get("per_seed") or [] if seed in theirs]
    if not diffs:
        return None
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return Gap(mean, None, 1)
    return Gap(mean, t_975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs)), len(diffs))


def pick(cells: list[dict[str, Any]], outside: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The tuned LR: the highest final held-out accuracy over the seeds, among LRs whose every seed finished and
    none diverged (an LR judged on fewer seeds would be luckier, not better). `cells` is the contiguous x2 grid;
    `outside`, the paper's own LR where it lies off that grid, is a candidate too. "At the edge" is judged on the
    grid: its smallest or largest LR, or the outside LR itself (nothing was tried between it and the grid). The
    paper's two measures can disagree: `by_mean` is the LR the mean over the epochs would pick."""
    candidates = cells + ([outside] if outside is not None else [])
    eligible = [c for c in candidates if not c["diverged"] and not c["unfinished"]
                and c["final_holdout_acc"] is not None]
    if not eligible:
        return None
    best = max(eligible, key=lambda c: c["final_holdout_acc"])
    by_mean = max(eligible, key=lambda c: c["mean_holdout_acc"] if c["mean_holdout_acc"] is not None else -1.0)
    lrs = sorted(c["peak_lr"] for c in cells)
    on_grid_edge = len(lrs) > 1 and best in cells and best["peak_lr"] in (lrs[0], lrs[-1])
    return {**best, "at_edge": on_grid_edge or best is outside, "off_grid": best is outside,
            "by_mean": by_mean["peak_lr"]}


def paper_results(out: Path, plan: PaperPlan, centres: dict[int, float]) -> list[dict[str, Any]]:
    """A row per per-worker batch: the published figure, the paper's LR, the tuned LR with its grid, and (for
    per-worker batch 8) the batch-norm control; every figure a mean over the seeds that finished. A batch that
    was never run says why (`not_run`)."""
    rows = []
    for b in BATCHES:
        row: dict[str, Any] = {"per_worker_batch": b, "global_batch": b * WORKERS, "published": PUBLISHED[b]}
        if not plan.fits(b):
            row["not_run"] = too_big(b, plan.train_images)
            rows.append(row)
            continue
        seeds = plan.seeds

        def arm(name: Callable[[int], str], lr: float) -> dict[str, Any] | None:
            return over_seeds([run_accuracies(out / name(s)) for s in seeds], lr, seeds)

        paper = arm(lambda s: f"paper/b{b}-paper-lr-s{s}", PAPER_LR * WORKERS)
        lrs = grid(centres.get(b * WORKERS, PAPER_LR * WORKERS), plan.lr_points)
        cells = [c for lr in lrs if (c := arm(lambda s, lr=lr: folder(b, lr, s), lr))]  # type: ignore[misc]
        # The paper's own LR ran anyway: a candidate too, so "tuned" is never worse held out than the paper's.
        off_grid = paper is not None and not any(math.isclose(lr, PAPER_LR * WORKERS) for lr in lrs)
        tuned = pick(cells, paper if off_grid else None)
        row.update({k: v for k, v in (("paper", paper), ("tuned", tuned)) if v is not None})
        row["grid"] = cells
        if b == CONTROL:
            control = arm(lambda s: f"paper/b{b}-control-s{s}", PAPER_LR * WORKERS)
            if control is not None:
                row["control"] = control
        rows.append(row)
    return rows


def too_big(per_worker: int, images: int) -> str:
    """Why a cell of the grid never ran: one step would take more images than there are."""
    return (f"never run: {WORKERS} workers x {per_worker} is more than the {images:,} training images (a smaller "
            "--holdout or no --train-subset runs it)")


def pct(value: float | None, sd: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None else "")


def cell(run: dict[str, Any] | None) -> str:
    if not run:
        return "-"
    if run["diverged"] == run["seeds"] and not run["unfinished"]:
        return f"diverged ({run['diverged']} of {run['seeds']} seeds)"
    text = f"{pct(run['final_test_acc'], run['final_test_sd'])} / {pct(run['mean_test_acc'])}"
    planned = run["seeds"] + run["unfinished"]
    if run["diverged"] or run["unfinished"]:  # a mean over fewer seeds than planned says so
        text += f" ({planned - run['diverged'] - run['unfinished']} of {planned} seeds" + (
            f"; {run['diverged']} diverged" if run["diverged"] else "") + ")"
    return text


def lr_label(tuned: dict[str, Any] | None) -> str:
    if not tuned:
        return "-"
    where = " (the paper's LR, off the grid: nothing tried between)" if tuned.get("off_grid") else (
        " (edge)" if tuned["at_edge"] else "")
    mean = f" (the mean picks {tuned['by_mean']:.4g})" if not math.isclose(tuned["by_mean"], tuned["peak_lr"]) else ""
    return f"{tuned['peak_lr']:.4g}{where}{mean}"


def paper_section(rows: list[dict[str, Any]], plan: PaperPlan) -> list[str]:
    epochs = f"{plan.epochs} epoch{'s' if plan.epochs != 1 else ''}"
    published = f"published ({EPOCHS} epochs, width {WIDTH}" + (")" if plan.comparable else "; not comparable)")
    lines = ["", f"## The paper's grid: {WORKERS} workers, {epochs}", "",
             f"Test accuracy, %, final (mean ± sd over {len(plan.seeds)} seed(s)) / averaged over the epochs (the "
             f"paper's measure). Schedule: {describe_schedule(plan.epochs)}, as the original's (at {EPOCHS} epochs: 5 "
             "warmup epochs, x0.1 at epoch 30). The tuned LR is the one of its x2 grid with the highest final held-out "
             "accuracy (the test set picks nothing). The paper's network is ImageNet's ResNet-18 (7x7 stem, "
             "max-pool) on 32x32 images, ours the CIFAR variant: its figures are a reference even at its width and "
             "epochs.", ""]
    if len(plan.seeds) < 2:
        lines += ["With one seed no spread is measured: differences of a few points may be chance (--seeds 1,2,3).", ""]
    if plan.comparable:
        lines += [f"Comparable in width and epochs; trained on {plan.train_images:,} images (the rest held out to pick "
                  "the LR, where the paper trained on all 50,000), our test accuracy beside the paper's validation "
                  "accuracy.", ""]
    else:
        lines += [f"**Not comparable with the paper's column**: width {plan.width} (the paper: {WIDTH}), {epochs} (the "
                  f"paper: {EPOCHS})" + (f", {plan.train_subset} training images" if plan.train_subset else "") +
                  ". These runs show the shape at the scale that ran, not the paper's numbers.", ""]
    lines += [f"| per-worker batch | global | {published} | LR 0.1 x workers: final / mean | tuned LR | "
              "tuned: final / mean |", "|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row.get("not_run"):
            lines.append(f"| {row['per_worker_batch']} | {row['global_batch']} | {row['published']} | "
                         f"{row['not_run']} | - | - |")
            continue
        lines.append(f"| {row['per_worker_batch']} | {row['global_batch']} | {row['published']} | "
                     f"{cell(row.get('paper'))} | {lr_label(row.get('tuned'))} | {cell(row.get('tuned'))} |")
        if "control" in row:  # the control's own row: one worker, batch norm over the whole global batch
            lines.append(f"| {row['per_worker_batch']}: control, 1 worker, batch norm over {row['global_batch']} | "
                         f"{row['global_batch']} | - | {cell(row['control'])} | - | - |")
    lines += ["", drop_statement(rows, plan.comparable)]
    control = control_statement(rows)
    return lines + (["", control] if control else [])


def missing_reason(row: dict[str, Any], arm: dict[str, Any]) -> str:
    """Why a batch has no figure: never run (and why), diverged at every seed, or not finished."""
    if row.get("not_run"):
        return row["not_run"]
    if arm and arm.get("diverged") and arm["diverged"] == arm["seeds"] and not arm["unfinished"]:
        return f"diverged at all {arm['seeds']} seeds"
    return "not finished"


def drop_statement(rows: list[dict[str, Any]], comparable: bool = True) -> str:
    """How far the smallest and largest batch fall below the best one, at the paper's LR and at a tuned one, each
    a paired difference with its 95% t interval; a batch with no figure is named, with why, not skipped."""
    parts = []
    never = [r for r in rows if r.get("not_run")]
    rows = [r for r in rows if not r.get("not_run")]  # a batch that never ran is named apart, with its reason
    for kind, label in (("paper", "at the paper's LR"), ("tuned", "with a tuned LR")):
        cells = [row.get(kind) or {} for row in rows]
        values = [c.get("final_test_acc") for c in cells]
        if not values:
            continue
        if None in values:
            lost = [f"{r['per_worker_batch']} ({missing_reason(r, c)})" for r, c in zip(rows, cells)
                    if c.get("final_test_acc") is None]
            parts.append(f"{label}, no figure for per-worker batch {', '.join(lost)}")
            continue
        top = max(range(len(values)), key=lambda i: values[i])  # type: ignore[arg-type, return-value]
        edges = [str(r["per_worker_batch"]) for r, c in zip(rows, cells) if c.get("at_edge")]

        def below(i: int) -> str:
            change = gap(cells[top], cells[i]) if i != top else None
            if change is None:
                return f"{100 * (values[top] - values[i]):.1f} points"  # type: ignore[operator]
            spread = ("" if change.half_width is None else
                      f" ± {100 * change.half_width:.1f}" + ("" if change.beyond_chance else ", within chance"))
            return f"{100 * change.mean:.1f}{spread} points"

        parts.append(f"{label}, the smallest batch is {below(0)} and the largest {below(len(values) - 1)} below the "
                     "best batch" + (f" (the best LR is on its grid's edge for per-worker batch {', '.join(edges)}: a "
                                     "wider grid may do better there)" if edges else ""))
    published = [PUBLISHED[b] for b in BATCHES]
    theirs = (f"the smallest batch {max(published) - published[0]:.1f} points and the largest "
              f"{max(published) - published[-1]:.1f} points below its best")
    ours = "; ".join(parts) + "." if parts else "the paper grid has not finished."
    uncertainty = " (± a 95% t interval of the seeds' paired differences)" if any("±" in p for p in parts) else ""
    if never:
        batches = ", ".join(str(r["per_worker_batch"]) for r in never)
        ours += (f" Per-worker batch {batches} {never[0]['not_run']}" + (", so the largest batch here is per-worker "
                 f"{rows[-1]['per_worker_batch']}" if rows and "per_worker_batch" in rows[-1] else "") + ".")
    if comparable:
        return f"In the paper {theirs}. Here{uncertainty}, {ours}"
    return f"Here{uncertainty}, {ours} (In the paper, at {EPOCHS} epochs and width {WIDTH}, {theirs}: another scale.)"


def control_statement(rows: list[dict[str, Any]]) -> str | None:
    """What batch norm over 8 images costs at per-worker batch 8: the control's accuracy against the grid's run at
    the same LR, as the seeds' paired difference with its t interval; every diverged seed counted."""
    row = next((r for r in rows if r["per_worker_batch"] == CONTROL), {})
    workers, one = row.get("paper") or {}, row.get("control") or {}
    if not workers or not one:
        return None

    def seeds(arm: dict[str, Any]) -> str:
        sound = arm["seeds"] - arm["diverged"]
        return (f"{sound} of {arm['seeds'] + arm['unfinished']} seeds" + (f", {arm['diverged']} diverged"
                                                                          if arm["diverged"] else "")
                + (f", {arm['unfinished']} not finished" if arm["unfinished"] else ""))

    head = (f"Batch-norm control at per-worker batch {CONTROL}: the same global batch {CONTROL * WORKERS}, LR and "
            f"schedule on one worker, batch norm over {CONTROL * WORKERS} images instead of {CONTROL} (its running "
            f"statistics also updated once a step, not {WORKERS} times)")
    if workers.get("final_test_acc") is None or one.get("final_test_acc") is None:
        return (f"{head}: no comparison (control: {seeds(one)}; {WORKERS} workers: {seeds(workers)}).")
    change = gap(one, workers)
    if change is None:
        verdict = "no seed finished in both arms, so no paired difference"
    elif change.half_width is None:
        verdict = f"{change.points()}, so no verdict"
    else:
        verdict = change.points() + (": beyond chance" if change.beyond_chance else ": within chance")
    return (f"{head}, reaches {pct(one['final_test_acc'])}% ({seeds(one)}) against {pct(workers['final_test_acc'])}% "
            f"({seeds(workers)}): {verdict}.")


def budget(plan: PaperPlan) -> int:
    """The most runs stage 2 may plan (for a dry run): fewer where a grid holds the paper's own LR."""
    fit = sum(plan.fits(b) for b in BATCHES)
    return len(plan.seeds) * (fit * (1 + plan.lr_points) + plan.fits(CONTROL))

