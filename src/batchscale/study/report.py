"""`batchscale report DIR`: report.md and PNG plots of a sweep, every number read from the runs' outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .runs import RunResult, load_runs, pyplot, read_json


def knee(runs: list[RunResult]) -> int | None:
    """The smallest global batch past which steps to target no longer fall in proportion: where the
    step efficiency S(B0) B0 / (S(B) B) drops below one half (McCandlish et al.'s critical batch)."""
    reached = sorted((r.global_batch, r.target["step"]) for r in runs if r.target)
    if len(reached) < 2:
        return None
    b0, s0 = reached[0]
    return next((b for b, s in reached[1:] if s0 * b0 / (s * b) < 0.5), None)


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_plots(runs: list[RunResult], out: Path, knee_batch: int | None) -> list[tuple[str, str]]:
    """Returns (file name, caption) for each plot written."""
    plt = pyplot()

    plots: list[tuple[str, str]] = []

    def save(fig: Any, name: str, caption: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        plots.append((name, caption))

    by_workers: dict[int, list[RunResult]] = {}
    for r in runs:
        by_workers.setdefault(r.workers, []).append(r)

    def per_workers(ax: Any, value: Callable[[RunResult], float | None], label: str, style: str = "o-") -> None:
        for workers, group in sorted(by_workers.items()):
            points = [(r.global_batch, value(r)) for r in group if value(r) is not None]
            if points:
                xs, ys = zip(*sorted(points))
                ax.plot(xs, ys, style, label=f"{label}, {workers} worker(s)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("global batch")
        ax.legend(fontsize=8)

    fig, ax = plt.subplots(figsize=(6, 4))
    per_workers(ax, lambda r: r.summary["final_val_acc"], "final")
    per_workers(ax, lambda r: r.summary["best_val_acc"], "best", "s--")
    ax.set_ylabel("test accuracy")
    save(fig, "accuracy_vs_batch.png", "Final and best test accuracy against the global batch")

    fig, ax = plt.subplots(figsize=(6, 4))
    per_workers(ax, lambda r: r.summary["images_per_sec"], "images/s")
    ax.set_ylabel("training images/s")
    save(fig, "throughput_vs_batch.png", "Training throughput against the global batch")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    reached = sorted((r.global_batch, r.target["step"], r.target["train_seconds"]) for r in runs if r.target)
    for ax, column, label in ((axes[0], 1, "steps to target"), (axes[1], 2, "training seconds to target")):
        if reached:
            xs = [p[0] for p in reached]
            ys = [p[column] for p in reached]
            ax.plot(xs, ys, "o-", label="measured")
            ax.plot(xs, [ys[0] * xs[0] / x for x in xs], "k:", label="perfect scaling (1/B)")
            if knee_batch:
                ax.axvline(knee_batch, color="r", ls="--", label=f"knee, B={knee_batch}")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no run reached the target", ha="center", transform=ax.transAxes)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("global batch")
        ax.set_ylabel(label)
    save(fig, "time_to_target.png", "Steps and time to the target accuracy against the global batch (log-log)")

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        points = [(x["epoch"], x["noise_scale"]) for x in r.records if x.get("noise_scale") is not None]
        if points:
            ax.plot(*zip(*points), label=r.name)
    if knee_batch:
        ax.axhline(knee_batch, color="r", ls="--", label=f"measured knee B={knee_batch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("B_simple")
    ax.set_yscale("log")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    else:
        ax.text(0.5, 0.5, "no noise-scale estimate yet", ha="center", transform=ax.transAxes)
    save(fig, "noise_scale.png", "Gradient noise scale B_simple over training, against the measured knee")

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        ax.plot([x["epoch"] for x in r.records], [x["val_acc"] for x in r.records], label=r.name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=6)
    save(fig, "accuracy_curves.png", "Test accuracy per epoch, every run")
    return plots


def report(sweep_dir: str | Path) -> Path:
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir)
    knee_batch = knee(runs)
    plots = write_plots(runs, sweep_dir, knee_batch)
    target = runs[0].summary.get("target_accuracy", 0.94)
    lines = [
        f"# Batch-size study: {sweep_dir.name}",
        "",
        f"{len(runs)} runs of {runs[0].summary['config']['model']} on CIFAR-10, "
        f"{runs[0].summary['epochs_completed']} epochs each, target accuracy {target:.2f}. "
        "Every number below is read from the runs' `summary.json` (curves from `metrics.jsonl`).",
        "",
        "| run | batch/worker | workers | global batch | final acc | best acc | mean acc (last 5) | train s | images/s "
        "| steps to target | s to target | B_simple |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        s, t = r.summary, r.target or {}
        lines.append(
            f"| {r.name} | {s['config']['batch_size'] * s['config']['batches_per_allreduce']} | {r.workers}"
            f"{' (sim.)' if s.get('simulated_workers') else ''} | {r.global_batch} | {fmt(s['final_val_acc'])} "
            f"| {fmt(s['best_val_acc'])} | {fmt(r.mean_last)} | {fmt(s['train_seconds'], 1)} | {fmt(s['images_per_sec'], 1)} "
            f"| {t.get('step', '-')} | {fmt(t.get('train_seconds'), 1)} | {fmt(s.get('noise_scale'), 1)} |"
        )
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
    lines += ["", "## Plots", ""]
    lines += [f"- ![{caption}]({name}) {caption}" for name, caption in plots]
    plan = sweep_dir / "plan.json"
    if plan.is_file():
        from .plan import describe_plan

        lines += ["", describe_plan(read_json(plan))]
    path = sweep_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
