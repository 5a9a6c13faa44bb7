"""The known-answer design the sequential study is checked on (benchmarks/study_truth.py prints it,
tests/integration/test_study_truth.py asserts it): a noisy quadratic whose knee is near 140, a coarse first
range whose top sits near that knee (as the committed CPU study's 1,024 sat near its 799), 2 seeds, 3 LRs x1.41,
and the fixed grids it is compared with."""

from __future__ import annotations

from ..study.protocol import Interval, Trial, best_per_batch, bootstrap, fit_curve
from ..study.sequential import Plan, Settings
from .nqm import NoisyQuadratic, run_study, sequential_study

PROBLEM = NoisyQuadratic(eval_noise=0.02)  # a held-out score within about 2%, as 5,000 images give
COARSE = [8, 16, 32, 64, 128, 256]  # its top near the knee (about 140), as the committed study's 1,024 was near 799
TRUTH_BATCHES = [8, 16, 32, 64, 128, 256, 512, 1024, 2048]  # the truth's fit: the range a study ends up with
FIRST_LR, POINTS, SPACING, EXTEND, STEPS = 0.05, 3, 2**0.5, 3, 5000


def settings(study: int, seeds: int = 2, precision: float = 1.5) -> Settings:
    return Settings(seeds=tuple(1000 * study + s for s in range(seeds)), lr_points=POINTS, lr_spacing=SPACING,
                    extend_edges=EXTEND, precision=precision, rounds=12, smallest=8, multiple=8, budget_steps=STEPS)


def truth() -> float:
    return PROBLEM.critical_batch(TRUTH_BATCHES).b_noise


def sequential(studies: int, precision: float = 1.5) -> list[tuple[list[Trial], Plan]]:
    """Each study's trials and its last plan (where it stopped, and why)."""
    out = []
    for r in range(studies):
        trials, plans = sequential_study(PROBLEM, COARSE, FIRST_LR, settings(r, precision=precision))
        out.append((trials, plans[-1]))
    return out


def fixed(studies: int, batches: list[int], seeds: int) -> list[tuple[int, float, float, Interval]]:
    """(trials, B_crit, interval within x, interval) of `studies` fixed grids."""
    out = []
    for r in range(studies):
        trials = run_study(PROBLEM, batches, [1000 * r + s for s in range(seeds)], FIRST_LR, POINTS, SPACING, EXTEND,
                           STEPS)
        fit = fit_curve([(b.batch, b.steps) for b in best_per_batch(trials) if b.steps is not None])  # type: ignore[misc]
        interval = bootstrap(trials)
        out.append((len(trials), fit.b_noise, interval.within(fit.b_noise), interval))  # type: ignore[union-attr]
    return out
