"""The study's protocol against ground truth on the noisy quadratic (testing/nqm.py), with its figures printed:
how often B_crit's 90% interval holds the brute-force B_crit over repeated studies (3 seeds, and 1), the
median study, and B_simple's estimate against its path-average truth per batch size. About 5 minutes on
2 CPU cores.

    PYTHONPATH=src python benchmarks/study_truth.py [STUDIES]
"""

from __future__ import annotations

import statistics
import sys

from batchscale.study.protocol import analyze
from batchscale.testing.nqm import NoisyQuadratic, run_study

BATCHES = [8, 16, 32, 64, 128, 256, 512, 1024]


def main(studies: int) -> None:
    problem = NoisyQuadratic(eval_noise=0.02)
    truth = problem.critical_batch(BATCHES).b_noise
    print(f"B_noise (kappa) {problem.kappa:g}; brute-force B_crit {truth:.1f}")
    for seeds in (3, 1):
        found = [analyze(run_study(problem, BATCHES, [1000 * r + s for s in range(seeds)], first_lr=0.05),
                         replicates=300) for r in range(studies)]
        held = sum(a.interval is not None and a.interval.low <= truth <= a.interval.high for a in found)
        median = statistics.median(a.fit.b_noise for a in found)
        print(f"{seeds} seed(s): interval held the truth in {held} of {studies}; median study {median:.1f} "
              f"({100 * (median / truth - 1):+.0f}%)")
    for batch, lr in ((32, 0.4), (64, 0.566), (256, 1.13), (1024, 1.6)):
        ratios, held = [], 0
        for seed in range(40):
            trial, path_average = problem.trial(batch, lr, seed, 5000)
            if trial.b_simple is None or trial.b_simple_se is None:
                continue
            ratios.append(trial.b_simple / path_average)
            held += abs(trial.b_simple - path_average) <= 1.645 * trial.b_simple_se
        print(f"B = {batch}: B_simple / truth median {statistics.median(ratios):.2f}; within 1.645 standard "
              f"errors in {held} of {len(ratios)} (40 trials, the rest gave no estimate)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 24)
