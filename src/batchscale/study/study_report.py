"""A study's report: report.md, results.json and plots, every number read from the trial folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic, write_text_atomic
from .paper import paper_results, paper_section, pct
import math

from .study import (CHECK_MOMENTUM, MAX_SEEDS_TEXT, StudyConfig, paper_plan, read_rounds, read_trials, seconds_per_image,
                    sequential_settings, tuned_lrs, unfinished_trials)
from .protocol import MISSED, REACHED, Analysis, Interval, Trial, analyze, best_per_batch, cells_of, scatter
from .sequential import Plan, plan_round, spent
from .sweep import clock
from .runs import positive, pyplot


# How often the 90% interval held the truth on the noisy quadratic with a known knee, for the one design measured
# (benchmarks/study_truth.py, tests/integration/test_study_truth.py): the sequential study, 2 seeds, 3 LRs a batch,
# rounds until x1.5. A study of another design gets no such sentence: a coverage measured for one design says
# little of another (fewer seeds, a fixed grid, a wider precision).
CALIBRATED = {"seeds": 2, "lr_points": 3, "precision": 1.5, "held": 28, "studies": 32, "median": -0.09}


def interval_lines(interval: Interval | None, config: StudyConfig) -> list[str]:
    """What the interval carries, and how far its coverage was checked for this design."""
    if interval is None:
        return []
    if interval.scatter_from == "fit":
        carries = ("- With one seed no seed scatter is measured: the interval draws from the fit's residuals about the "
                   "curve instead, which mixes seed noise with how far S(B) is from its model; --seeds 1,2 measures "
                   "the scatter.")
    else:
        carries = (f"- The interval carries the trials' seed-to-seed scatter ({100 * interval.scatter:.0f}% in steps "
                   "to target, standard deviation, pooled), drawn anew for every (batch, LR) with the batch sizes as "
                   "measured.")
    return [carries, calibration_line(config)]


def calibration_line(config: StudyConfig) -> str:
    c = CALIBRATED
    design = (f"{len(config.seeds)} seeds, {config.lr_points} LRs a batch, "
              + (f"rounds until x{config.precision:g}" if config.rounds > 1 else "the fixed grid alone (--rounds 1)"))
    if (len(config.seeds), config.lr_points) == (c["seeds"], c["lr_points"]) and config.rounds > 1 \
            and config.precision <= c["precision"]:
        return (f"- Calibration of this design ({design}): on a noisy quadratic with a known knee, 90% intervals held "
                f"the truth in {c['held']} of {c['studies']} studies, their misses from the protocol's low lean "
                f"(median {100 * c['median']:+.0f}%; benchmarks/study_truth.py).")
    return (f"- How often such an interval holds the truth was not measured for this design ({design}); it was for "
            f"{c['seeds']} seeds, {c['lr_points']} LRs a batch, rounds until x{c['precision']:g} "
            f"({c['held']} of {c['studies']}): benchmarks/study_truth.py measures a design on the noisy quadratic.")


def fixed_settings_lines(out: Path, trials: list[Trial], config: StudyConfig) -> list[str]:
    """What every trial shares besides the LR, said, and what the momentum check found where it ran."""
    first = trials[0].extra if trials else {}
    momentum, wd = first.get("momentum"), first.get("wd")
    if momentum is None:
        return []
    kind = "Nesterov " if first.get("nesterov") else ""
    lines = [f"- Momentum ({kind}{momentum:g}) and weight decay ({wd:g}) are the same at every B, not tuned. Shallue "
             "et al. tune momentum with the LR: a fixed momentum can cost large batches more, which would bias B_crit "
             "low." + ("" if config.momentum_check else f" --momentum-check runs the two largest B again at "
                                                          f"{CHECK_MOMENTUM:g} to see.")]
    if not config.momentum_check:
        return lines
    return lines + momentum_lines(trials, read_trials(out, strict=False, stage="momentum"), momentum,
                                  len(config.seeds))


def momentum_lines(trials: list[Trial], checked: list[Trial], momentum: float, seeds: int) -> list[str]:
    """Per checked batch: the optimum's steps at CHECK_MOMENTUM against the curve's, judged against the seeds'
    pooled scatter (two optima, each a mean of `seeds` seeds: their difference's sd is scatter x sqrt(2 / seeds))."""
    curve = {b.batch: b for b in best_per_batch(trials)}
    spread = scatter(cells_of(trials + checked))
    lines = []
    for best in best_per_batch(checked):
        base = curve.get(best.batch)
        if base is None or base.log_steps is None:
            continue
        if best.log_steps is None or best.trial is None:
            lines.append(f"  - B = {best.batch}: at momentum {CHECK_MOMENTUM:g} no LR reached the target "
                         f"({len(best.lrs)} tried).")
            continue
        change = best.log_steps - base.log_steps
        noise = spread[0] * math.sqrt(2 / max(1, seeds)) if spread else None
        if noise is None:
            verdict = "no seed scatter to judge it by"
        elif change < -2 * noise:
            verdict = ("faster beyond twice the seeds' scatter: the fixed momentum held this batch back, so B_crit "
                       "above reads low")
        elif change > 2 * noise:
            verdict = "slower beyond twice the seeds' scatter"
        else:
            verdict = f"within twice the seeds' scatter ({100 * noise:.0f}% in log steps): no sign of a bias here"
        lines.append(f"  - B = {best.batch}: at momentum {CHECK_MOMENTUM:g} the optimum is {best.steps:,.0f} steps "
                     f"(best LR {best.trial.lr:.4g}{', edge' if best.at_edge else ''}) against {base.steps:,.0f} at "
                     f"{momentum:g}: x{math.exp(change):.2f}, {verdict}.")
    return lines


def num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def draw_fit(ax: Any, trials: list[Trial], analysis: Analysis, plan: Plan | None, per_step: bool) -> None:
    """The fitted curve, the knee, its interval (an open end shaded to the plot's edge) and where the next round
    goes (or would have gone), over steps or examples to target."""
    fit = analysis.fit
    assert fit is not None
    grid = [min(t.batch for t in trials) * 2 ** (i / 8) for i in range(1 + 8 * len(analysis.bests))]
    grid = [g for g in grid if g <= max(t.batch for t in trials) * 1.01]
    ax.plot(grid, [fit.steps(g) * (1 if per_step else g) for g in grid], "C1-", label=f"fit: B_crit = {fit.b_noise:,.0f}")
    ax.axvline(fit.b_noise, color="C3", ls="--", lw=1, label="knee (B_crit)")
    if analysis.interval:
        i = analysis.interval
        high = i.high if not i.open_high else max(t.batch for t in trials) * 4  # open: shaded to the edge
        ax.axvspan(max(i.low, min(t.batch for t in trials) / 4), high, color="C3", alpha=0.1,
                   label="90% interval" + (" (open)" if not i.closed else ""))
    if plan is not None and plan.trials:
        nxt = sorted({a.batch for a in plan.trials})
        ax.scatter(nxt, [fit.steps(b) * (1 if per_step else b) for b in nxt], marker="^", s=60, facecolors="none",
                   edgecolors="C2", zorder=4, label="next round" + ("" if not plan.stop else " (had it run)")
                   + ": B it adds to")


def write_plots(out: Path, trials: list[Trial], analysis: Analysis, title: str = "",
                plan: Plan | None = None) -> list[tuple[str, str]]:
    """Returns (file name, caption) for each plot written; every plot is titled with what the study ran."""
    plt = pyplot()
    from matplotlib.ticker import ScalarFormatter

    plots: list[tuple[str, str]] = []
    fit = analysis.fit
    reached = [b for b in analysis.bests if b.trial is not None]
    for name, per_step in (("steps_vs_batch.png", True), ("examples_vs_batch.png", False)):
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        value = (lambda t, steps: steps) if per_step else (lambda t, steps: steps * t.batch)
        for status, marker, label in ((REACHED, ".", "trial (reached)"), (MISSED, "x", "missed: at its budget"),
                                      ("diverged", "v", "diverged")):
            pts = [(t.batch, value(t, t.steps if t.steps else t.budget or 0)) for t in trials if t.status == status]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, color="0.6", s=20, label=label, zorder=2)
        if reached:
            xs = [b.batch for b in reached]
            ys = [value(b.trial, b.steps) for b in reached]
            ax.plot(xs, ys, "o", color="C0", label="best LR per batch", zorder=3)
            b0, y0 = xs[0], ys[0]
            ax.plot(xs, [y0 * b0 / x if per_step else y0 for x in xs], "k:", label="perfect scaling")
        if fit is not None:
            draw_fit(ax, trials, analysis, plan, per_step)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_yscale("log")
        ax.set_xlabel("global batch B")
        ax.set_ylabel("steps to target" if per_step else "examples to target")
        ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        plots.append((name, "Steps to target against the batch size: every trial, the best LR per batch, the fit "
                      "S_min (1 + B_crit / B), perfect scaling through the smallest batch, and the knee" if per_step
                      else "Examples to target: E_min (1 + B / B_crit); flat is perfect scaling"))
    at_target = {b: v for b, v in analysis.b_simple.items() if v is not None and v > 0}
    curves = {b.batch: [(x, v) for x, v in b.trial.b_simple_curve if v > 0] for b in reached
              if b.trial is not None and b.trial.b_simple_curve}
    curves = {batch: points for batch, points in curves.items() if points}
    panels = [kind for kind, has in (("at target", at_target), ("over training", curves)) if has]
    if panels:  # no empty frame: a panel only where there is something to draw
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, kind in zip(axes[0], panels):
            if kind == "at target":
                xs = sorted(at_target)
                ax.plot(xs, [at_target[x] for x in xs], "o-", label="B_simple at the target (best LR's probes)")
                if fit is not None:
                    ax.axhline(fit.b_noise, color="C3", ls="--", label=f"measured B_crit {fit.b_noise:,.0f}")
                ax.set_xscale("log", base=2)
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.set_xlabel("global batch B")
            else:
                for batch, points in sorted(curves.items()):
                    ax.plot(*zip(*points), label=f"B={batch}")
                ax.set_xscale("log")
                ax.set_xlabel("training examples")
            ax.set_yscale("log")
            ax.set_ylabel("B_simple")
            ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "b_simple.png", dpi=110)
        plt.close(fig)
        plots.append(("b_simple.png", "B_simple per batch size at the target (the best LR's fixed-weights probes, "
                      "pooled over seeds), and over training (averaged until then) for each batch's best trial"))
    else:
        (out / "b_simple.png").unlink(missing_ok=True)  # an earlier report's plot would show what no longer holds
    return plots


