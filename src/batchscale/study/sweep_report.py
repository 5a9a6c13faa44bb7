"""`batchscale report DIR`: report.md and PNG plots of a sweep, every number read from the runs' outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from .runs import MEAN_LAST, RunResult, Unfinished, load_runs, load_unfinished, positive, pyplot, read_json
from .sweep import planned_runs


def knee(runs: list[RunResult]) -> int | None:
    """The smallest global batch past which steps to target no longer fall in proportion: where the
    step efficiency S(B0) B0 / (S(B) B) drops below one half (McCandlish et al.'s critical batch)."""
    reached = sorted((r.global_batch, r.target["step"]) for r in runs if r.target)
    if len(reached) < 2:
        return None
    b0, s0 = reached[0]
    return next((b for b, s in reached[1:] if s0 * b0 / (s * b) < 0.5), None)


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
    return f"{model}, {shown} epoch(s){subset}, {config['lr_schedule']} LR, {config['lr_scaling']} scaling"


def write_plots(runs: list[RunResult], out: Path, knee_batch: int | None,
                unfinished: list[Unfinished] = ()) -> list[tuple[str, str]]:  # type: ignore[assignment]
    """Returns (file name, caption) for each plot written; a plot with nothing to show is not drawn."""
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
        for workers, group in sorted(by_workers.items()):
            points = [(r.global_batch, value(r)) for r in group if value(r) is not None]
            if points:
                xs, ys = zip(*sorted(points))
                ax.plot(xs, ys, color=colours[workers], label=f"{label}, {workers} worker(s)", **style)
        batch_axis(ax)
        ax.legend(fontsize=8)

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
    save(fig, "accuracy_vs_batch.png", f"Final test accuracy and {picked} against the global batch"
         + ("; runs that did not finish marked on the axis" if unfinished else ""))

    fig, ax = plt.subplots(figsize=(6, 4))
    per_workers(ax, lambda r: r.summary["images_per_sec"], "images/s", marker="o")
    ax.set_ylabel("training images/s")
    save(fig, "throughput_vs_batch.png", "Training throughput against the global batch")

    reached = sorted((r.global_batch, r.target["step"], r.target["train_seconds"]) for r in runs if r.target)
    if reached:
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
        save(fig, "time_to_target.png", "Steps and time to the target accuracy against the global batch (log-log)")

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
    for r in runs:
        ax.plot([x["epoch"] for x in r.records], [x["val_acc"] for x in r.records], marker=".", label=r.name)
    epoch_axis(ax)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=6)
    save(fig, "accuracy_curves.png", "Test accuracy per epoch, every run")
    for stale in {"time_to_target.png", "noise_scale.png"} - {name for name, _ in plots}:
        (out / stale).unlink(missing_ok=True)  # an earlier report's plot would show what no longer holds
    return plots


def report(sweep_dir: str | Path) -> Path:
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir, allow_empty=True)
    unfinished = load_unfinished(sweep_dir, planned_runs(sweep_dir))
    if not runs and not unfinished:
        load_runs(sweep_dir)  # its one-line error: nothing here to report
    knee_batch, picked = knee(runs), best_name(runs)
    plots = write_plots(runs, sweep_dir, knee_batch, unfinished)
    if runs:
        target = runs[0].summary.get("target_accuracy", 0.94)
        about = (f"{len(runs)} finished runs of {runs[0].summary['config']['model']} on CIFAR-10, "
                 f"{runs[0].summary['epochs_completed']} epochs each, target accuracy {target:.2f}. ")
    else:
        about = "No run finished. "
    if unfinished:
        counts = {status: sum(u.status == status for u in unfinished) for status in dict.fromkeys(u.status for u in unfinished)}
        about += f"Did not finish: {', '.join(f'{n} {status}' for status, n in counts.items())} (listed below the table). "
    last = min(MEAN_LAST, max((r.summary["epochs_completed"] for r in runs), default=1))
    lines = [
        f"# Batch-size study: {sweep_dir.name}",
        "",
        about + "Every number below is read from the runs' `summary.json` (curves from `metrics.jsonl`).",
        "",
        f"| run | batch/worker | workers | global batch | final acc | {picked} | mean acc (last {last}) | train s | images/s "
        "| steps to target | s to target | B_simple |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        s, t = r.summary, r.target or {}
        lines.append(
            f"| {r.name} | {s['config']['batch_size'] * s['config']['batches_per_allreduce']} | {r.workers}"
            f"{' (sim.)' if s.get('simulated_workers') else ''} | {r.global_batch} | {fmt(s['final_val_acc'])} "
            f"| {fmt(s['best_val_acc'])}{MIXED_MARK * (held_out(r) and picked == MIXED)} | {fmt(r.mean_last)} "
            f"| {fmt(s['train_seconds'], 1)} | {fmt(s['images_per_sec'], 1)} "
            f"| {t.get('step', '-')} | {fmt(t.get('train_seconds'), 1)} | {positive(s.get('noise_scale'), 1)} |"
        )
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
    if not any(r.target for r in runs):
        lines += ["", f"No run reached the target accuracy {target:.2f}, so there is no time-to-target plot."]
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
