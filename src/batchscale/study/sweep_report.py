"""`batchscale report DIR`: report.md and PNG plots of a sweep, every number read from the runs' outputs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..schedule import lr_scale
from .runs import MEAN_LAST, RunResult, Unfinished, load_runs, load_unfinished, positive, pyplot, read_json
from .sweep import planned_runs

# An accuracy axis spans at least this much (5 points): a point's difference between two single-seed runs is then
# a fifth of the plot, not a cliff from its bottom to its top.
MIN_ACCURACY_SPAN = 0.05
THROUGHPUT_NOTE = ("images/s and seconds are wall-clock on the machine that ran the sweep, under whatever else ran on "
                   "it: compare them within one sweep on an otherwise idle machine, not across machines or loads")


@dataclass
class Target:
    """The accuracy steps to target are counted to, and each run's first evaluation at or above it."""

    accuracy: float | None  # None: no target fits these runs
    said: str  # how it was chosen, or why none fits: one sentence for the report
    reached: dict[str, dict[str, Any]] = field(default_factory=dict)  # run name -> {"step", "train_seconds", ...}


def judged(run: RunResult) -> str:
    """The split a run judges its target on (summary.json's rule): the held-out one where there is one."""
    return "holdout_acc" if run.summary["config"].get("holdout") else "val_acc"


def choose_target(runs: list[RunResult]) -> Target:
    """The runs' own --target-accuracy where at least two reached it; otherwise the highest whole point every run
    reached, if one of them reached it after its first evaluation (else a step to it says only "at most the run's
    length"); otherwise none, and why."""
    recorded = runs[0].summary.get("target_accuracy", 0.94) if runs else 0.94
    hits = {r.name: r.target for r in runs if r.target}
    if len(hits) >= 2:
        return Target(recorded, f"target accuracy {recorded:.2f} (the runs' --target-accuracy)", hits)
    missed = (f"No run reached the target accuracy {recorded:.2f}" if not hits else
              f"Only one run reached the target accuracy {recorded:.2f}")
    if len(runs) < 2:
        return Target(None, f"{missed}, and steps to target need two runs to compare.")
    scores = {r.name: [(x, x.get(judged(r), x["val_acc"])) for x in r.records] for r in runs}
    reachable = math.floor(100 * min(max(a for _, a in points) for points in scores.values()) + 1e-9) / 100
    first = {name: next(x for x, a in points if a >= reachable) for name, points in scores.items()}
    if reachable <= 0 or all(first[r.name] is r.records[0] for r in runs):
        evaluations = max(len(r.records) for r in runs)
        return Target(None, f"{missed}, and no other target fits: every run reached {reachable:.2f} (the most they "
                      f"all reached) at its first evaluation ({evaluations} per run, at epoch ends), so a step to it "
                      "would only say \"at most this run's length\". Train more epochs to measure one.")
    reached = {name: {"epoch": x["epoch"], "step": x["step"], "train_seconds": x.get("train_seconds")}
               for name, x in first.items()}
    return Target(reachable, f"target accuracy {reachable:.2f}, chosen from what the runs reached: the highest whole "
                  f"point every run reached at an epoch-end evaluation ({missed[0].lower()}{missed[1:]}, their "
                  "--target-accuracy)", reached)


def knee(runs: list[RunResult], target: Target | None = None) -> int | None:
    """The smallest global batch past which steps to target no longer fall in proportion: where the
    step efficiency S(B0) B0 / (S(B) B) drops below one half (McCandlish et al.'s critical batch)."""
    hits = target.reached if target is not None else {r.name: r.target for r in runs if r.target}
    reached = sorted((r.global_batch, hits[r.name]["step"]) for r in runs if r.name in hits)
    if len(reached) < 2:
        return None
    b0, s0 = reached[0]
    return next((b for b, s in reached[1:] if s0 * b0 / (s * b) < 0.5), None)


