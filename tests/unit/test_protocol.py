"""The critical-batch protocol against a problem whose answer is known: the noisy quadratic (testing/nqm.py),
where B_noise = kappa at every point and B_simple is known in closed form along the way."""

from __future__ import annotations

import pytest

from batchscale.study.protocol import MISSED, REACHED, Trial, analyze, best_per_batch, bootstrap, fit_curve, lr_grid
from batchscale.testing.nqm import NoisyQuadratic

BATCHES = [2**i for i in range(2, 13)]


@pytest.fixture(scope="module")
def nqm_study():
    """The protocol as the study runs it: per batch an LR grid around a linear-scaling guess, 2 seeds, every
    trial stopping at its target or its budget. About 10 s."""
    problem = NoisyQuadratic(probe=1024)
    trials, truth = [], {}
    for batch in BATCHES:
        for lr in lr_grid(min(0.012 * batch, 1.0), 6, 2**0.5):
            for seed in (0, 1):
                trial, true_b_simple = problem.trial(batch, lr, seed, budget=3000)
                trials.append(trial)
                truth[(batch, lr, seed)] = true_b_simple
    return problem, trials, truth, analyze(trials, replicates=300)


def test_the_fitted_critical_batch_lands_near_the_known_one(nqm_study):
    problem, _, _, analysis = nqm_study
    # Stated tolerance: a factor of 2. A constant LR per trial (not McCandlish's per-step optimum), a x1.41 LR
    # grid and 2 seeds put the fit at 0.6-0.95 x kappa across seeds; swapping steps for examples, or taking the
    # slowest LR, lands far outside.
    assert problem.kappa / 2 < analysis.fit.b_noise < problem.kappa * 2
    assert analysis.interval is not None and analysis.interval.low <= analysis.fit.b_noise <= analysis.interval.high
    assert analysis.fit.rms_log_error < 0.25


def test_b_simple_lands_near_its_closed_form(nqm_study):
    _, _, truth, analysis = nqm_study
    checked = 0
    for best in analysis.bests:
        # Where the small batch (B/4) is well below B_simple, the estimator's pairs are informative.
        if 64 <= best.batch <= 1024:
            t = best.trial
            assert t.b_simple == pytest.approx(truth[(t.batch, t.lr, t.seed)], rel=0.25), best.batch
            checked += 1
    assert checked == 5


def test_a_trial_stops_at_the_first_evaluation_that_reaches_the_target():
    problem = NoisyQuadratic()
    trial, _ = problem.trial(64, 0.5, seed=3, budget=3000)
    assert trial.status == REACHED and trial.steps < 3000
    # The true step lies in (previous_eval, steps], at most 5% apart or one step.
    assert trial.steps <= max(1.05 * trial.previous_eval, trial.previous_eval + 1)


def test_trials_that_miss_their_budget_stay_in_the_results():
    problem = NoisyQuadratic()
    trials = [problem.trial(64, lr, 0, budget=10)[0] for lr in lr_grid(0.77, 4, 2)]
    trials += [problem.trial(256, lr, 0, budget=3000)[0] for lr in lr_grid(1.0, 4, 2)]
    assert {t.status for t in trials[:4]} <= {MISSED, "diverged"}
    bests = {b.batch: b for b in analyze(trials, replicates=0).bests}
    assert bests[64].trial is None and bests[64].missed == 4
    assert bests[256].trial is not None and bests[256].missed == sum(t.status != REACHED for t in trials[4:])


def test_the_fit_recovers_an_exact_curve():
    points = [(b, 300 * (1 + 256 / b)) for b in (16, 32, 64, 128, 256, 512, 1024, 4096)]
    fit = fit_curve(points)
    assert fit.b_noise == pytest.approx(256, rel=0.01) and fit.s_min == pytest.approx(300, rel=0.01)


def test_bootstrap_varies_what_was_measured():
    # Two seeds per cell that disagree: the interval must be wider than a point.
    trials = [Trial(b, 0.1, seed, REACHED, round(300 * (1 + 256 / b) * (0.8 if seed else 1.25))) for b in
              (16, 64, 256, 1024, 4096) for seed in (0, 1)]
    interval = bootstrap(trials, replicates=200)
    assert interval is not None and interval.low < interval.high


