"""A noisy quadratic whose noise scale is known in closed form, to test the study's protocol against.

Loss L(d) = 1/2 sum_i h_i d_i^2 with h_i = 1/i (an ill-conditioned spectrum, like a network's), gradient
G = H d, and a micro-batch of b examples sees G plus noise of covariance Sigma / b, with
Sigma = kappa (G^T H G / tr(H M)) M and M = H^p. Then McCandlish et al.'s
B_noise = tr(H Sigma) / (G^T H G) = kappa at every point of training, while B_simple = tr(Sigma) / |G|^2
moves as training goes on and differs from kappa (it does for real networks); p = 1 would make Sigma
proportional to H, the one case where the two track each other.

A trial runs as the trainer runs one: plain SGD on the mean of `micro_batches` micro-batch gradients, each
step feeding B_simple's estimator one pair (the micro-batches' mean squared norm against the step's), and
evaluations at the steps `TargetWatch` asks for, each scored by -L seen through `eval_noise` (a held-out set
is finite), stopping at the target or its budget.

At the trial's end (its target, or its budget) a fixed-weights probe, as `--noise-probe` takes one, draws
`probe` micro-batch gradients of `probe_micro` examples (the same for every B) in probe.GROUPS groups, with no
step between them; the trial carries their raw sums for the study's pooled B_simple.

Three truths to test against, none computed the way the protocol computes: B_simple's path average over
a trial, from the exact tr(Sigma) and |G|^2 at every step; the exact tr(Sigma) and |G|^2 at the trial's final
weights (`Trial.extra["truth_at_end"]`), which the probe estimates; and the critical batch of the expected loss,
`critical_batch`: E[d_i^2] obeys a closed linear recursion, so the expected steps to target at any (B, LR)
are exact, and a fine LR search per batch gives S(B) with no seed noise, no grid and no noisy evaluations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..noise import NoiseScale
from ..training.probe import GROUPS
from ..study.protocol import DIVERGED, MISSED, REACHED, Cells, Fit, Trial, cells_of, fit_curve, plan_curve
from ..study.sequential import Plan, Settings, plan_round
from ..target import TargetWatch


@dataclass(frozen=True)
class NoisyQuadratic:
    dims: int = 50
    kappa: float = 200.0  # B_noise
    sigma_power: float = 0.5  # M = H^p: not 1, so Sigma is not proportional to H
    target_fraction: float = 0.01  # the target: this share of the starting loss
    eval_noise: float = 0.0  # an evaluation sees the loss times (1 + eval_noise z), z standard normal
    micro_batches: int = 4  # a step's gradient is the mean of this many micro-batches' (the trainer's accumulation)
    noise_window: float = 1e12  # B_simple's average: the whole trial, as a study's trials run it
    probe: int = 256  # micro-batch gradients of the fixed-weights probe at the trial's end (0: none)
    probe_micro: int = 8

    @property
    def h(self) -> np.ndarray:
        return 1.0 / np.arange(1, self.dims + 1)

    @property
    def m(self) -> np.ndarray:
        return self.h ** self.sigma_power

    def loss(self, d: np.ndarray) -> float:
        return 0.5 * float((self.h * d * d).sum())

    def sigma_diag(self, d: np.ndarray) -> np.ndarray:
        ghg = float((self.h**3 * d * d).sum())
        return self.kappa * ghg / float((self.h * self.m).sum()) * self.m

    def trial(self, batch: int, lr: float, seed: int, budget: int, growth: float = 1.05,
              measure_noise: bool = True) -> tuple[Trial, float]:
        """One trial; returns it and the true B_simple averaged over it as its estimator averages (the sum of
        tr(Sigma) over its steps over the sum of |G|^2). Without `measure_noise` the step's gradient is drawn
        whole (the same distribution, a quarter of the work) and B_simple is not estimated."""
        rng = np.random.default_rng(seed)
        h, m = self.h, self.m
        h3, per_ghg = h**3, self.kappa * m / float((h * m).sum())
        d = np.ones(self.dims)
        start = 0.5 * float(h.sum())
        watch = TargetWatch(-self.target_fraction * start, growth, stop=True, max_steps=budget, near=math.inf)
        noise = NoiseScale(window=self.noise_window)
        k = min(self.micro_batches, batch) if measure_noise else 1
        micro = batch / k
        trace_sum = grad_sq_sum = 0.0
        step = 0
        while watch.ended is None:
            grad = h * d
            sigma = per_ghg * float(h3 @ (d * d))
            if measure_noise:
                trace_sum, grad_sq_sum = trace_sum + float(sigma.sum()), grad_sq_sum + float(grad @ grad)
            parts = grad + np.sqrt(sigma / micro) * rng.standard_normal((k, self.dims))
            g = parts.mean(0)
            if k > 1:
                noise.update(float((parts * parts).sum(1).mean()), float(g @ g), micro, batch, examples=batch)
            d = d - lr * g
            step += 1
            loss = 0.5 * float(h @ (d * d))
            if not math.isfinite(loss) or loss > 1e6 * start:
                return Trial(batch, lr, seed, DIVERGED, None, budget=budget), math.nan
            watch.after_step(step)
            if watch.due(step):
                seen = loss * (1 + self.eval_noise * rng.standard_normal())
                watch.record(step, -seen, b_simple=noise.b_simple)
        hit = watch.reached()
        sums, truth = self.probe_at(d, rng) if measure_noise and self.probe else (None, None)
        trial = Trial(batch, lr, seed, REACHED if hit else MISSED, hit["step"] if hit else None,
                      hit["previous_eval"] if hit else None, budget, max(e["acc"] for e in watch.evals),
                      noise.b_simple, b_simple_se=noise.standard_error, noise_sums=sums,
                      extra={"truth_at_end": truth})
        return trial, trace_sum / grad_sq_sum if grad_sq_sum else math.nan

    def probe_at(self, d: np.ndarray, rng: np.random.Generator) -> tuple[tuple[float, ...], tuple[float, float]]:
        """The fixed-weights probe at `d`: its raw sums (noise.SUMS), and the exact (tr(Sigma), |G|^2) there."""
        grad, sigma = self.h * d, self.sigma_diag(d)
        size = self.probe // GROUPS
        scale = NoiseScale(window=math.inf)
        for _ in range(GROUPS):
            parts = grad + np.sqrt(sigma / self.probe_micro) * rng.standard_normal((size, self.dims))
            mean = parts.mean(0)
            scale.update(float((parts * parts).sum(1).mean()), float(mean @ mean), self.probe_micro,
                         size * self.probe_micro, examples=0.0)
        return tuple(scale.raw_sums() or ()), (float(sigma.sum()), float(grad @ grad))

    def fewest_steps(self, batch: float, lrs: np.ndarray | None = None) -> tuple[int, float]:
        """(steps, LR): the fewest steps to target of the expected loss over `lrs` (default: 300 LRs 2% apart
        below the largest stable one, none of the protocol's grid), and the LR that takes them. E[d_i^2] after a
        step is (1 - lr h_i)^2 E[d_i^2] + lr^2 / B E[Sigma_ii], and E[Sigma] is linear in E[d^2]: the recursion
        is exact and closed. Every LR advances at once; the first to reach the target is the best."""
        h, m = self.h, self.m
        if lrs is None:
            lrs = 2.5 / float(h.max()) * 0.98 ** np.arange(300)
        rates = np.asarray(lrs, dtype=float)[:, None]
        v = np.ones((rates.shape[0], self.dims))
        start = 0.5 * float(h.sum())
        keep, spread = (1 - rates * h) ** 2, rates * rates / batch * self.kappa * m / float((h * m).sum())
        for step in range(1, 1_000_000):
            v = keep * v + spread * (v @ h**3)[:, None]
            loss = 0.5 * (v @ h)
            v[~(loss < 1e6 * start)] = 0.0  # diverging: kept finite, and out of the race (its loss stays 0 below)
            there = (loss <= self.target_fraction * start) & (loss > 0)
            if there.any():
                return step, float(rates[np.argmax(there), 0])
        raise RuntimeError("no LR reaches the target")

    def typical_steps(self, batch: int, lrs: np.ndarray, seeds: int = 64, seed: int = 0) -> np.ndarray:
        """Brute force: per LR, the steps to target of `seeds` runs looked at after every step, with no
        evaluation noise, as the geometric mean over the runs (inf where one of them diverged or was still short
        of the target at 4x the best LR's); every LR and run advances at once."""
        h, m = self.h, self.m
        rng = np.random.default_rng(seed)
        rates = np.asarray(lrs, dtype=float)[:, None, None]
        d = np.ones((rates.shape[0], seeds, self.dims))
        start, per_ghg = 0.5 * float(h.sum()), self.kappa * m / float((h * m).sum())
        steps = np.zeros(d.shape[:2])
        bad = np.zeros(d.shape[:2], dtype=bool)
        step, limit = 0, math.inf
        while step < limit and not (steps > 0).all():
            step += 1
            sigma = per_ghg * ((d * d) @ h**3)[..., None]
            d = d - rates * (h * d + np.sqrt(sigma / batch) * rng.standard_normal(d.shape))
            loss = 0.5 * ((d * d) @ h)
            gone = ~(loss < 1e6 * start)
            bad |= gone & (steps == 0)
            d[gone] = 0.0  # out of the race (steps stays 0), and finite
            steps[(steps == 0) & ~gone & (loss <= self.target_fraction * start)] = step
            whole = ((steps > 0) & ~bad).all(1)
            if whole.any() and limit == math.inf:
                limit = 4 * step
        logs = np.where((steps > 0).all(1) & ~bad.any(1), np.log(np.where(steps > 0, steps, 1)).mean(1), np.inf)
        return np.exp(logs)

    def critical_batch(self, batches: list[int], seeds: int = 64) -> Fit:
        """The truth a study of this problem should find: S(B) as the fewest `typical_steps` over LRs 3% apart
        around the best LR of the expected loss (`fewest_steps`), fitted as the protocol fits its points."""
        points = []
        for b in batches:
            centre = self.fewest_steps(b)[1]
            points.append((b, float(self.typical_steps(b, centre * 1.03 ** np.arange(-15, 16), seeds).min())))
        fit = fit_curve(points)
        assert fit is not None
        return fit


def run_study(problem: NoisyQuadratic, batches: list[int], seeds: list[int], first_lr: float, points: int = 5,
              spacing: float = 2**0.5, extend: int = 4, budget: int = 5000, measure_noise: bool = False) -> list[Trial]:
    """The study's curve stage on this problem, planned by the plan `batchscale study` follows
    (`protocol.plan_curve`): batch sizes in ascending order, each with `points` LRs `spacing` apart centred on the
    last batch's best, extended one LR at a time while the best is on the grid's edge, every (batch, LR) run with
    every seed."""
    trials: list[Trial] = []
    tried: dict[int, int] = {}  # batch -> how many of its LRs have run

    def results(batch: int, lrs: tuple[float, ...]) -> Cells:
        return cells_of([t for t in trials if t.batch == batch])[batch]

    for batch, lrs in plan_curve(batches, first_lr, points, spacing, extend, results):
        for lr in lrs[tried.get(batch, 0):]:
            trials.extend(problem.trial(batch, lr, seed, budget, measure_noise=measure_noise)[0] for seed in seeds)
        tried[batch] = len(lrs)
    return trials


def sequential_study(problem: NoisyQuadratic, batches: list[int], first_lr: float, settings: Settings,
                     measure_noise: bool = False) -> tuple[list[Trial], list[Plan]]:
    """The sequential study on this problem, as `batchscale study` runs it: the coarse first round over
    `batches` (`run_study`, with the settings' seeds, LR grid and step budget), then the rounds
    `sequential.plan_round` plans until it stops; returns every trial and each round's plan (the last one
    the stop)."""
    trials = run_study(problem, batches, list(settings.seeds), first_lr, settings.lr_points, settings.lr_spacing,
                       settings.extend_edges, settings.budget_steps, measure_noise)
    plans: list[Plan] = []
    for round in range(2, 1000):
        plan = plan_round(trials, settings, round)
        plans.append(plan)
        if plan.stop:
            break
        trials += [problem.trial(a.batch, a.lr, a.seed, a.steps, measure_noise=measure_noise)[0] for a in plan.trials]
    return trials, plans
