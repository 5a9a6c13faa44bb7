"""The critical-batch protocol's arithmetic (Shallue et al. 2019; McCandlish et al. 2018), apart from any
training: the LR grid per batch, the best trial per batch, the fit of steps and examples to target, its
bootstrap interval, and B_simple's prediction beside the measured critical batch.

Every trial counts: one that missed its target within its budget, or diverged, stays in the results
(with why), and a batch whose best LR sits at the edge of its grid is flagged, since a wider grid might
have found a faster one.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from statistics import median
from typing import Any

REACHED, MISSED, DIVERGED = "reached", "missed", "diverged"


def lr_grid(guess: float, points: int, spacing: float) -> tuple[float, ...]:
    """`points` LRs, each `spacing` times the last, centred (in log) on `guess`."""
    return tuple(guess * spacing ** (i - (points - 1) / 2) for i in range(points))


@dataclass(frozen=True)
class Trial:
    """One (batch, LR, seed) trial's outcome, however it ran (a training run's summary, or a model problem)."""

    batch: int
    lr: float
    seed: int
    status: str  # REACHED, MISSED (budget spent) or DIVERGED
    steps: int | None  # the first evaluation at the target (the true step is in (previous_eval, steps])
    previous_eval: int | None = None
    budget: int | None = None  # steps allowed
    best_acc: float | None = None
    b_simple: float | None = None  # B_simple when the target was reached (or at the end)
    b_simple_curve: tuple[tuple[float, float], ...] = ()  # (examples, B_simple) over training
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def examples(self) -> int | None:
        return None if self.steps is None else self.steps * self.batch

    @property
    def resolution(self) -> float | None:
        return self.steps / self.previous_eval if self.steps and self.previous_eval else None


@dataclass(frozen=True)
class Best:
    batch: int
    trial: Trial | None  # None: no LR reached the target
    lrs: tuple[float, ...]
    at_edge: bool  # the best LR is the smallest or largest tried
    missed: int  # trials of this batch that did not reach the target (missed or diverged)

    @property
    def steps(self) -> float | None:
        return None if self.trial is None else float(self.trial.steps)  # type: ignore[arg-type]


def best_per_batch(trials: list[Trial]) -> list[Best]:
    """Per batch size: the LR whose trials reach the target in the fewest steps (the median over seeds; an LR
    counts only where every seed reached it)."""
    out = []
    for batch in sorted({t.batch for t in trials}):
        mine = [t for t in trials if t.batch == batch]
        lrs = tuple(sorted({t.lr for t in mine}))
        cells = {lr: [t for t in mine if t.lr == lr] for lr in lrs}
        done = {lr: ts for lr, ts in cells.items() if all(t.status == REACHED for t in ts)}
        best_lr = min(done, key=lambda lr: median(t.steps for t in done[lr])) if done else None  # type: ignore[misc]
        trial, at_edge = None, False
        if best_lr is not None:
            ts = sorted(done[best_lr], key=lambda t: t.steps)  # type: ignore[arg-type, return-value]
            trial = ts[len(ts) // 2]
            fewest = median(t.steps for t in done[best_lr])  # type: ignore[misc]
            tied = [lr for lr, ts in done.items() if median(t.steps for t in ts) == fewest]  # type: ignore[misc]
            # On the edge only if no LR inside the grid does as well.
            at_edge = len(lrs) > 1 and all(lr in (lrs[0], lrs[-1]) for lr in tied)
        out.append(Best(batch, trial, lrs, at_edge, sum(t.status != REACHED for t in mine)))
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
    logs = [(b, math.log(s)) for b, s in points]

    def error(b_noise: float) -> tuple[float, float]:
        shifts = [ls - math.log1p(b_noise / b) for b, ls in logs]
        log_s_min = sum(shifts) / len(shifts)
        return sum((x - log_s_min) ** 2 for x in shifts) / len(shifts), math.exp(log_s_min)

    lo, hi = min(b for b, _ in points) / 1e3, max(b for b, _ in points) * 1e3
    grid = [lo * (hi / lo) ** (i / 400) for i in range(401)]
    for _ in range(3):  # refine around the best grid point
        best = min(range(len(grid)), key=lambda i: error(grid[i])[0])
        a, b = grid[max(0, best - 1)], grid[min(len(grid) - 1, best + 1)]
        grid = [a * (b / a) ** (i / 100) for i in range(101)]
    b_noise = min(grid, key=lambda x: error(x)[0])
    mse, s_min = error(b_noise)
    return Fit(s_min, b_noise, math.sqrt(mse))


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    replicates: int  # bootstrap replicates that gave a fit


def bootstrap(trials: list[Trial], replicates: int = 1000, seed: int = 0, level: float = 0.9) -> Interval | None:
    """B_noise's `level` interval: each replicate resamples the batch sizes (with replacement) and, within each
    (batch, LR), the seeds, then picks the best LR per batch and fits again. With one seed per trial it is
    the spread from which batch sizes happened to be measured."""
    if replicates < 1:
        return None
    rng = random.Random(seed)
    batches = sorted({t.batch for t in trials})
    cells: dict[tuple[int, float], list[Trial]] = {}
    for t in trials:
        cells.setdefault((t.batch, t.lr), []).append(t)
    values = []
    for _ in range(replicates):
        chosen = [rng.choice(batches) for _ in batches]
        if len(set(chosen)) < 3:
            continue
        points = []
        for batch in chosen:
            sample = [rng.choice(ts) for (b, _), ts in cells.items() if b == batch for _ in ts]
            best = best_per_batch(sample)[0]
            if best.trial is not None:
                points.append((batch, float(best.trial.steps)))  # type: ignore[arg-type]
        fit = fit_curve(points)
        if fit is not None:
            values.append(fit.b_noise)
    if len(values) < replicates // 10:
        return None
    values.sort()
    tail = (1 - level) / 2
    return Interval(values[int(tail * (len(values) - 1))], values[int((1 - tail) * (len(values) - 1))], len(values))


@dataclass(frozen=True)
class Analysis:
    bests: list[Best]
    fit: Fit | None
    interval: Interval | None
    b_simple: dict[int, float]  # per batch: B_simple of the best trial when it reached the target
    predicted: float | None  # B_crit predicted from B_simple (the median over batch sizes)

    @property
    def ratio(self) -> float | None:
        """Measured B_crit over B_simple's prediction (McCandlish et al. find B_simple tracks B_crit)."""
        return self.fit.b_noise / self.predicted if self.fit and self.predicted else None


def analyze(trials: list[Trial], replicates: int = 1000) -> Analysis:
    bests = best_per_batch(trials)
    points = [(b.batch, b.steps) for b in bests if b.steps is not None]
    fit = fit_curve(points)  # type: ignore[arg-type]
    # An estimate that is not yet positive (|G|^2 too noisy early on) is no noise scale: left out, not averaged in.
    b_simple = {b.batch: b.trial.b_simple for b in bests if b.trial is not None and (b.trial.b_simple or 0) > 0}
    return Analysis(bests, fit, bootstrap(trials, replicates) if fit else None, b_simple,  # type: ignore[arg-type]
                    median(b_simple.values()) if b_simple else None)