def test_a_best_lr_at_the_edge_of_its_grid_is_flagged():
    def trial(lr: float, steps: int | None) -> Trial:
        return Trial(128, lr, 0, REACHED if steps else MISSED, steps)

    edge = best_per_batch([trial(0.1, 500), trial(0.2, 400), trial(0.4, 300)])[0]
    inside = best_per_batch([trial(0.1, 500), trial(0.2, 250), trial(0.4, None)])[0]
    assert edge.at_edge and edge.trial.lr == 0.4
    assert not inside.at_edge and inside.trial.lr == 0.2 and inside.missed == 1


def test_b_simple_and_b_crit_are_said_to_agree_only_where_the_ratios_interval_holds_one():
    from batchscale.study.protocol import Analysis, Comparison
    from batchscale.study.study_report import comparison_lines

    def said(low: float, high: float) -> str:
        c = Comparison(400.0, 300.0, 500.0, ratio=(low + high) / 2, ratio_low=low, ratio_high=high)
        return " ".join(comparison_lines(Analysis([], None, None, {64: 400.0}, c, [64])))

    assert "agree within" in said(0.7, 1.3)
    assert "agree" not in said(0.4, 0.8) and "below B_simple beyond their uncertainty" in said(0.4, 0.8)
    assert "above B_simple beyond" in said(1.2, 2.0)


def test_the_probes_b_simple_lands_within_ten_percent_of_the_truth_at_the_target_weights(nqm_study):
    """Per batch size, the best LR's probes pooled over both seeds, against the exact tr(Sigma) / |G|^2 at
    those trials' final weights (pooled alike: summed over the seeds before dividing)."""
    _, trials, _, analysis = nqm_study
    checked = 0
    for best in analysis.bests:
        if 32 <= best.batch <= 1024:
            ends = [t.extra["truth_at_end"] for t in trials if t.batch == best.batch and t.lr == best.trial.lr]
            truth = sum(tr for tr, _ in ends) / sum(g for _, g in ends)
            assert analysis.b_simple[best.batch] == pytest.approx(truth, rel=0.10), best.batch
            checked += 1
    assert checked == 6
    assert analysis.comparison.pairs == 16 * 2 * len(analysis.compared)  # every seed's probe, none selected


def test_every_seed_of_the_best_lr_is_pooled_whatever_its_own_estimate():
    """A probe whose own |G|^2 came out negative counts as much as any; the LR that lost counts not at all."""
    def sums(trace: float, grad_sq: float) -> tuple[float, ...]:  # 16 pairs alike (no scatter but one)
        return (16.0, 16.0, 16 * trace, 16 * grad_sq, 16 * trace**2 + 16, 16 * grad_sq**2 + 1, 16 * trace * grad_sq)

    trials = [Trial(128, 0.1, 0, REACHED, 400, noise_sums=sums(500.0, 1.0)),
              Trial(128, 0.1, 1, REACHED, 420, noise_sums=sums(500.0, -0.5)),
              Trial(128, 0.2, 0, REACHED, 900, noise_sums=sums(5.0, 1.0)),  # a slower LR: not the best
              Trial(512, 0.2, 0, REACHED, 200, noise_sums=sums(700.0, 1.5))]
    analysis = analyze(trials, replicates=50)
    assert analysis.compared == [128, 512] and analysis.comparison.pairs == 48
    assert analysis.comparison.b_simple == pytest.approx((500 + 500 + 700) / (1.0 - 0.5 + 1.5))
    assert analysis.b_simple[128] == pytest.approx(1000 / 0.5)


def test_an_unbounded_b_simple_is_said_to_be_unbounded():
    from batchscale.study.protocol import Analysis, Comparison
    from batchscale.study.study_report import comparison_lines

    c = Comparison(900.0, 300.0, float("inf"), pairs=32)
    text = " ".join(comparison_lines(Analysis([], None, None, {64: 900.0}, c, [64])))
    assert "unbounded above" in text and "inf" not in text
    assert "B_noise" in text and "tr(Sigma) / |G|^2" in text  # which quantity each number estimates
