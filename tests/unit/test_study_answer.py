"""A study ends with its answer: B_crit and its interval (or why there is none) and the report's path, once. The
study runs through its command line on a stand-in for training (study_fakes.py) whose steps to target follow a
known curve, S(B) = 20 (1 + 64 / B) at every LR, so the answer is known: B_crit = 64."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from study_fakes import RecordingTraining

from batchscale.cli import main
from batchscale.study import study as study_module


@pytest.fixture
def training(monkeypatch) -> RecordingTraining:
    fake = RecordingTraining(lambda batch, lr: round(20 * (1 + 64 / batch)))
    monkeypatch.setattr(study_module, "execute", fake)
    monkeypatch.setattr("batchscale.study.runs.pyplot", lambda: None)
    monkeypatch.setattr("batchscale.study.study_report.write_plots", lambda *a, **k: [])
    return fake


def run(out: Path, data: Path, capsys, budget: int, *more: str) -> tuple[int, str]:
    code = main(["study", "--out", str(out), "--data", str(data), "--batch-sizes", "16,32,64,128", "--lr-points",
                 "1", "--extend-edges", "0", "--holdout", "32", "--width", "4", "--seeds", "1", "--no-paper",
                 "--budget-steps", str(budget), *more])
    return code, capsys.readouterr().out


def test_the_study_ends_with_its_answer_and_the_report_path_once(tiny_cifar, tmp_path, capsys, training):
    code, printed = run(tmp_path / "st", tiny_cifar, capsys, budget=1000)
    report = str(tmp_path / "st" / "report.md")
    last = printed.strip().splitlines()[-1]
    assert code == 0 and printed.count(report) == 1 and report in last and "wrote" not in printed
    # The report's own first sentence (study_report.headline): B_crit = x [lo, hi], decided or not, and why.
    found = re.search(r"B_crit = ([\d,]+) \[([\d,]+), ([\d,]+)\], decided at x1.5", last)
    assert found, last
    b_crit, low, high = (float(v.replace(",", "")) for v in found.groups())
    assert abs(b_crit - 64) < 0.1 * 64 and low <= 64 * 1.1 and high >= 64 * 0.9


def test_a_study_with_no_fit_says_why_and_what_would_give_one(tiny_cifar, tmp_path, capsys, training):
    # S(16) = 100 and S(32) = 60 steps are past a 50-step budget: two batch sizes reach the target, a fit needs 3.
    # The fixed grid alone: later rounds would add a batch size that reaches it, and fit.
    code, printed = run(tmp_path / "st", tiny_cifar, capsys, 50, "--rounds", "1")
    last = printed.strip().splitlines()[-1]
    assert code == 0 and last.startswith("no B_crit: 2 of 4 batch sizes reached the target")
    assert "B = 16, 32" in last and "--target" in last and str(tmp_path / "st" / "report.md") in last


def test_an_interval_the_batch_sizes_do_not_bound_is_said_so():
    from batchscale.study.study_report import answer

    # As a one-seed smoke study on real data gave: steps that barely fall with B leave the knee anywhere, and the
    # bootstrap's replicates run to the fit's search bounds (B / 1000 and B x 1000).
    results = {"fit": {"b_crit": 90.3}, "interval": {"low": 0.064, "high": 128_000.0},
               "best": [{"batch": b, "steps": 10.0} for b in (32, 64, 128, 256)], "unfinished": []}
    said = answer(results)
    assert said.startswith("B_crit = 90, 90% interval 0.064 to 128,000") and "do not bound" in said
    results["interval"] = {"low": 441.0, "high": 2288.0}  # beyond the largest batch, but bounded by the points
    assert answer({**results, "best": [{"batch": b, "steps": 1.0} for b in (32, 1024)]}) == \
        "B_crit = 90, 90% interval 441 to 2,288"