def applied_lr(run: RunResult) -> tuple[str, float, float] | None:
    """(shape, first LR, LR at the last epoch's end) of the LR the run applied: its epochs' LRs from metrics.jsonl,
    and its first step's from its warmup (the start LR) or else its peak. None where the records hold no LR, or
    the peak is not the plain rule's (Adasum)."""
    config, records = run.summary["config"], run.records
    if any("lr" not in x for x in records) or "base_lr" not in config or config.get("use_adasum"):
        return None
    steps_per_epoch = records[0]["step"] / records[0]["epoch"]
    warmup = config.get("warmup_steps") or round(config.get("warmup_epochs", 0) * steps_per_epoch)
    peak = config["base_lr"] * lr_scale(config["lr_scaling"], run.global_batch // config["batch_size"])
    start = (config.get("warmup_start_lr") if config.get("warmup_start_lr") is not None else config["base_lr"]) \
        if warmup else peak
    lrs = [start, *(x["lr"] for x in records)]
    same = max(lrs) - min(lrs) <= 1e-6 * max(lrs)
    if same:
        shape = "constant"
    elif lrs[-1] >= max(lrs) * (1 - 1e-6) and config["lr_schedule"] != "constant":
        shape = f"warmup only: the {config['lr_schedule']} decay never began"
    else:
        shape = config["lr_schedule"] if warmup == 0 or max(lrs) == start else f"warmup, then {config['lr_schedule']}"
    return shape, start, lrs[-1]


def describe_lr(runs: list[RunResult]) -> str:
    """The LR the runs applied, as their titles say it: `constant LR 0.1` where it never left 0.1, whatever the
    schedule was named."""
    applied = [applied_lr(r) for r in runs]
    if any(a is None for a in applied):
        return f"{runs[0].summary['config']['lr_schedule']} LR"
    shapes = sorted({a[0] for a in applied})  # type: ignore[index]
    values = sorted({round(v, 6) for a in applied for v in a[1:]})  # type: ignore[index]
    if len(shapes) > 1:
        return f"LR {values[0]:.3g}-{values[-1]:.3g} ({', '.join(shapes)}, by run)"
    shape, start, end = applied[0]  # type: ignore[misc]
    low, high = (shown_lr(v, values[-1]) for v in (values[0], values[-1]))
    if shape == "constant":
        return f"constant LR {high}" if len(values) == 1 else f"constant LR {low}-{high} by run"
    if len({(a[1], a[2]) for a in applied}) == 1:  # type: ignore[index]
        return f"LR {shown_lr(start, max(start, end))} to {shown_lr(end, max(start, end))} ({shape})"
    return f"LR {low}-{high} ({shape}, by run)"


def shown_lr(value: float, high: float) -> str:
    """An LR as a title shows it: 0 where a decay has all but reached it (cosine's last step is not exactly 0)."""
    return "0" if value < 1e-3 * high else f"{value:.3g}"


def accuracy_axis(ax: Any, values: list[float]) -> None:
    """At least MIN_ACCURACY_SPAN tall, centred on the values, inside [0, 1]."""
    if not values:
        return
    low, high = min(values), max(values)
    pad = max(MIN_ACCURACY_SPAN - (high - low), 0.0) / 2 + 0.005
    low, high = low - pad, high + pad
    shift = max(0.0, -low) - max(0.0, high - 1)
    ax.set_ylim(max(0.0, low + shift), min(1.0, high + shift))


BEST, AT_BEST_HELD_OUT = "best test acc", "test acc at best held-out epoch"
MIXED_MARK = "*"
MIXED = f"best test acc ({MIXED_MARK}: at best held-out epoch)"


def held_out(run: RunResult) -> bool:
    """Whether the run's held-out split, not the test set, picked its best epoch (summary's best_val_acc)."""
    return bool(run.summary["config"].get("holdout"))


def best_name(runs: list[RunResult]) -> str:
    """What the summaries' best_val_acc is: the best test accuracy, or (with --holdout) the test accuracy at the
    epoch the held-out split picked, which may be below the final one."""
    marked = {held_out(r) for r in runs}
    return AT_BEST_HELD_OUT if marked == {True} else MIXED if len(marked) > 1 else BEST


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def settings(runs: list[RunResult]) -> str:
    """What the runs were run with, for every plot's title: the model and what the whole sweep shares."""
    if not runs:
        return "no run finished"
    config = runs[0].summary["config"]
    model = config["model"] + (f" width {config['width']}" if config["model"] == "resnet18" else "")
    epochs = sorted({r.summary["epochs_completed"] for r in runs})
    subset = f", {config['train_subset']} training images" if config.get("train_subset") else ""
    shown = f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"
    return f"{model}, {shown} epoch(s){subset}, {describe_lr(runs)}, {config['lr_scaling']} scaling"


def write_plots(runs: list[RunResult], out: Path, knee_batch: int | None,
                unfinished: list[Unfinished] = (), target: Target | None = None) -> list[tuple[str, str]]:  # type: ignore[assignment]
    """Returns (file name, caption) for each plot written; a plot with nothing to show is not drawn."""
    target = target if target is not None else choose_target(runs)
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    plots: list[tuple[str, str]] = []
    title = settings(runs)

    def save(fig: Any, name: str, caption: str) -> None:
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        plots.append((name, caption))

    def batch_axis(ax: Any) -> None:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 64, 128, 256 rather than 2^6, 2^7, 2^8
        ax.set_xlabel("global batch")

    def epoch_axis(ax: Any) -> None:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")

    by_workers: dict[int, list[RunResult]] = {}
    for r in runs:
        by_workers.setdefault(r.workers, []).append(r)
    colours = {workers: f"C{i}" for i, workers in enumerate(sorted(by_workers))}

    def per_workers(ax: Any, value: Callable[[RunResult], float | None], label: str, **style: Any) -> None:
        """A line through the mean at each batch; where several runs (seeds, LRs) share a batch, each as a dot."""
        for workers, group in sorted(by_workers.items()):
            points = sorted((r.global_batch, value(r)) for r in group if value(r) is not None)
            if not points:
                continue
            xs = sorted({x for x, _ in points})
            means = [statistics.fmean(y for x, y in points if x == b) for b in xs]
            ax.plot(xs, means, color=colours[workers], label=f"{label}, {workers} worker(s)"
                    + (", mean" if len(points) > len(xs) else ""), **style)
            if len(points) > len(xs):
                ax.plot(*zip(*points), ".", color=colours[workers], alpha=0.6, label=f"{label}, each run")
        batch_axis(ax)
        ax.legend(fontsize=8)

    # Runs that share a batch (and worker count) but not a seed: the seed scatter is drawn; with one, it is said.
    repeats = max((sum(o.global_batch == r.global_batch and o.workers == r.workers for o in runs) for r in runs),
                  default=1)
    scatter = ("dots: each run, line: their mean" if repeats > 1 else
               "one run per point: the seed-to-seed scatter is not measured (a sweep with --seeds 1,2,3 draws it), "
               f"and the axis spans at least {100 * MIN_ACCURACY_SPAN:.0f} points so that a small difference is not "
               "read as a cliff")

    def mark_unfinished(ax: Any) -> None:
        """Runs without an accuracy, as markers on the x axis (at their batch, not at a made-up value)."""
        for status, marker, color in (("diverged", "x", "C3"), ("stopped or failed", "|", "0.4")):
            xs = [u.global_batch for u in unfinished if u.status == status and u.global_batch]
            if xs:
                ax.plot(xs, [0.02] * len(xs), marker, color=color, ms=9, mew=2, ls="none", clip_on=False,
                        transform=ax.get_xaxis_transform(), label=f"{status} ({len(xs)}), no accuracy")

    fig, ax = plt.subplots(figsize=(6, 4))
    # Best drawn first, large and hollow, so a final that equals it shows inside it in the same colour.
    picked = best_name(runs)
    per_workers(ax, lambda r: r.summary["best_val_acc"], picked, marker="o", markersize=10, markerfacecolor="none",
                linestyle="--")
    per_workers(ax, lambda r: r.summary["final_val_acc"], "final", marker="o", markersize=4, linestyle="-")
    mark_unfinished(ax)
    if unfinished:
        ax.legend(fontsize=8)
    ax.set_ylabel("test accuracy")
    accuracy_axis(ax, [r.summary[k] for r in runs for k in ("best_val_acc", "final_val_acc") if r.summary[k] is not None])
    if repeats == 1 and runs:  # said on the figure too: a PNG is often looked at without its report
        ax.text(0.01, 0.01, "one seed per point: the scatter between seeds is not measured", transform=ax.transAxes,
                fontsize=7, color="0.4")
    save(fig, "accuracy_vs_batch.png", f"Final test accuracy and {picked} against the global batch; " + scatter
         + ("; runs that did not finish marked on the axis" if unfinished else ""))

    fig, ax = plt.subplots(figsize=(6, 4))
    per_workers(ax, lambda r: r.summary["images_per_sec"], "images/s", marker="o")
    ax.set_ylabel("training images/s")
    ax.set_ylim(bottom=0)  # from zero: a rate that changed by a third should look it
    ax.text(0.01, 0.01, "depends on the machine and its load", transform=ax.transAxes, fontsize=7, color="0.4")
    save(fig, "throughput_vs_batch.png", f"Training throughput against the global batch ({THROUGHPUT_NOTE})")

    reached = sorted((r.global_batch, target.reached[r.name]["step"], target.reached[r.name]["train_seconds"])
                     for r in runs if r.name in target.reached and target.reached[r.name].get("train_seconds") is not None)
    if reached and target.accuracy is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, column, label in ((axes[0], 1, "steps to target"), (axes[1], 2, "training seconds to target")):
            xs = [p[0] for p in reached]
            ys = [p[column] for p in reached]
            ax.plot(xs, ys, "o-", label="measured")
            ax.plot(xs, [ys[0] * xs[0] / x for x in xs], "k:", label="perfect scaling (1/B)")
            if knee_batch:
                ax.axvline(knee_batch, color="r", ls="--", label=f"knee, B={knee_batch}")
            ax.legend(fontsize=8)
            batch_axis(ax)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.set_ylabel(label)
        save(fig, "time_to_target.png", f"Steps and time to {target.accuracy:.2f} accuracy against the global batch "
             "(log-log)")

    curves = {r.name: [(x["epoch"], x["noise_scale"]) for x in r.records
                       if x.get("noise_scale") is not None and x["noise_scale"] > 0] for r in runs}
    if any(curves.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, points in curves.items():
            if points:
                ax.plot(*zip(*points), marker=".", label=name)
        if knee_batch:
            ax.axhline(knee_batch, color="r", ls="--", label=f"measured knee B={knee_batch}")
        values = [v for points in curves.values() for _, v in points] + ([knee_batch] if knee_batch else [])
        if max(values) / min(values) > 10:  # a log axis only where the values span more than a decade
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
        epoch_axis(ax)
        ax.set_ylabel("B_simple (images)")
        ax.legend(fontsize=6)
        save(fig, "noise_scale.png", "Gradient noise scale B_simple over training, against the measured knee")

    fig, ax = plt.subplots(figsize=(6, 4))
    lone = [r for r in runs if len(r.records) == 1]
    for r in runs:
        # A run of one epoch has one evaluation: a point, drawn large enough to be seen, not a line of one dot.
        style = {"marker": "o", "markersize": 7, "linestyle": "none"} if len(r.records) == 1 else {"marker": "."}
        ax.plot([x["epoch"] for x in r.records], [x["val_acc"] for x in r.records], label=r.name, **style)
    epoch_axis(ax)
    longest = max((len(r.records) for r in runs), default=1)
    ax.set_xlim(0.5, longest + 0.5)
    if longest <= 10:  # MaxNLocator falls back to fractions on a span of one epoch
        ax.set_xticks(range(1, longest + 1))
    ax.set_ylabel("test accuracy")
    accuracy_axis(ax, [x["val_acc"] for r in runs for x in r.records])
    if lone:
        ax.text(0.01, 0.01, f"{len(lone)} run(s) of one epoch: one evaluation each, no curve", transform=ax.transAxes,
                fontsize=7, color="0.4")
    ax.legend(fontsize=6)
    save(fig, "accuracy_curves.png", "Test accuracy per epoch, every run"
         + (f"; {len(lone)} run(s) of one epoch: one evaluation each, drawn as a point, not a curve" if lone else ""))
    for stale in {"time_to_target.png", "noise_scale.png"} - {name for name, _ in plots}:
        (out / stale).unlink(missing_ok=True)  # an earlier report's plot would show what no longer holds
    return plots


def report(sweep_dir: str | Path) -> Path:
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir, allow_empty=True)
    unfinished = load_unfinished(sweep_dir, planned_runs(sweep_dir))
    if not runs and not unfinished:
        load_runs(sweep_dir)  # its one-line error: nothing here to report
    target = choose_target(runs)
    knee_batch, picked = knee(runs, target), best_name(runs)
    plots = write_plots(runs, sweep_dir, knee_batch, unfinished, target)
    if runs:
        chosen = f", {target.said}" if target.accuracy is not None else ""
        about = (f"{len(runs)} finished runs of {runs[0].summary['config']['model']} on CIFAR-10, "
                 f"{runs[0].summary['epochs_completed']} epoch(s) each, {describe_lr(runs)}{chosen}. ")
    else:
        about = "No run finished. "
    if unfinished:
        counts = {status: sum(u.status == status for u in unfinished) for status in dict.fromkeys(u.status for u in unfinished)}
        about += f"Did not finish: {', '.join(f'{n} {status}' for status, n in counts.items())} (listed below the table). "
    last = min(MEAN_LAST, max((r.summary["epochs_completed"] for r in runs), default=1))
    # No target fits: its columns would be "-" in every row; they are left out, and the text below says why.
    to_target = (" steps to target | s to target |", " ---: | ---: |") if target.accuracy is not None else ("", "")
    lines = [
        f"# Batch-size study: {sweep_dir.name}",
        "",
        about + "Every number below is read from the runs' `summary.json` (curves from `metrics.jsonl`).",
        "",
        f"| run | batch/worker | workers | global batch | final acc | {picked} | mean acc (last {last}) | train s "
        f"| images/s |{to_target[0]} B_simple |",
        f"| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |{to_target[1]} ---: |",
    ]
    for r in runs:
        s, t = r.summary, target.reached.get(r.name) or {}
        reached = f" {t.get('step', '-')} | {fmt(t.get('train_seconds'), 1)} |" if target.accuracy is not None else ""
        lines.append(
            f"| {r.name} | {s['config']['batch_size'] * s['config']['batches_per_allreduce']} | {r.workers}"
            f"{' (sim.)' if s.get('simulated_workers') else ''} | {r.global_batch} | {fmt(s['final_val_acc'])} "
            f"| {fmt(s['best_val_acc'])}{MIXED_MARK * (held_out(r) and picked == MIXED)} | {fmt(r.mean_last)} "
            f"| {fmt(s['train_seconds'], 1)} | {fmt(s['images_per_sec'], 1)} |{reached} {positive(s.get('noise_scale'), 1)} |"
        )
    if runs:
        lines += ["", f"Train s and images/s: {THROUGHPUT_NOTE}."]
    if unfinished:
        lines += ["", "Runs without a result (no accuracy to report; never left out):", "",
                  "| run | workers | global batch | status | why |", "| --- | ---: | ---: | --- | --- |"]
        lines += [f"| {u.name} | {u.workers or '-'} | {u.global_batch or '-'} | {u.status} | {u.why} |" for u in unfinished]
    changed = [r for r in runs if r.summary.get("changes")]
    if changed:
        lines += ["", "Settings changed on resume (each applies from the step shown; the row is not a clean run):"]
        for r in changed:
            listed = ", ".join(f"{c['setting']} {c['from']} -> {c['to']} from step {c['step']}" for c in r.summary["changes"])
            lines.append(f"- {r.name}: {listed}")
    lines += ["", "## Diminishing returns", ""]
    if knee_batch:
        lines.append(f"Steps to target stop halving when the batch doubles at a global batch of about {knee_batch} "
                     "(step efficiency below one half of the smallest batch's).")
    else:
        lines.append("No knee measured: fewer than two runs reached the target, or every batch still scaled.")
    if runs and target.accuracy is None:
        lines += ["", f"{target.said} So there is no time-to-target column or plot."]
    if any((r.summary.get("noise_scale") or 0) <= 0 for r in runs):
        lines += ["", "B_simple \"-\": none measured (one worker without accumulation), or its estimate was not yet "
                  "positive (early in training |G|^2 is too noisy)."]
    lines += ["", "## Plots", ""]
    lines += [f"- ![{caption}]({name}) {caption}" for name, caption in plots]
    plan = sweep_dir / "plan.json"
    if plan.is_file():
        from .plan import describe_plan

        lines += ["", describe_plan(read_json(plan))]
    path = sweep_dir / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n", "the report", "folder")
    return path
