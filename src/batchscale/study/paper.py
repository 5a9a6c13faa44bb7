"""Stage 2 of `batchscale study`: the paper's batch-size result (Kim et al. 2023), put to the test.

The paper trains 4 workers x per-worker batch 8...256 for 90 epochs at LR 0.1 x workers and reads final and mean
test accuracy: accuracy falls at both ends. Besides the batch size itself, three things can make such a drop,
and each has its own runs here:
- the LR: one LR for every batch. The same grid also runs at LRs spaced x2 around stage 1's best LR for the
  same global batch (the paper's LR where stage 1 has none), and the best of them and the paper's own LR for
  the paper's objective is kept: final accuracy at the same epoch budget, on the held-out split, averaged over
  seeds (where the paper's other measure, the mean over the epochs, would pick another LR, the table says so).
  The held-out split picks; the test set only reports, so its figures are not tuned to it;
- chance: every run with each of the study's seeds, reported as mean and spread;
- batch norm over 8 images at per-worker batch 8: a control with the same global batch, LR and schedule on one
  worker, so that batch norm sees all 32 images. The gap between the two is what batch norm's batch costs.

Figures at another width or epoch count than the paper's 64 and 90 are labelled as not comparable with its
published column: they show the shape at the scale that ran, not the paper's numbers.
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
PUBLISHED = {8: 23.9, 16: 81.0, 32: 86.0, 64: 87.8, 128: 88.2, 256: 80.5}  # their val accuracy, %, 90 epochs
WIDTH, EPOCHS = 64, 90  # the paper's network width and epochs
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
    # The paper's step schedule where its 90 epochs fit; a short run keeps the shape: warmup, then decay.
    if epochs >= EPOCHS:
        return ["--lr-schedule", "step", "--lr-decay-epochs", "30,60,80", "--warmup-epochs", "5"]
    return ["--lr-schedule", "cosine", "--warmup-epochs", f"{5 * epochs / EPOCHS:.4g}"]


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


def over_seeds(found: Sequence[dict[str, Any] | None], peak_lr: float) -> dict[str, Any] | None:
    """The seeds' runs of one setting: mean and standard deviation of each accuracy, and how many diverged."""
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
    return cell


