"""The sequential planner (study/sequential.py) and the interval it decides on (protocol.bootstrap), on made-up
trials whose curve is known exactly: steps = S_min (1 + B_noise / B) at the best LR, a parabola in log LR around
it, and seed noise of a known size."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from batchscale.study.protocol import REACHED, Trial, bootstrap, cells_of, optimum, optimum_many
from batchscale.study.sequential import Settings, plan_round
from batchscale.study.study_report import bracket

S_MIN, KNEE = 30.0, 200.0


def curve(batch: int, lr: float, seed: int, sd: float, knee: float = KNEE, rng: random.Random | None = None) -> int:
    best = 0.01 * batch ** 0.7
    noise = (rng or random.Random(hash((batch, round(lr, 6), seed)))).gauss(0, sd)
    return max(1, round(S_MIN * (1 + knee / batch) * math.exp(0.5 * math.log(lr / best) ** 2 + noise)))


def grid_trials(batches, seeds, sd: float, knee: float = KNEE, rng: random.Random | None = None) -> list[Trial]:
    out = []
    for b in batches:
        best = 0.01 * b ** 0.7
        for lr in (best / 2**0.5, best, best * 2**0.5):
            out += [Trial(b, lr, s, REACHED, curve(b, lr, s, sd, knee, rng)) for s in seeds]
    return out


def settings(**changes) -> Settings:
    return Settings(**{"seeds": (0, 1), "lr_points": 3, "extend_edges": 2, "replicates": 400, **changes})


def test_the_vectorised_optimum_is_the_scalar_one():
    rng = np.random.default_rng(0)
    for trial in range(200):
        lrs = sorted(rng.choice([0.05, 0.07, 0.1, 0.14, 0.2], size=rng.integers(1, 6), replace=False))
        cells = {lr: [float(y) if rng.random() > 0.15 else None for y in rng.normal(5, 1, 2)] for lr in lrs}
        means = np.array([[np.mean(ys) if all(y is not None for y in ys) else np.nan for ys in
                           (cells[lr] for lr in lrs)]])
        expected = optimum(cells)[1]
        got = optimum_many(cells, means)[0]
        assert (expected is None and np.isnan(got)) or got == pytest.approx(expected, rel=1e-12)


def test_ninety_percent_intervals_hold_a_known_knee_about_ninety_percent_of_the_time():
    # 80 made-up studies of a curve whose knee is known exactly, 2 seeds, seed noise 15%: a 90% interval that
    # understates the variance (as resampling two seeds does, by half) holds it in well under 80%.
    rng = random.Random(7)
    held = 0
    for study in range(80):
        trials = grid_trials([16, 32, 64, 128, 256, 512, 1024, 2048], (0, 1), 0.15, rng=rng)
        interval = bootstrap(trials, replicates=300, seed=study)
        held += interval.low <= KNEE <= interval.high
    assert 64 <= held <= 79, held


def test_an_interval_that_runs_to_the_search_limit_is_open_and_said_to_be():
    # No knee in the measured range (steps ~ 1/B throughout): the data set no upper bound.
    trials = grid_trials([8, 16, 32, 64], (0, 1), 0.1, knee=1e9)
    interval = bootstrap(trials, replicates=300)
    assert interval.open_high and not interval.closed and math.isinf(interval.high)
    assert "open" in interval.text() and "open" in bracket(interval)
    assert interval.within(1000.0) == math.inf
    closed = bootstrap(grid_trials([16, 32, 64, 128, 256, 512, 1024, 2048], (0, 1), 0.1), replicates=300)
    assert closed.closed and "open" not in bracket(closed)


def test_a_knee_at_the_top_of_the_range_asks_for_larger_batches_with_a_fitted_step_budget():
    trials = grid_trials([16, 32, 64, 128, 256], (0, 1), 0.05)
    plan = plan_round(trials, settings(budget_steps=100_000), 2)
    assert not plan.stop
    larger = [a for a in plan.trials if a.batch > 256]
    assert {a.batch for a in larger} == {512, 1024} and all("larger B" in a.reason for a in larger)
    for a in larger:  # 3 x the fit's S(B), against the known curve's (within the fit's error)
        assert a.steps == pytest.approx(3 * S_MIN * (1 + KNEE / a.batch), rel=0.3)
    assert all(a.seed in (0, 1) for a in larger)
    capped = plan_round(trials, settings(budget_steps=50), 2)
    assert all(a.steps == 50 for a in capped.trials if a.batch > 256)


def test_a_curve_measured_past_both_sides_of_its_knee_is_decided_and_the_plan_is_deterministic():
    trials = grid_trials([16, 32, 64, 128, 256, 512, 1024, 2048], (0, 1, 2, 3), 0.03)
    plan = plan_round(trials, settings(), 2)
    assert plan.decided and plan.stop and plan.trials == ()
    assert plan.interval.low <= KNEE <= plan.interval.high
    noisy = grid_trials([16, 32, 64, 128, 256, 512, 1024, 2048], (0, 1), 0.3)
    first, again = plan_round(noisy, settings(), 2), plan_round(noisy, settings(), 2)
    assert first == again and first.interval.values == again.interval.values


def test_noisy_points_ask_for_more_seeds_and_a_spent_budget_stops_with_a_forecast():
    noisy = grid_trials([16, 32, 64, 128, 256, 512, 1024, 2048], (0, 1), 0.35)
    plan = plan_round(noisy, settings(precision=1.3), 2)
    assert not plan.stop and plan.trials
    seeds = [a for a in plan.trials if "more seeds" in a.reason]
    assert seeds and all(a.seed >= 2 for a in seeds)  # new seeds, at batch sizes already measured
    assert {a.batch for a in seeds} <= {16, 32, 64, 128, 256, 512, 1024, 2048}
    spent = sum(t.steps * t.batch for t in noisy)
    broke = plan_round(noisy, settings(precision=1.3, budget_images=spent), 2)
    assert broke.stop and broke.why == "budget" and broke.forecast is not None and broke.forecast[0] > 0
    last = plan_round(noisy, settings(precision=1.3, rounds=1), 2)
    assert last.stop and last.why == "rounds" and last.trials  # where the next round would have gone


def test_an_optimum_on_the_grids_edge_asks_for_the_lr_beyond_it():
    trials = grid_trials([16, 32, 64, 128, 256, 512, 1024, 2048], (0, 1), 0.02)
    shifted = [Trial(t.batch, t.lr, t.seed, REACHED, t.steps if t.batch != 128 else
                     round(t.steps * (0.3 / t.lr) ** 2)) for t in trials]  # B = 128 fastest at its largest LR
    plan = plan_round(shifted, settings(), 2)
    edge = [a for a in plan.trials if a.batch == 128]
    largest = max(t.lr for t in shifted if t.batch == 128)
    assert edge and all(a.lr == pytest.approx(largest * 2**0.5) and "edge" in a.reason for a in edge)
    assert not plan.decided
    assert cells_of(shifted)[128]  # the shifted batch is in the data
