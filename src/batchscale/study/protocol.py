"""The critical-batch protocol's arithmetic (Shallue et al. 2019; McCandlish et al. 2018), apart from any
training: the LR grid per batch and the curve's plan (`plan_curve`), the best trial per batch, the fit of steps and examples to target, its
bootstrap interval, and B_simple's prediction beside the measured critical batch.

Every trial counts: one that missed its target within its budget, or diverged, stays in the results
(with why), and a batch whose best LR sits at the edge of its grid is flagged, since a wider grid might
have found a faster one.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from ..noise import Pooled, pool

REACHED, MISSED, DIVERGED = "reached", "missed", "diverged"


def lr_grid(guess: float, points: int, spacing: float) -> tuple[float, ...]:
    """`points` LRs, each `spacing` times the last, centred (in log) on `guess`."""
    return tuple(guess * spacing ** (i - (points - 1) / 2) for i in range(points))


def centre_after(best_lr: float, batch: int, next_batch: int) -> float:
    """The next batch size's grid centre from its neighbour's best LR: scaled by the square root of the batch
    ratio, halfway (in log) between linear scaling, right far below the critical batch, and none, right far
    above it; the grid and its extension cover the rest."""
    return best_lr * math.sqrt(next_batch / batch)


def next_lr(cells: Cells, spacing: float) -> float | None:
    """Where one batch size's best LR is the smallest or largest tried (Shallue et al.: then it may not be the
    best), the LR one spacing beyond it; else None."""
    lr, _, at_edge, _ = optimum(cells)
    if lr is None or not at_edge:
        return None
    return lr / spacing if lr == min(cells) else lr * spacing


@dataclass(frozen=True)
class Trial:
    """One (batch, LR, seed) trial's outcome, however it ran (a training run's summary, or a model problem)."""

    batch: int
    lr: float
    seed: int
    status: str  # REACHED, MISSED (budget spent) or DIVERGED
    steps: float | None  # the target's crossing, interpolated in (previous_eval, first evaluation at the target]
    previous_eval: int | None = None
    budget: int | None = None  # steps allowed
    best_acc: float | None = None
    b_simple: float | None = None  # B_simple when the target was reached (or at the end)
    b_simple_curve: tuple[tuple[float, float], ...] = ()  # (examples, B_simple) over training
    b_simple_se: float | None = None  # its standard error, from the scatter of the pairs it averaged
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    noise_sums: tuple[float, ...] | None = None  # the fixed-weights probe's raw sums at the end (noise.SUMS)

    @property
    def examples(self) -> int | None:
        return None if self.steps is None else self.steps * self.batch

    @property
    def resolution(self) -> float | None:
        return self.steps / self.previous_eval if self.steps and self.previous_eval else None


@dataclass(frozen=True)
class Best:
    batch: int
    trial: Trial | None  # the best LR's median-seed trial; None: no LR reached the target
    lrs: tuple[float, ...]
    at_edge: bool  # the best LR is the smallest or largest tried
    missed: int  # trials of this batch that did not reach the target (missed or diverged)
    log_steps: float | None = None  # log steps to target at the optimum (see `optimum`)
    fitted: bool = False  # log_steps is a parabola's minimum, not the best LR's mean

    @property
    def steps(self) -> float | None:
        return None if self.log_steps is None else math.exp(self.log_steps)


Cells = dict[float, list[float | None]]  # LR -> each seed's log steps to target (None: missed or diverged)


def optimum(cells: Cells) -> tuple[float | None, float | None, bool, bool]:
    """(best LR, log steps at the optimum, at the grid's edge, fitted) for one batch size.

    The best LR is the one whose seeds all reached the target in the fewest steps (the mean of their logs).
    Where both its neighbours' seeds reached it too, the steps come from the parabola in log LR through the
    three means: the minimum of a smooth response rather than the value at the luckiest grid point, which a
    x2 grid would put up to a few tens of percent above the optimum. Elsewhere (the grid's edge, or beside an
    LR that missed) the best LR's mean is what there is."""
    lrs = sorted(cells)
    done = {lr: ys for lr, ys in cells.items() if ys and all(y is not None for y in ys)}
    if not done:
        return None, None, False, False
    means: dict[float, float] = {lr: sum(ys) / len(ys) for lr, ys in done.items()}  # type: ignore[arg-type, misc]
    best = min(done, key=lambda lr: means[lr])
    tied = [lr for lr in done if means[lr] == means[best]]
    at_edge = len(lrs) > 1 and all(lr in (lrs[0], lrs[-1]) for lr in tied)  # only if no inner LR does as well
    i = lrs.index(best)
    if 0 < i < len(lrs) - 1 and lrs[i - 1] in done and lrs[i + 1] in done:
        (x0, y0), (x1, y1), (x2, y2) = ((math.log(lr), means[lr]) for lr in lrs[i - 1:i + 2])
        # The parabola's minimum from divided differences; the middle mean is the lowest, so it is convex
        # (or flat) and its minimum lies between the outer two.
        slope01, slope12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
        curvature = (slope12 - slope01) / (x2 - x0)
        if curvature > 0:
            x = (x0 + x1) / 2 - slope01 / (2 * curvature)
            return best, y0 + slope01 * (x - x0) + curvature * (x - x0) * (x - x1), at_edge, True
    return best, means[best], at_edge, False


def plan_curve(batches: list[int] | tuple[int, ...], first_lr: float, points: int, spacing: float, extend: int,
               results: Callable[[int, tuple[float, ...]], Cells]) -> Iterator[tuple[int, tuple[float, ...]]]:
    """The curve's plan, for `batchscale study` and its check against a known answer (testing/nqm.py) alike:
    yields (batch, its LRs so far) to run, batch sizes in ascending order, each with `points` LRs `spacing`
    apart centred on its neighbour's best (`centre_after`; the smallest on `first_lr`), then, while its best is on
    the grid's edge, once more with one LR beyond it (`next_lr`), at most `extend` times. Each LR is yielded
    again with those after it: the caller runs what it has not run. Before planning on, it reads the batch's
    `results(batch, lrs)`, so the caller must have run them by the time it asks for the next."""
    ascending = sorted(batches)
    centre, previous = first_lr, ascending[0]
    for batch in ascending:
        lrs = lr_grid(centre_after(centre, previous, batch), points, spacing)
        yield batch, lrs
        cells = results(batch, lrs)
        for _ in range(extend):
            lr = next_lr(cells, spacing)
            if lr is None:
                break
            lrs = (*lrs, lr)
            yield batch, lrs
            cells = results(batch, lrs)
        best = optimum(cells)[0]
        if best is not None:
            centre, previous = best, batch


def cells_of(trials: list[Trial]) -> dict[int, Cells]:
    out: dict[int, Cells] = {}
    for t in trials:
        ys = out.setdefault(t.batch, {}).setdefault(t.lr, [])
        ys.append(math.log(t.steps) if t.status == REACHED and t.steps else None)
    return out


def best_per_batch(trials: list[Trial]) -> list[Best]:
    """Per batch size: the best LR and the steps to target at the optimum (`optimum`), with the best LR's
    median-seed trial as the record of what ran."""
    out = []
    cells = cells_of(trials)
    for batch in sorted(cells):
        mine = [t for t in trials if t.batch == batch]
        lr, log_steps, at_edge, fitted = optimum(cells[batch])
        trial = None
        if lr is not None:
            ts = sorted((t for t in mine if t.lr == lr), key=lambda t: t.steps)  # type: ignore[arg-type, return-value]
            trial = ts[len(ts) // 2]
        out.append(Best(batch, trial, tuple(sorted(cells[batch])), at_edge, sum(t.status != REACHED for t in mine),
                        log_steps, fitted))
    return out


@dataclass(frozen=True)
class Fit:
    """S(B) = S_min (1 + B_noise / B), equivalently E(B) = E_min (1 + B / B_noise) with E_min = S_min B_noise."""

    s_min: float
    b_noise: float
    rms_log_error: float  # how well the curve follows the points (0.05 = about 5%)

    @property
    def e_min(self) -> float:
        return self.s_min * self.b_noise

    def steps(self, batch: float) -> float:
        return self.s_min * (1 + self.b_noise / batch)


def fit_curve(points: list[tuple[int, float]]) -> Fit | None:
    """Least squares in log(steps) over B_noise (a fine log grid, then refined); for each B_noise the best S_min
    is closed-form (the geometric mean of S_i / (1 + B_noise / B_i)). Needs 3 batch sizes."""
    if len({b for b, _ in points}) < 3:
        return None
    b_noise, s_min, mse = fit_many([b for b, _ in points], np.log([[s for _, s in points]]))
    return Fit(float(s_min[0]), float(b_noise[0]), math.sqrt(max(float(mse[0]), 0.0)))


def search_limits(batches: list[int] | tuple[int, ...]) -> tuple[float, float]:
    """The range `fit_curve` searches for B_noise: a fit at either end has found no knee in the data."""
    return min(batches) / 1e3, max(batches) * 1e3


GRID = 400  # the first grid's steps over the search range; each refinement then spans two of them in 100


def fit_many(batches: list[int], log_steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`fit_curve` for many sets of log steps at once (rows of `log_steps`, one column per batch): (B_noise,
    S_min, mean squared log error) per row. A bootstrap refits thousands of replicates; this does them together."""
    b = np.asarray(batches, dtype=float)
    y = np.atleast_2d(np.asarray(log_steps, dtype=float))
    lo, hi = search_limits(batches)

    def errors(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # grid: (rows or 1, G)
        shifts = y[:, None, :] - np.log1p(grid[..., None] / b)
        return shifts.var(axis=2), shifts.mean(axis=2)

    grid = np.broadcast_to(lo * (hi / lo) ** (np.arange(GRID + 1) / GRID), (len(y), GRID + 1))
    rows = np.arange(len(y))
    for _ in range(3):  # refine around the best grid point
        best = errors(grid)[0].argmin(axis=1)
        a = grid[rows, np.maximum(best - 1, 0)]
        z = grid[rows, np.minimum(best + 1, grid.shape[1] - 1)]
        grid = a[:, None] * (z / a)[:, None] ** (np.arange(101) / 100)
    mse, shift = errors(grid)
    best = mse.argmin(axis=1)
    return grid[rows, best], np.exp(shift[rows, best]), mse[rows, best]


@dataclass(frozen=True)
class Interval:
    """B_crit's sampling interval with the measured batch sizes fixed. An end at math.inf (or 0) is open: there
    the replicates' fits ran to the search limit, so the data set no bound on that side."""

    low: float
    high: float
    replicates: int  # replicates drawn
    scatter: float | None = None  # the standard deviation of log steps it drew from
    values: tuple[float, ...] = field(default=(), repr=False, compare=False)  # every replicate's B_crit, sorted
    scatter_from: str = "seeds"  # "seeds": pooled over every (batch, LR)'s seeds; "fit": one seed, the fit's residuals
    leave_one_out: tuple[float, float] | None = None  # B_crit's range over fits each leaving one batch size out

    @property
    def open_low(self) -> bool:
        return self.low <= 0

    @property
    def open_high(self) -> bool:
        return math.isinf(self.high)

    @property
    def closed(self) -> bool:
        return not (self.open_low or self.open_high)

    def within(self, estimate: float) -> float:
        """The larger of high / estimate and estimate / low: the interval lies within x this of the estimate
        (math.inf where it is open)."""
        if not self.closed or estimate <= 0:
            return math.inf
        return max(self.high / estimate, estimate / self.low)

    def text(self, digits: int = 0) -> str:
        """'441 to 2,288', or an open end said as such: 'above 441 (no upper bound: ...)'."""
        if self.open_high and self.open_low:
            return "unbounded both ways (the fits ran to the search limits)"
        if self.open_high:
            return f"above {self.low:,.{digits}f} (open: no upper bound, the fits ran to the search limit)"
        if self.open_low:
            return f"below {self.high:,.{digits}f} (open: no lower bound, the fits ran to the search limit)"
        return f"{self.low:,.{digits}f} to {self.high:,.{digits}f}"


def scatter(cells: dict[int, Cells]) -> tuple[float, int] | None:
    """The seed-to-seed standard deviation of log steps to target, pooled over every (batch, LR) whose seeds
    all reached it, and its degrees of freedom; None where no LR has two seeds."""
    squares, dof = 0.0, 0
    for by_lr in cells.values():
        for ys in by_lr.values():
            if len(ys) > 1 and all(y is not None for y in ys):
                mean = sum(ys) / len(ys)  # type: ignore[arg-type]
                squares += sum((y - mean) ** 2 for y in ys)  # type: ignore[operator]
                dof += len(ys) - 1
    return (math.sqrt(squares / dof), dof) if dof else None


def optimum_many(cells: Cells, means: np.ndarray) -> np.ndarray:
    """`optimum`'s log steps for many replicates of one batch's cell means at once: `means` has a row per
    replicate and a column per LR of `sorted(cells)`, NaN where a cell is not done (a seed missed or diverged).
    The same rule: the lowest mean, or where both its neighbours are done, the parabola's minimum through
    the three (NaN: no cell done)."""
    rows = np.arange(len(means))
    filled = np.where(np.isnan(means), np.inf, means)
    best = filled.argmin(axis=1)
    out = filled[rows, best]
    out[np.isinf(out)] = np.nan
    x = np.log(sorted(cells))
    k = len(x)
    if k < 3:
        return out
    inner = (best > 0) & (best < k - 1)
    i = np.clip(best, 1, k - 2)
    y0, y1, y2 = filled[rows, i - 1], filled[rows, i], filled[rows, i + 1]
    x0, x1, x2 = x[i - 1], x[i], x[i + 1]
    with np.errstate(invalid="ignore"):
        slope01, slope12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
        curvature = (slope12 - slope01) / (x2 - x0)
        use = inner & np.isfinite(y0) & np.isfinite(y2) & (curvature > 0)
        at = (x0 + x1) / 2 - slope01 / (2 * np.where(use, curvature, 1.0))
        value = y0 + slope01 * (at - x0) + curvature * (at - x0) * (at - x1)
    return np.where(use, value, out)


def cell_stats(cells: Cells) -> tuple[list[float], np.ndarray, np.ndarray]:
    """A batch's LRs (sorted), each cell's mean log steps (NaN where not every seed reached the target) and
    its number of seeds."""
    lrs = sorted(cells)
    done = [bool(cells[lr]) and all(y is not None for y in cells[lr]) for lr in lrs]
    means = np.array([sum(cells[lr]) / len(cells[lr]) if ok else np.nan for lr, ok in zip(lrs, done)])  # type: ignore[arg-type, misc]
    return lrs, means, np.array([len(cells[lr]) for lr in lrs], dtype=float)


def draw_scatter(cells: dict[int, Cells]) -> tuple[float, int, str] | None:
    """The seed scatter to redraw with, its degrees of freedom and where it comes from: pooled over the seeds
    where any (batch, LR) has two; with one seed, the fit's residuals about the curve (which also carry how
    far the curve's shape is from the points), on the points' count less the fit's two parameters."""
    spread = scatter(cells)
    if spread is not None:
        return spread[0], spread[1], "seeds"
    points = [(b, math.exp(y)) for b, c in cells.items() if (y := optimum(c)[1]) is not None]
    fit = fit_curve(points)
    if fit is None or len(points) < 4:
        return None
    dof = len(points) - 2
    return fit.rms_log_error * math.sqrt(len(points) / dof), dof, "fit"


def bootstrap(trials: list[Trial], replicates: int = 1000, seed: int = 0, level: float = 0.9) -> Interval | None:
    """B_crit's `level` sampling interval with the measured batch sizes fixed: each replicate draws every
    (batch, LR) cell's mean log steps anew about the measured one, with the pooled seed scatter over the
    cell's seeds (that scatter itself drawn from its chi-square, so that few seeds widen the interval as they
    should), then finds each batch's optimum and fits again; the pick of the best of a few noisy LRs is thus
    in every replicate, as in the measurement. A parametric redraw, not a resample of the seeds: resampling
    two seeds understates their variance by (n - 1) / n = half. A cell with a missed seed is kept as it was.
    A replicate whose fit ran to the search limit counts as unbounded there (the interval's end is then open).
    Beside it, `leave_one_out`: how much the answer hangs on which batch sizes were measured."""
    if replicates < 1:
        return None
    cells = cells_of(trials)
    batches = sorted(cells)
    spread = draw_scatter(cells)
    if spread is None:
        return None
    sd, dof, source = spread
    rng = np.random.default_rng(seed)
    sds = sd * np.sqrt(dof / rng.chisquare(dof, replicates))  # s / sqrt(chi2_dof / dof)
    columns, used = [], []
    for b in batches:
        lrs, means, counts = cell_stats(cells[b])
        draws = means + sds[:, None] * rng.standard_normal((replicates, len(lrs))) / np.sqrt(counts)
        optima = optimum_many(cells[b], draws)
        if not np.isnan(optima).all():
            columns.append(optima)
            used.append(b)
    if len(used) < 3:
        return None
    optima = np.column_stack(columns)
    misfit = lack_of_fit(trials, sd)
    if misfit > 0:  # the curve's own distance from the points, beyond what the seeds' scatter explains
        optima = optima + misfit * rng.standard_normal(optima.shape)
    values = replicate_fits(used, optima)
    return quantiles(values, level, replicates, sd, source, leave_one_out(trials))


def lack_of_fit(trials: list[Trial], sd: float) -> float:
    """The standard deviation by which the batches' optima stray from the fitted curve beyond their seed noise:
    the residuals' variance (on the points less the fit's two parameters) less the mean variance of a point's
    mean (sd^2 over the best LR's seeds), or 0. S(B) = S_min (1 + B_crit / B) is a model; where the points
    follow it less closely than their seeds allow, the interval must carry that too."""
    bests = [b for b in best_per_batch(trials) if b.steps is not None and b.trial is not None]
    fit = fit_curve([(b.batch, b.steps) for b in bests])  # type: ignore[misc]
    if fit is None or len(bests) < 4:
        return 0.0
    residuals = [b.log_steps - math.log(fit.steps(b.batch)) for b in bests]  # type: ignore[operator]
    seeds = [sum(t.batch == b.batch and t.lr == b.trial.lr for t in trials) for b in bests]  # type: ignore[union-attr]
    excess = sum(r * r for r in residuals) / (len(bests) - 2) - sum(sd * sd / n for n in seeds) / len(seeds)
    return math.sqrt(excess) if excess > 0 else 0.0


def replicate_fits(batches: list[int], log_steps: np.ndarray) -> np.ndarray:
    """Each row's fitted B_crit, math.inf or 0 where it ran to the upper or lower search limit (a row with a
    batch that missed in it is fitted without that batch; one with fewer than 3 is NaN)."""
    out = np.full(len(log_steps), np.nan)
    missing = np.isnan(log_steps)
    for pattern in np.unique(missing, axis=0):  # rows alike in which batches are missing, fitted together
        rows = (missing == pattern).all(axis=1)
        keep = ~pattern
        if keep.sum() < 3:
            continue
        chosen = [b for b, k in zip(batches, keep) if k]
        b_noise = fit_many(chosen, log_steps[rows][:, keep])[0]
        low, high = search_limits(chosen)
        step = (high / low) ** (1 / GRID)
        out[rows] = np.where(b_noise >= high / step, np.inf, np.where(b_noise <= low * step, 0.0, b_noise))
    return out


def quantiles(values: np.ndarray, level: float, replicates: int, sd: float | None, source: str,
              loo: tuple[float, float] | None) -> Interval | None:
    values = np.sort(values[~np.isnan(values)])
    if len(values) < replicates // 10 or not len(values):
        return None
    tail = (1 - level) / 2
    low, high = values[int(tail * (len(values) - 1))], values[int((1 - tail) * (len(values) - 1))]
    return Interval(float(low), float(high), len(values), sd, tuple(float(v) for v in values), source, loo)


def leave_one_out(trials: list[Trial]) -> tuple[float, float] | None:
    """B_crit's lowest and highest fit over the curve with one batch size left out at a time (math.inf where
    such a fit ran to the search limit); None with fewer than 4 batch sizes."""
    points = [(b.batch, b.steps) for b in best_per_batch(trials) if b.steps is not None]
    if len(points) < 4:
        return None
    fits = []
    for i in range(len(points)):
        rest = points[:i] + points[i + 1:]
        b_noise = replicate_fits([b for b, _ in rest], np.log([[s for _, s in rest]]))[0]  # type: ignore[misc]
        fits.append(float(b_noise))
    return min(fits), max(fits)


@dataclass(frozen=True)
class Comparison:
    """B_simple beside B_crit (McCandlish et al.: B_crit is about B_noise = tr(H Sigma) / G^T H G, and B_simple
    = tr(Sigma) / |G|^2 approximates that only where the Hessian is not far from a multiple of the identity).
    B_simple is `pooled_b_simple`'s: every fixed-weights probe pair of the best LR's trials at every batch size
    and seed, summed before dividing, with Fieller's interval (`high` math.inf: unbounded, |G|^2 not resolved
    from zero). The ratio's interval divides B_crit's bootstrap replicates by redraws of B_simple from its
    means' sampling distribution."""

    b_simple: float | None  # None: the pooled |G|^2 is not positive
    low: float
    high: float  # math.inf: unbounded
    ratio: float | None = None  # B_crit / B_simple
    ratio_low: float | None = None
    ratio_high: float | None = None
    pairs: float = 0.0  # probe pairs pooled

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.high)

    @property
    def agrees(self) -> bool | None:
        """Whether the ratio's interval holds 1 (None: no interval)."""
        if self.ratio_low is None or self.ratio_high is None:
            return None
        return self.ratio_low <= 1 <= self.ratio_high


def pooled_b_simple(trials: list[Trial], bests: list[Best]) -> tuple[Pooled | None, dict[int, Pooled]]:
    """B_simple measured the same way at every batch size: each best LR's trials' fixed-weights probes (taken at
    the target, or at the budget's end; every seed, reached or not), their sums pooled before dividing, per batch
    size and over all of them. No trial is chosen by its own estimate: a low |G|^2 draw counts as a high one."""
    per_batch: dict[int, Pooled] = {}
    every: list[tuple[float, ...]] = []
    for b in bests:
        if b.trial is None:
            continue
        sums = [t.noise_sums for t in trials if t.batch == b.batch and t.lr == b.trial.lr and t.noise_sums]
        pooled = pool(sums)
        if pooled is not None:
            per_batch[b.batch] = pooled
            every += sums  # type: ignore[arg-type]
    return pool(every), per_batch


def compare(b_simple: Pooled | None, interval: Interval | None, b_crit: float | None,
            replicates: int = 1000, seed: int = 1, level: float = 0.9) -> Comparison | None:
    """`b_simple`: the pooled estimate (`pooled_b_simple`)."""
    if b_simple is None:
        return None
    out = Comparison(b_simple.b_simple, b_simple.low, b_simple.high, pairs=b_simple.pairs)
    if b_crit is None or b_simple.b_simple is None:
        return out
    rng = random.Random(seed)
    tail = (1 - level) / 2

    def quantile(xs: list[float], q: float) -> float:
        return xs[int(q * (len(xs) - 1))]

    crit = list(interval.values) if interval else []  # sorted: shuffled, so the pairs are independent draws
    rng.shuffle(crit)
    inverse = b_simple.draws(len(crit), rng)  # G / T: the ratio B_crit x G / T stays finite where G nears zero
    ratios = sorted(c * d for c, d in zip(crit, inverse))
    if len(ratios) < 10:
        return Comparison(out.b_simple, out.low, out.high, b_crit / b_simple.b_simple, pairs=out.pairs)
    return Comparison(out.b_simple, out.low, out.high, b_crit / b_simple.b_simple, quantile(ratios, tail),
                      quantile(ratios, 1 - tail), out.pairs)


@dataclass(frozen=True)
class Analysis:
    bests: list[Best]
    fit: Fit | None
    interval: Interval | None
    b_simple: dict[int, float]  # per batch: B_simple pooled over the best LR's probes (`pooled_b_simple`)
    comparison: Comparison | None = None
    compared: list[int] = field(default_factory=list)  # the batch sizes whose B_simple the comparison pools
    b_simple_pooled: dict[int, Pooled] = field(default_factory=dict)  # per batch, with its interval

    @property
    def predicted(self) -> float | None:
        return self.comparison.b_simple if self.comparison else None

    @property
    def ratio(self) -> float | None:
        """Measured B_crit over B_simple (McCandlish et al. find B_simple tracks B_crit)."""
        return self.comparison.ratio if self.comparison else None


def analyze(trials: list[Trial], replicates: int = 1000) -> Analysis:
    bests = best_per_batch(trials)
    points = [(b.batch, b.steps) for b in bests if b.steps is not None]
    fit = fit_curve(points)  # type: ignore[arg-type]
    interval = bootstrap(trials, replicates) if fit else None
    overall, per_batch = pooled_b_simple(trials, bests)
    comparison = compare(overall, interval, fit and fit.b_noise, max(replicates, 1))  # type: ignore[arg-type]
    values = {b: p.b_simple for b, p in per_batch.items() if p.b_simple is not None}
    return Analysis(bests, fit, interval, values, comparison, sorted(per_batch), per_batch)