def write_report(out: Path, config: StudyConfig) -> Path:
    trials = read_trials(out)
    analysis = analyze(trials)
    paper = paper_results(out, paper_plan(config), tuned_lrs(trials)) if config.paper else []
    fit, interval = analysis.fit, analysis.interval
    plan = plan_round(trials, sequential_settings(config, trials), max(2, len(read_rounds(out)) + 1)) if trials else None
    lines = [
        f"# Critical batch size: ResNet-18 (width {config.width}) on CIFAR-10, target {100 * config.target:g}% "
        "held-out accuracy", "",
        *([headline(plan, analysis, config, trials), ""] if plan is not None else []),
        f"Protocol: batch sizes in ascending order, each with {config.lr_points} LRs spaced x{config.lr_spacing:.4g}, "
        f"the smallest's centred on {config.lr_per_128:g} x B/128 and each next one's on its neighbour's best LR x "
        f"sqrt(batch ratio), extended one LR at a time (up to {config.extend_edges}) while the best is on the edge; "
        f"warmup from 0 over {config.warmup_images:,} images at every B, then {config.schedule} LR; every B "
        f"accumulated from micro-batches of {config.micro} (batch norm's batch and B_simple's small batch); each trial "
        f"stops at the first evaluation of {config.holdout} held-out training images at or above the target "
        f"(evaluations {100 * (config.eval_growth - 1):g}% apart near it), within min({config.budget_steps} steps, "
        f"{config.budget_epochs:g} epochs). Seeds: {', '.join(map(str, config.seeds))}.", "",
        "## The answer", "",
    ]
    if fit is not None:
        spread = (f" (90% interval {interval.text()}, with the measured batch sizes fixed; "
                  f"{interval.replicates} replicates)" if interval else " (too few points for an interval)")
        lines += [f"- **B_crit = {fit.b_noise:,.0f}**{spread}: S(B) = {fit.s_min:,.0f} (1 + {fit.b_noise:,.0f}/B) "
                  f"steps, E(B) = {fit.e_min:,.0f} (1 + B/{fit.b_noise:,.0f}) examples; the fit is off by "
                  f"{100 * fit.rms_log_error:.0f}% (rms) from the measured points."]
    else:
        lines += ["- No fit: fewer than 3 batch sizes reached the target."]
    if interval is not None and interval.leave_one_out is not None:
        low, high = interval.leave_one_out
        lines += [f"- Leaving out one batch size at a time moves B_crit between {low:,.0f} and "
                  f"{'no upper bound' if high == float('inf') else f'{high:,.0f}'}: how much the answer hangs on "
                  "which batch sizes were measured (not part of the interval above)."]
    lines += ["- What each number estimates: B_crit is the knee of S(B) = S_min (1 + B_crit / B) fitted to each "
              "batch's optimum, McCandlish et al.'s B_crit, which they find near B_noise = tr(H Sigma) / (G^T H G); "
              "B_simple = tr(Sigma) / |G|^2 leaves out the curvature H and equals B_noise only where Sigma is "
              "proportional to H. On a noisy quadratic where it is not (testing/nqm.py) the study finds the knee of "
              "S(B), not B_simple."]
    lines += comparison_lines(analysis)
    lines += interval_lines(interval, config)
    lines += fixed_settings_lines(out, trials, config)
    if config.schedule == "linear":
        lines += ["- Caveat: each trial's LR decays to 0 at the end of its budget, so its steps to target also depend "
                  "on that budget (Shallue et al. tune the decay length too); --lr-schedule constant, with a target a "
                  "constant LR reaches, measures without it."]
    edges = [b.batch for b in analysis.bests if b.at_edge]
    if edges:
        lines += [f"- The best LR sits at the edge of its grid for B = {', '.join(map(str, edges))}: a wider grid "
                  "might reach the target in fewer steps there."]
    unfinished = unfinished_trials(out)
    if unfinished:
        lines += [f"- {len(unfinished)} trial(s) have no result (still running, stopped or failed; rerun the study to "
                  f"finish them), so the answer above leaves them out: {', '.join(unfinished)}."]
    never = [b.batch for b in analysis.bests if b.trial is None]
    if never:
        lines += [f"- No LR reached the target within the budget for B = {', '.join(map(str, never))}."]
    coarse = [t for t in trials if t.resolution and t.resolution > config.eval_growth and t.steps - t.previous_eval > 1]
    if coarse:
        lines += [f"- {len(coarse)} reached trial(s) have steps known only within x{max(t.resolution for t in coarse):.2f}"  # type: ignore[type-var]
                  " (the accuracy jumped past the fine-evaluation band between two quick looks)."]
    lines += ["", "## Steps to target per batch size", "",
              "Steps at the optimum are what the fit uses: the minimum of the parabola in log LR through the best LR "
              "and its neighbours (marked *), or else the geometric mean of the best LR's seeds.", "",
              "| B | best LR | steps at the optimum | examples | each seed at the best LR | trials missed | B_simple |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for b in analysis.bests:
        t, tried = b.trial, f"{b.missed}/{len(b.lrs) * len(config.seeds)}"
        if t is None or b.steps is None:
            lines.append(f"| {b.batch} | none reached | - | - | - | {tried} | - |")
            continue
        edge = " (edge)" if b.at_edge else ""
        seeds = " / ".join(num(s.steps) for s in sorted(trials, key=lambda s: s.seed)
                           if s.batch == b.batch and s.lr == t.lr)
        lines.append(f"| {b.batch} | {t.lr:.4g}{edge} | {b.steps:,.0f}{'*' if b.fitted else ''} | "
                     f"{b.steps * b.batch:,.0f} | {seeds} | {tried} | {positive(analysis.b_simple.get(b.batch), 0)} |")
    lines += ["", "## Every trial", "", "Steps are where the held-out score crosses the target, interpolated (linear in "
              "log step) between the last evaluation below it and the first at or above it; the true step lies in "
              "(previous evaluation, first at the target].", "",
              "| B | LR | seed | outcome | steps | known within | budget | best held-out acc | train s |",
              "|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for t in sorted(trials, key=lambda t: (t.batch, t.lr, t.seed)):
        known = f"({t.previous_eval}, {t.extra.get('looked_at') or num(t.steps)}]" if t.steps else "-"
        lines.append(f"| {t.batch} | {t.lr:.4g} | {t.seed} | {t.status} | {num(t.steps)} | {known} | {num(t.budget)} | "
                     f"{pct(t.best_acc)} | {num(t.extra.get('train_seconds'))} |")
    subset = f", {config.train_subset} training images" if config.train_subset else ""
    title = (f"ResNet-18 width {config.width}, target {100 * config.target:g}% on {config.holdout} held-out images"
             f"{subset}, {config.schedule} LR, seeds {','.join(map(str, config.seeds))}")
    plots = write_plots(out, trials, analysis, title, plan) if trials else []
    lines += ["", "## Plots", ""] + [f"![{caption}]({name})\n\n{caption}.\n" for name, caption in plots]
    if paper:
        lines += paper_section(paper, paper_plan(config))
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    write_json_atomic(out / "results.json", results_record(config, analysis, plan, trials, paper, unfinished))
    return out / "report.md"


def results_record(config: StudyConfig, analysis: Analysis, plan: Plan | None, trials: list[Trial],
                   paper: list[dict[str, Any]], unfinished: list[str]) -> dict[str, Any]:
    """results.json: every figure the report states, and every trial."""
    fit, interval = analysis.fit, analysis.interval
    return {
        "config": {k: v for k, v in vars(config).items() if k not in ("train_args", "_images")},
        "fit": fit and {"b_crit": fit.b_noise, "s_min": fit.s_min, "e_min": fit.e_min, "rms_log_error": fit.rms_log_error},
        "interval": interval and {"low": interval.low, "high": interval.high, "replicates": interval.replicates,
                                  "scatter": interval.scatter},
        "interval_open": interval and {"low": interval.open_low, "high": interval.open_high},
        "leave_one_out": interval and interval.leave_one_out and list(interval.leave_one_out),
        "decision": plan and {"why": plan.why, "decided": plan.decided, "precision": config.precision,
                              "trials": len(trials), "images": spent(trials), "forecast": plan.forecast,
                              "next": [a.record() for a in plan.trials]},
        "b_simple_at_target": analysis.b_simple,  # per batch: its best LR's probes pooled over seeds
        "b_simple_per_batch": {b: {"b_simple": p.b_simple, "low": p.low, "high": p.high if p.bounded else None,
                                   "pairs": p.pairs} for b, p in analysis.b_simple_pooled.items()},
        "comparison": analysis.comparison and {**vars(analysis.comparison), "batches": analysis.compared,
                                               "high": analysis.comparison.high if analysis.comparison.bounded
                                               else None,  # null: unbounded
                                               "agrees": analysis.comparison.agrees},
        "best": [{"batch": b.batch, "lr": b.trial and b.trial.lr, "steps": b.steps, "fitted": b.fitted,
                  "at_edge": b.at_edge, "missed": b.missed, "lrs": b.lrs} for b in analysis.bests],
        "trials": [{"batch": t.batch, "lr": t.lr, "seed": t.seed, "status": t.status, "steps": t.steps,
                    "previous_eval": t.previous_eval, "budget": t.budget, "best_acc": t.best_acc,
                    "b_simple": t.b_simple, "b_simple_se": t.b_simple_se, **t.extra} for t in trials],
        "paper": paper,
        "unfinished": unfinished,
    }


def bracket(interval: Interval | None) -> str:
    if interval is None:
        return "[no interval]"
    low = "open" if interval.open_low else f"{interval.low:,.0f}"
    return f"[{low}, {'open' if interval.open_high else f'{interval.high:,.0f}'}]"


def headline(plan: Plan, analysis: Analysis, config: StudyConfig, trials: list[Trial]) -> str:
    """The answer in one sentence: B_crit with its interval, decided or not at --precision after how many trials
    and how long, and B_crit / B_simple with its verdict."""
    fit = analysis.fit
    per = seconds_per_image(config, trials)
    images = spent(trials)
    took = f"~{clock(images * per)}" if per else f"{images / 1e6:.2f}M images"
    if fit is None:
        return f"**B_crit: no fit yet (fewer than 3 batch sizes reached the target) after {len(trials)} trials.**"
    head = f"**B_crit = {fit.b_noise:,.0f} {bracket(analysis.interval)}, "
    if plan.decided:
        head += f"decided at x{config.precision:g} after {len(trials)} trials in {took}"
    else:
        why = {"rounds": f"--rounds {config.rounds} reached", "budget": f"--budget {config.budget} spent",
               "continue": "the study has more rounds to run"}.get(plan.why, plan.why)
        i = analysis.interval
        ends = f"x{i.low / fit.b_noise:.2f} / x{i.high / fit.b_noise:.2f}" if i is not None and i.closed else "open"
        head += f"not decided at x{config.precision:g} after {len(trials)} trials in {took} ({why}): the interval is {ends}"
        if plan.forecast is not None:
            n, more = plan.forecast
            head += (f"; about {n} more trials (~{clock(more * per) if per else f'{more / 1e6:.1f}M images'}) "
                     f"would reach x{config.precision:g}")
        else:
            head += f"; by the planner's estimate not even {MAX_SEEDS_TEXT} would reach x{config.precision:g}"
    c = analysis.comparison
    if c is None or c.ratio is None:
        return head + "; no B_simple to compare.**"
    if c.ratio_low is None or c.ratio_high is None:
        return head + f"; B_crit / B_simple = {c.ratio:.2f} (no interval).**"
    verdict = "they agree" if c.agrees else ("B_crit is larger" if c.ratio_low > 1 else "B_crit is smaller")
    high = "open" if c.ratio_high == float("inf") else f"{c.ratio_high:.2f}"
    return head + f"; B_crit / B_simple = {c.ratio:.2f} [{c.ratio_low:.2f}, {high}]: {verdict}.**"


def answer(results: dict) -> str:
    """The study's answer in one sentence, from what results.json records: B_crit and its interval, or why there
    is none (and what would give one)."""
    fit, interval = results.get("fit"), results.get("interval")
    unfinished = len(results.get("unfinished") or [])
    pending = f"; {unfinished} trial(s) have no result yet (rerun the same command)" if unfinished else ""
    if (results.get("config") or {}).get("preset") == "smoke":
        pending += " (a smoke study, not a measurement: --preset cpu tunes the LR and measures the seeds' scatter)"
    best = results.get("best") or []
    if fit is not None:
        spread = (f", 90% interval {size(interval['low'])} to {size(interval['high'])}" if interval else
                  ", no interval (too few batch sizes reached the target for the bootstrap)")
        batches = [b["batch"] for b in best] or [fit["b_crit"]]
        if interval and (interval["low"] < min(batches) / 100 or interval["high"] > 100 * max(batches)):
            # Replicates at the fit's search bounds: steps to target that do not fall with B, or barely, leave the
            # knee anywhere; said, not shown as if it were a measurement.
            spread += f", which the batch sizes measured ({min(batches)} to {max(batches)}) do not bound"
        return f"B_crit = {size(fit['b_crit'])}{spread}{pending}"
    reached = [b["batch"] for b in best if b.get("steps") is not None]
    missed = [b["batch"] for b in best if b.get("steps") is None]
    why = (f"no LR reached the target within the budget at B = {', '.join(map(str, missed))}; a lower --target or a "
           "larger budget gives a fit" if missed else "a fit needs 3 batch sizes: give more --batch-sizes")
    return f"no B_crit: {len(reached)} of {len(best)} batch sizes reached the target (a fit needs 3); {why}{pending}"


def size(value: float) -> str:
    """A batch size as fitted: whole above 10, two significant digits below (an interval's end near 0 is not 0)."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def closing_line(report: Path) -> str:
    """What `batchscale study` ends with: its answer and where the report is, once. The answer is the report's own
    first sentence (`headline`) where it has one, so the two never say different things."""
    results = json.loads(report.with_name("results.json").read_text())
    said = next((line.strip("*") for line in report.read_text().splitlines() if line.startswith("**B_crit")), None)
    if said is None or results.get("fit") is None:
        return f"{answer(results)}; the report: {report}"
    smoke = (" (a smoke study, not a measurement: --preset cpu tunes the LR and measures the seeds' scatter)"
             if (results.get("config") or {}).get("preset") == "smoke" else "")
    return f"{said.rstrip('.')}{smoke}; the report: {report}"


def comparison_lines(analysis: Analysis) -> list[str]:
    """B_simple beside B_crit, each with its uncertainty and what it estimates; a word of agreement only where the
    ratio's interval holds 1, and an unbounded interval said to be one."""
    c = analysis.comparison
    if c is None:
        return ["- No B_simple to compare: no best trial ran the fixed-weights probe (--noise-probe; trials from "
                "before it have none)."]
    where = (f"every fixed-weights probe pair ({c.pairs:,.0f}) of the best LR's trials at B = "
             f"{', '.join(map(str, analysis.compared))}, every seed, taken at each trial's target (or budget's end) "
             "and summed before dividing")
    meaning = ("B_simple = tr(Sigma) / |G|^2 is McCandlish et al.'s simple noise scale; B_crit is the fitted knee of "
               "steps to target, which they predict to be B_noise = tr(H Sigma) / G^T H G; the two noise scales "
               "coincide only where the Hessian is close to a multiple of the identity")
    if c.b_simple is None:
        return [f"- B_simple: not resolved (the pooled |G|^2 is not positive) from {where}; {meaning}."]
    span = (f"90% interval {c.low:,.0f} to {c.high:,.0f}" if c.bounded else
            f"90% interval from {c.low:,.0f}, unbounded above: |G|^2 is not resolved from zero")
    what = f"- B_simple = {c.b_simple:,.0f} ({span}, Fieller): from {where}. {meaning}."
    if c.ratio is None:
        return [what]
    if c.ratio_low is None:
        return [what, f"- B_crit / B_simple = {c.ratio:.2f} (no interval: B_crit has none)."]
    verdict = ("the two agree within their uncertainty" if c.agrees else
               f"B_crit is {'below' if c.ratio_high < 1 else 'above'} B_simple beyond their uncertainty")  # type: ignore[operator]
    return [what, f"- B_crit / B_simple = **{c.ratio:.2f}** (90% interval {c.ratio_low:.2f} to {c.ratio_high:.2f}): "
            f"{verdict}."]
