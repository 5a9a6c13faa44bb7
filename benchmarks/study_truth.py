"""The study's protocol against ground truth on the noisy quadratic (testing/nqm.py; Sigma not proportional to H,
so B_simple differs from B_noise), with its figures printed:

- the sequential study (issue 28) from a coarse range whose top sits near the knee, as the committed CPU study's
  did: how often its 90% interval holds the brute-force B_crit, the median estimate, how many decided at x1.5,
  how many trials they took, and open intervals;
- fixed grids (--rounds 1) over the same coarse range with more seeds, and over a range chosen knowing the
  answer: the trials each needs and the interval width it reaches, against the sequential design's;
- B_simple's estimate against its path-average truth per batch size.

    PYTHONPATH=src python benchmarks/study_truth.py [STUDIES]     (about 3 CPU-minutes at 32)
"""

from __future__ import annotations

import math
import statistics
import sys

from batchscale.testing.study_truth import COARSE, PROBLEM, TRUTH_BATCHES, fixed, sequential, truth


def main(studies: int) -> None:
    true = truth()
    print(f"B_noise (kappa) {PROBLEM.kappa:g}; brute-force B_crit {true:.1f} (S(B) fitted over B = "
          f"{TRUTH_BATCHES[0]}...{TRUTH_BATCHES[-1]}); B_simple differs: Sigma ~ H^{PROBLEM.sigma_power:g}")
    runs = sequential(studies)
    held = sum(p.interval is not None and p.interval.low <= true <= p.interval.high for _, p in runs)
    estimates = [p.fit.b_noise for _, p in runs]
    widths = [p.interval.within(p.fit.b_noise) for _, p in runs]
    trials = [len(t) for t, _ in runs]
    decided = sum(p.decided for _, p in runs)
    opened = sum(not p.interval.closed for _, p in runs)
    tops = statistics.median(max(t.batch for t in ts) for ts, _ in runs)
    median = statistics.median(estimates)
    print(f"sequential, from B = {COARSE[0]}...{COARSE[-1]}, 2 seeds, x1.5: held the truth in {held} of {studies} "
          f"({100 * held / studies:.0f}%); median estimate {median:.1f} ({100 * (median / true - 1):+.0f}%); decided "
          f"{decided} of {studies}; median width x{statistics.median(widths):.2f}; trials median "
          f"{statistics.median(trials):.0f} (range {min(trials)}-{max(trials)}); median largest B {tops:.0f}; open "
          f"intervals {opened}")
    for batches, label in ((COARSE, "the same coarse range"), (COARSE + [512, 1024], "B up to 1024, chosen knowing "
                                                                                        "the knee")):
        for seeds in (2, 3, 4, 6):
            grid = fixed(studies, batches, seeds)
            reach = sum(w <= 1.5 for _, _, w, _ in grid)
            held = sum(i.low <= true <= i.high for _, _, _, i in grid)
            print(f"fixed grid over {label}, {seeds} seeds: trials median {statistics.median(g[0] for g in grid):.0f}; "
                  f"median width x{statistics.median(g[2] for g in grid):.2f}; within x1.5 in {reach} of {studies}; "
                  f"held the truth in {held}; median estimate {statistics.median(g[1] for g in grid):.1f}")
            if statistics.median(g[2] for g in grid) <= statistics.median(widths):
                break
    for batch, lr in ((32, 0.4), (64, 0.566), (256, 1.13), (1024, 1.6)):
        ratios, held = [], 0
        for seed in range(40):
            trial, path_average = PROBLEM.trial(batch, lr, seed, 5000)
            if trial.b_simple is None or trial.b_simple_se is None or not math.isfinite(path_average):
                continue
            ratios.append(trial.b_simple / path_average)
            held += abs(trial.b_simple - path_average) <= 1.645 * trial.b_simple_se
        print(f"B = {batch}: B_simple / truth median {statistics.median(ratios):.2f}; within 1.645 standard "
              f"errors in {held} of {len(ratios)} (40 trials, the rest gave no estimate)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 32)