def pick(cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The tuned LR: the highest final held-out accuracy over the seeds, among LRs whose every seed finished and
    none diverged (an LR judged on fewer seeds would be luckier, not better). The paper's two measures can
    disagree: `by_mean` is the LR the mean over the epochs would pick."""
    eligible = [c for c in cells if not c["diverged"] and not c["unfinished"] and c["final_holdout_acc"] is not None]
    if not eligible:
        return None
    best = max(eligible, key=lambda c: c["final_holdout_acc"])
    by_mean = max(eligible, key=lambda c: c["mean_holdout_acc"] if c["mean_holdout_acc"] is not None else -1.0)
    lrs = sorted(c["peak_lr"] for c in cells)
    return {**best, "at_edge": len(lrs) > 1 and best["peak_lr"] in (lrs[0], lrs[-1]), "by_mean": by_mean["peak_lr"]}


def paper_results(out: Path, plan: PaperPlan, centres: dict[int, float]) -> list[dict[str, Any]]:
    """A row per per-worker batch: the published figure, the paper's LR, the tuned LR with its grid, and (for
    per-worker batch 8) the batch-norm control; every figure a mean over the seeds that finished."""
    rows = []
    for b in BATCHES:
        row: dict[str, Any] = {"per_worker_batch": b, "global_batch": b * WORKERS, "published": PUBLISHED[b]}
        if not plan.fits(b):
            row["not_run"] = too_big(b, plan.train_images)
            rows.append(row)
            continue
        seeds = plan.seeds
        paper = over_seeds([run_accuracies(out / f"paper/b{b}-paper-lr-s{s}") for s in seeds], PAPER_LR * WORKERS)
        lrs = grid(centres.get(b * WORKERS, PAPER_LR * WORKERS), plan.lr_points)
        cells = [c for lr in lrs if (c := over_seeds([run_accuracies(out / folder(b, lr, s)) for s in seeds], lr))]
        # The paper's own LR ran anyway: a candidate too, so "tuned" is never worse held out than the paper's.
        outside = paper is not None and not any(math.isclose(lr, PAPER_LR * WORKERS) for lr in lrs)
        row.update({k: v for k, v in (("paper", paper), ("tuned", pick(cells + [paper] * outside))) if v is not None})
        row["grid"] = cells
        if b == CONTROL:
            control = over_seeds([run_accuracies(out / f"paper/b{b}-control-s{s}") for s in seeds], PAPER_LR * WORKERS)
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
        return "diverged"
    text = f"{pct(run['final_test_acc'], run['final_test_sd'])} / {pct(run['mean_test_acc'])}"
    planned = run["seeds"] + run["unfinished"]
    if run["diverged"] or run["unfinished"]:  # a mean over fewer seeds than planned says so
        text += f" ({planned - run['diverged'] - run['unfinished']} of {planned} seeds" + (
            f"; {run['diverged']} diverged" if run["diverged"] else "") + ")"
    return text


def paper_section(rows: list[dict[str, Any]], plan: PaperPlan) -> list[str]:
    epochs = f"{plan.epochs} epoch{'s' if plan.epochs != 1 else ''}"
    published = "published (90 epochs, width 64" + (")" if plan.comparable else "; not comparable)")
    lines = ["", f"## The paper's grid: {WORKERS} workers, {epochs}", "",
             f"Test accuracy, %, final (mean ± sd over {len(plan.seeds)} seed(s)) / averaged over the epochs (the "
             "paper's measure). The tuned LR is the one of its x2 grid with the highest final held-out accuracy (the "
             "test set picks nothing). The paper's network is ImageNet's ResNet-18 (7x7 stem, max-pool) on 32x32 images, "
             "ours the CIFAR variant: its figures are a reference even at its width and epochs.", ""]
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
        tuned = row.get("tuned")
        lr = "-" if not tuned else f"{tuned['peak_lr']:.4g}" + (" (edge)" if tuned["at_edge"] else "") + (
            f" (the mean picks {tuned['by_mean']:.4g})" if not math.isclose(tuned["by_mean"], tuned["peak_lr"]) else "")
        lines.append(f"| {row['per_worker_batch']} | {row['global_batch']} | {row['published']} | "
                     f"{cell(row.get('paper'))} | {lr} | {cell(tuned)} |")
    lines += ["", drop_statement(rows, plan.comparable)]
    control = control_statement(rows)
    return lines + (["", control] if control else [])


def drop_statement(rows: list[dict[str, Any]], comparable: bool = True) -> str:
    """How far the smallest and largest batch fall below the best one, at the paper's LR and at a tuned one;
    a batch with no figure (diverged at every seed, or not finished) is named, not skipped."""
    parts = []
    never = [r for r in rows if r.get("not_run")]
    rows = [r for r in rows if not r.get("not_run")]  # a batch that never ran is named apart, with its reason
    for kind, label in (("paper", "at the paper's LR"), ("tuned", "with a tuned LR")):
        cells = [row.get(kind) or {} for row in rows]
        values = [c.get("final_test_acc") for c in cells]
        if not values:
            continue
        if None in values:
            lost = [str(r["per_worker_batch"]) for r, c in zip(rows, cells) if c.get("final_test_acc") is None]
            parts.append(f"{label}, no figure yet for per-worker batch {', '.join(lost)} (diverged at every seed, "
                         "or not finished)")
            continue
        top = max(values)  # type: ignore[type-var]
        edges = [str(r["per_worker_batch"]) for r, c in zip(rows, cells) if c.get("at_edge")]
        parts.append(f"{label}, the smallest batch is {100 * (top - values[0]):.1f} points and the largest "  # type: ignore[operator]
                     f"{100 * (top - values[-1]):.1f} points below the best batch"  # type: ignore[operator]
                     + (f" (the best LR is on its grid's edge for per-worker batch {', '.join(edges)}: a wider grid "
                        "may do better there)" if edges else ""))
    published = [PUBLISHED[b] for b in BATCHES]
    theirs = (f"the smallest batch {max(published) - published[0]:.1f} points and the largest "
              f"{max(published) - published[-1]:.1f} points below its best")
    ours = "; ".join(parts) + "." if parts else "the paper grid has not finished."
    if never:
        batches = ", ".join(str(r["per_worker_batch"]) for r in never)
        ours += (f" Per-worker batch {batches} {never[0]['not_run']}" + (", so the largest batch here is per-worker "
                 f"{rows[-1]['per_worker_batch']}" if rows and "per_worker_batch" in rows[-1] else "") + ".")
    if comparable:
        return f"In the paper {theirs}. Here, {ours}"
    return f"Here, {ours} (In the paper, at 90 epochs and width 64, {theirs}: another scale.)"


def control_statement(rows: list[dict[str, Any]]) -> str | None:
    """What batch norm over 8 images costs at per-worker batch 8: the control's accuracy against the grid's, with
    the standard error of the difference of the two means where the seeds measure one."""
    row = next((r for r in rows if r["per_worker_batch"] == CONTROL), {})
    workers, one = row.get("paper") or {}, row.get("control") or {}
    if workers.get("final_test_acc") is None or one.get("final_test_acc") is None:
        return None
    gap = one["final_test_acc"] - workers["final_test_acc"]
    arms = [(c.get("final_test_sd"), c["seeds"] - c["diverged"]) for c in (workers, one)]
    if all(sd is not None for sd, _ in arms):
        se = math.sqrt(sum(sd ** 2 / n for sd, n in arms))  # type: ignore[operator]
        verdict = "more than" if abs(gap) > 2 * se else "within"
        noise = f" (standard error {100 * se:.1f} points: {verdict} twice it)"
    else:
        noise = " (one seed: no spread measured, so no verdict)"
    return (f"Batch-norm control at per-worker batch {CONTROL}: the same global batch {CONTROL * WORKERS}, LR and "
            f"schedule on one worker, batch norm over {CONTROL * WORKERS} images instead of {CONTROL} (its running "
            f"statistics also updated once a step, not {WORKERS} times), reaches {pct(one['final_test_acc'])}% against "
            f"{pct(workers['final_test_acc'])}%: {100 * gap:+.1f} points{noise}.")


def budget(plan: PaperPlan) -> int:
    """The most runs stage 2 may plan (for a dry run): fewer where a grid holds the paper's own LR."""
    fit = sum(plan.fits(b) for b in BATCHES)
    return len(plan.seeds) * (fit * (1 + plan.lr_points) + plan.fits(CONTROL))

