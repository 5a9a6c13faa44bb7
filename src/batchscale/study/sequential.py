"""The sequential study (issue 28): after a coarse first round (`protocol.plan_curve`), rounds of trials chosen
where they narrow B_crit's interval most per CPU-second, until that interval lies within x `precision` of the
estimate (decided) or the budget or the rounds run out (not decided, with what more would take).

Pure: `plan_round` reads the finished trials and the settings and returns the next round, each trial with the
reason it was added. `batchscale study` (study.py's curve stage) and testing/nqm.py's `sequential_study` both
run it, so the known-answer tests check the planner the study uses.

What a round adds, in this order (Shallue et al. 2019 and McCandlish et al. 2018 find the knee by measuring
well past it on both sides):
- larger batch sizes while fewer than two measured ones lie at or above 2 x the current B_crit, and smaller
  ones while fewer than two lie at or below B_crit / 4: a fit with no points past the knee leans on its
  model's shape, and its interval is open or wide;
- one LR beyond the grid where a batch's optimum sits on its edge (the optimum is then not yet found);
- then, by the delta method on the fit (each point's share of B_crit's variance: its sensitivity squared
  times the seed variance of its mean), one more seed at the batch where that narrows the interval most per
  image trained, or a new batch size one step past the range, until the predicted interval reaches the
  precision or the round is full.
A trial's cost is its images (predicted steps x B) times a per-image cost, so "per CPU-second" and "per image"
rank alike; the per-image cost turns images into the time a --budget in hours is spent against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .protocol import (DIVERGED, REACHED, Best, Fit, Interval, Trial, best_per_batch, bootstrap, cells_of, centre_after,
                       draw_scatter, fit_curve, fit_many, lr_grid, next_lr, search_limits)

Z90 = 1.6449  # the normal quantile of a 90% two-sided interval: a predicted half-width is Z90 sd in log


@dataclass(frozen=True)
class Settings:
    """What the planner may do and when it stops (study.py builds it from the study's flags)."""

    seeds: tuple[int, ...]  # every new batch size's and LR's seeds
    lr_points: int = 3
    lr_spacing: float = 2**0.5
    extend_edges: int = 2  # LRs a batch may add beyond its grid, over all rounds
    precision: float = 1.5
    rounds: int = 8  # the most rounds, the coarse first one included (1: the fixed grid alone)
    budget_images: float | None = None
    budget_seconds: float | None = None
    seconds_per_image: float | None = None  # the cost model: a trial's wall time is its images times this
    smallest: int = 1  # batch sizes a round may add: multiples of `multiple` in [smallest, largest]
    largest: int = 2**30
    multiple: int = 1
    warmup_images: int = 0  # a batch size a round adds must ramp over exactly these images too (whole steps)
    budget_steps: int = 40_000  # a trial's step budget is capped by these two
    budget_epoch_images: float = math.inf  # --budget-epochs x the training images
    margin: float = 3.0  # a new trial's step budget: this many times its predicted steps
    level: float = 0.9
    replicates: int = 1000
    round_trials: int = 16  # the most trials the greedy part adds to one round
    max_seeds: int = 8  # per (batch, LR)

    def cap(self, batch: int) -> int:
        by_images = self.budget_epoch_images / batch
        return max(1, min(self.budget_steps, math.ceil(by_images) if math.isfinite(by_images) else self.budget_steps))


@dataclass(frozen=True)
class Addition:
    batch: int
    lr: float
    seed: int
    steps: int  # its step budget
    reason: str
    images: float = field(default=0.0, compare=False)  # predicted images to its target (the cost model's)

    def record(self) -> dict[str, Any]:
        return {"batch": self.batch, "lr": self.lr, "seed": self.seed, "steps": self.steps, "reason": self.reason}


@dataclass(frozen=True)
class Plan:
    round: int  # the round `trials` make
    stop: bool
    why: str  # "decided", "rounds", "budget", "nothing to add", or "continue"
    fit: Fit | None
    interval: Interval | None
    trials: tuple[Addition, ...]  # the next round; where it stops undecided, where the next would have gone
    spent_images: float
    forecast: tuple[int, float] | None = None  # (trials, images) more the delta method predicts reach the precision
    range_ok: bool = False  # two measured B at or above 2 B_crit and two at or below B_crit / 4 (or no room for more)

    @property
    def decided(self) -> bool:
        return self.why == "decided"

    def record(self) -> dict[str, Any]:
        i = self.interval
        return {"round": self.round, "why": self.why, "estimate": self.fit and self.fit.b_noise,
                "interval_before": i and {"low": i.low if i.closed or not i.open_low else None,
                                          "high": None if i.open_high else i.high},
                "trials": [a.record() for a in self.trials]}


def trial_images(t: Trial) -> float:
    """Images a finished trial trained: to its target, or its whole budget where it missed or diverged."""
    steps = t.steps if t.status == REACHED and t.steps else (t.budget or t.steps or 0)
    return float(steps * t.batch)


def spent(trials: list[Trial]) -> float:
    return sum(trial_images(t) for t in trials)


def seconds(images: float, settings: Settings) -> float | None:
    return None if settings.seconds_per_image is None else images * settings.seconds_per_image


def within_budget(images: float, settings: Settings) -> bool:
    if settings.budget_images is not None and images > settings.budget_images:
        return False
    wall = seconds(images, settings)
    return not (settings.budget_seconds is not None and wall is not None and wall > settings.budget_seconds)


def next_seed(taken: set[int], settings: Settings) -> int:
    """The first of the study's seeds, then of the integers after its largest, that this cell has not run."""
    for seed in settings.seeds:
        if seed not in taken:
            return seed
    seed = max(settings.seeds) + 1
    while seed in taken:
        seed += 1
    return seed


def plan_round(trials: list[Trial], settings: Settings, round: int) -> Plan:
    """Round `round` (2 on) from the finished trials of every earlier round: whether the study is done, and if
    not, the trials to run next. Deterministic: the bootstrap is seeded, the candidates ordered."""
    fit = fit_curve([(b.batch, b.steps) for b in best_per_batch(trials) if b.steps is not None])  # type: ignore[misc]
    interval = bootstrap(trials, settings.replicates, seed=0, level=settings.level) if fit else None
    used = spent(trials)
    hard, range_ok = required(trials, fit, settings)
    width = interval.within(fit.b_noise) if fit and interval else math.inf
    if fit is not None and range_ok and not hard and width <= settings.precision:
        return Plan(round, True, "decided", fit, interval, (), used, None, True)
    soft, forecast = narrowing(trials, fit, interval, hard, settings)
    proposed = (*hard, *soft)
    if round > settings.rounds:
        return Plan(round, True, "rounds", fit, interval, proposed, used, forecast, range_ok)
    if not within_budget(used, settings):
        return Plan(round, True, "budget", fit, interval, proposed, used, forecast, range_ok)
    fitting, total = [], used
    for a in proposed:  # in priority order; a trial whose predicted cost does not fit is left for the forecast
        if within_budget(total + a.images, settings):
            fitting.append(a)
            total += a.images
    if not proposed:
        return Plan(round, True, "nothing to add", fit, interval, (), used, forecast, range_ok)
    if not fitting:
        return Plan(round, True, "budget", fit, interval, proposed, used, forecast, range_ok)
    return Plan(round, False, "continue", fit, interval, tuple(fitting), used, forecast, range_ok)


def measured(bests: list[Best]) -> list[int]:
    return [b.batch for b in bests if b.steps is not None]


def new_batch_grid(bests: list[Best], batch: int, settings: Settings) -> tuple[float, ...]:
    """A new batch size's LRs, centred where the best LRs of the two measured batch sizes nearest it point: their
    trend in log-log extrapolated, its exponent held between 0 (no scaling, right far above the knee) and 1
    (linear scaling, right far below it); with one measured batch, its best x sqrt(batch ratio) as plan_curve
    centres each batch on its neighbour's."""
    known = sorted((b for b in bests if b.trial is not None), key=lambda b: abs(math.log(b.batch / batch)))[:2]
    near = known[0]
    centre = centre_after(near.trial.lr, near.batch, batch)  # type: ignore[union-attr]
    if len(known) == 2 and known[1].batch != near.batch:
        other = known[1]
        power = math.log(near.trial.lr / other.trial.lr) / math.log(near.batch / other.batch)  # type: ignore[union-attr]
        centre = near.trial.lr * (batch / near.batch) ** min(1.0, max(0.0, power))  # type: ignore[union-attr]
    return lr_grid(centre, settings.lr_points, settings.lr_spacing)


def predicted_steps(fit: Fit | None, batch: int, settings: Settings) -> float:
    return fit.steps(batch) if fit is not None else float(settings.cap(batch))


def budget_for(steps: float, batch: int, settings: Settings) -> int:
    return min(settings.cap(batch), max(1, math.ceil(settings.margin * steps)))


def allowed(batch: int, settings: Settings) -> bool:
    return (settings.smallest <= batch <= settings.largest and batch % settings.multiple == 0
            and settings.warmup_images % batch == 0)


def new_batch(bests: list[Best], fit: Fit | None, batch: int, reason: str, settings: Settings) -> list[Addition]:
    steps = predicted_steps(fit, batch, settings)
    budget = budget_for(steps, batch, settings)
    # Off-optimum LRs take longer than the optimum: half as long again, on average over a x1.41 grid.
    return [Addition(batch, lr, seed, budget, reason, 1.5 * min(steps, budget) * batch)
            for lr in new_batch_grid(bests, batch, settings) for seed in settings.seeds]


def required(trials: list[Trial], fit: Fit | None, settings: Settings) -> tuple[list[Addition], bool]:
    """The trials the range and the LR grids call for, and whether the range is covered: at each end two
    measured batch sizes past the knee (2 x B_crit above it, B_crit / 4 below), or no allowed batch size left
    on that side."""
    bests = best_per_batch(trials)
    have = measured(bests)
    tried = sorted({t.batch for t in trials})
    out: list[Addition] = []
    if not have:
        return out, False
    ok = fit is not None and len(have) >= 3
    if not ok:  # no curve yet: the next larger batch size, whose steps the budget caps
        for batch in (2 * max(tried),):
            if allowed(batch, settings):
                out += new_batch(bests, None, batch, "fewer than 3 batch sizes reached the target", settings)
        return out, False
    assert fit is not None
    above = sum(b >= 2 * fit.b_noise for b in have)
    # Batch sizes tried with no trial at the target yet (their LRs are being extended) count as on their way.
    for batch in (2 * max(have), 4 * max(have))[:max(0, 2 - above)]:
        if allowed(batch, settings) and batch not in tried:
            out += new_batch(bests, fit, batch, f"larger B: {above} measured B at or above 2 x B_crit "
                             f"({2 * fit.b_noise:,.0f}), fewer than 2", settings)
            ok = False
    below = sum(b <= fit.b_noise / 4 for b in have)
    for batch in (min(have) // 2, min(have) // 4)[:max(0, 2 - below)]:
        if batch >= 1 and allowed(batch, settings) and batch not in tried:
            out += new_batch(bests, fit, batch, f"smaller B: {below} measured B at or below B_crit / 4 "
                             f"({fit.b_noise / 4:,.0f}), fewer than 2", settings)
            ok = False
    cells = cells_of(trials)
    for b in bests:
        if b.trial is None and len(b.lrs) - settings.lr_points < settings.extend_edges and any(
                t.status == DIVERGED for t in trials if t.batch == b.batch):
            # No LR reached the target and some diverged: the grid sits too high; one LR below it.
            lr = min(b.lrs) / settings.lr_spacing
            steps = predicted_steps(fit, b.batch, settings)
            budget = budget_for(steps, b.batch, settings)
            out += [Addition(b.batch, lr, seed, budget, f"LR below the grid: no LR of B = {b.batch} reached the "
                             "target, and some diverged", min(steps, budget) * b.batch) for seed in settings.seeds]
            continue
        # LRs past the batch's first grid (of lr_points) so far, over every round
        if b.steps is None or b.trial is None or len(b.lrs) - settings.lr_points >= settings.extend_edges:
            continue
        lr = next_lr(cells[b.batch], settings.lr_spacing)
        if lr is None:
            continue
        seeds = sorted({t.seed for t in trials if t.batch == b.batch and t.lr == b.trial.lr})
        steps = predicted_steps(fit, b.batch, settings)
        budget = budget_for(max(steps, b.steps), b.batch, settings)
        side = "smallest" if lr < b.trial.lr else "largest"
        out += [Addition(b.batch, lr, seed, budget, f"LR beyond the edge: B = {b.batch}'s best LR {b.trial.lr:.4g} "
                         f"is the {side} tried", min(steps, budget) * b.batch) for seed in seeds]
    return out, ok


@dataclass
class Point:
    """One batch's optimum as the delta method sees it: log steps, and how many seeds its mean has."""

    batch: int
    log_steps: float
    seeds: float
    stencil: tuple[tuple[float, float, int], ...] = ()  # (LR, mean steps, seeds) of the cells its optimum uses


def points_of(trials: list[Trial]) -> list[Point]:
    cells = cells_of(trials)
    out = []
    for b in best_per_batch(trials):
        if b.log_steps is None or b.trial is None:
            continue
        lrs = sorted(cells[b.batch])
        i = lrs.index(b.trial.lr)
        around = lrs[i - 1:i + 2] if b.fitted else [b.trial.lr]
        stencil = tuple((lr, math.exp(sum(cells[b.batch][lr]) / len(cells[b.batch][lr])),  # type: ignore[arg-type, misc]
                         len(cells[b.batch][lr])) for lr in around)
        out.append(Point(b.batch, b.log_steps, min(n for _, _, n in stencil), stencil))
    return out


def variance(points: list[Point], sd: float) -> tuple[float, np.ndarray] | None:
    """The delta method's variance of log B_crit (None where a fit runs to the search limit), and each point's
    sensitivity d log B_crit / d log S(B): central differences of the fit, all at once."""
    n, delta = len(points), 0.05
    if n < 3:
        return None
    base = np.array([p.log_steps for p in points])
    rows = np.repeat(base[None], 2 * n, axis=0)
    rows[np.arange(n), np.arange(n)] += delta
    rows[n + np.arange(n), np.arange(n)] -= delta
    batches = [p.batch for p in points]
    b_noise = fit_many(batches, rows)[0]
    lo, hi = search_limits(batches)
    if (b_noise >= hi / 2).any() or (b_noise <= 2 * lo).any():
        return None
    slope = (np.log(b_noise[:n]) - np.log(b_noise[n:])) / (2 * delta)
    return float((slope**2 * sd**2 / np.array([p.seeds for p in points])).sum()), slope


def narrowing(trials: list[Trial], fit: Fit | None, interval: Interval | None, hard: list[Addition],
              settings: Settings) -> tuple[list[Addition], tuple[int, float] | None]:
    """The greedy part of a round, and the forecast: starting from the points measured plus the required trials
    (assumed to land on the fit), add whichever of one more seed at a batch's optimum or a new batch size one
    step past the range cuts the predicted variance most per image, until the predicted half-width in log is
    within log(precision). The round takes the first `round_trials` of these beyond the required ones; the
    forecast counts them all (None: the fit is too unsettled to predict)."""
    cells = cells_of(trials)
    spread = draw_scatter(cells)
    if fit is None or spread is None:
        return [], None
    sd = spread[0]
    points = points_of(trials)
    planned_batches = {a.batch for a in hard}
    for batch in sorted(planned_batches - {p.batch for p in points}):
        points.append(Point(batch, math.log(fit.steps(batch)), len(settings.seeds)))
    points.sort(key=lambda p: p.batch)
    now = variance(points, sd)
    if now is None:
        return [], None
    var = now[0]
    # Calibrate the delta method's width to the bootstrap's where both exist: the round aims at the real thing.
    measured_var = variance(points_of(trials), sd)
    if interval is not None and interval.closed and measured_var is not None and measured_var[0] > 0:
        half = math.log(interval.within(fit.b_noise))
        scale = half / (Z90 * math.sqrt(measured_var[0]))
    else:
        scale = 1.0
    goal = math.log(settings.precision)
    taken = {(t.batch, t.lr): {s.seed for s in trials if s.batch == t.batch and s.lr == t.lr} for t in trials}
    chosen: list[Addition] = []
    forecast_trials, forecast_images = len(hard), sum(a.images for a in hard)
    bests = best_per_batch(trials)
    for _ in range(400):
        if scale * Z90 * math.sqrt(var) <= goal:
            return chosen, (forecast_trials, forecast_images)
        options = []
        for i, p in enumerate(points):
            if not p.stencil or p.seeds >= settings.max_seeds:
                continue
            images = sum(steps * p.batch for _, steps, _ in p.stencil)
            trial = [Point(q.batch, q.log_steps, q.seeds + (j == i), q.stencil) for j, q in enumerate(points)]
            after = variance(trial, sd)
            if after is not None:
                options.append(((var - after[0]) / images, "seed", i, trial, after[0], images))
        for batch, reason in ((2 * points[-1].batch, "larger B: narrows the interval most per image"),
                              (points[0].batch // 2, "smaller B: narrows the interval most per image")):
            if batch < 1 or not allowed(batch, settings):
                continue
            extra = sorted([*points, Point(batch, math.log(fit.steps(batch)), len(settings.seeds))],
                           key=lambda q: q.batch)
            after = variance(extra, sd)
            images = 1.5 * settings.lr_points * len(settings.seeds) * fit.steps(batch) * batch
            if after is not None:
                options.append(((var - after[0]) / images, reason, batch, extra, after[0], images))
        options = [o for o in options if o[0] > 0]
        if not options:
            return chosen, None
        gain, kind, where, points, var, images = max(options, key=lambda o: o[0])
        if kind == "seed":
            p = points[where]
            adds = []
            for lr, steps, _ in p.stencil:
                seeds = taken.setdefault((p.batch, lr), set())
                seed = next_seed(seeds, settings)
                seeds.add(seed)
                adds.append(Addition(p.batch, lr, seed, budget_for(max(steps, fit.steps(p.batch)), p.batch, settings),
                                     f"more seeds: B = {p.batch}'s scatter is the largest share of the interval "
                                     "per image", steps * p.batch))
            points[where] = Point(p.batch, p.log_steps, p.seeds, tuple((lr, s, n + 1) for lr, s, n in p.stencil))
        else:
            batch = where
            adds = [] if batch in planned_batches else new_batch(bests, fit, batch, kind, settings)
            planned_batches.add(batch)
        forecast_trials += len(adds)
        forecast_images += sum(a.images for a in adds)
        if len(chosen) + len(adds) <= settings.round_trials or not chosen:
            chosen += adds
    return chosen, None
