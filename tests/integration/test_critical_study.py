"""`batchscale study` end to end on real (tiny) CIFAR-10: trials stop at their held-out target, trials that
miss their budget are in the results and the report, and a rerun skips what finished."""

from __future__ import annotations

import json
import subprocess
import sys

from launch import HANG_S, ROOT, env_with


def study(out, data, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchscale.cli", "study", "--out", str(out), "--data", str(data), "--batch-sizes",
         "32,64", "--lr-points", "2", "--holdout", "40", "--width", "4", "--budget-steps", "6", "--budget-epochs", "2",
         "--micro-batch", "16", "--slots", "2", "--extend-edges", "0",
         "--rounds", "1",  # the fixed grid: the rounds are tested on the noisy quadratic (test_study_rounds.py)
         *flags],
        cwd=ROOT, env=env_with(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=2 * HANG_S)  # 42-56 s on an idle machine


def test_trials_stop_at_the_target_and_misses_are_reported(tiny_cifar, tmp_path):
    easy = study(tmp_path / "easy", tiny_cifar, "--target", "0.01", "--paper-epochs", "1", "--paper-lr-points", "1")
    assert easy.returncode == 0, easy.stderr[-2000:]
    results = json.loads((tmp_path / "easy" / "results.json").read_text())
    assert len(results["trials"]) == 4 and {t["status"] for t in results["trials"]} == {"reached"}
    for folder in (tmp_path / "easy" / "curve").iterdir():
        summary = json.loads((folder / "summary.json").read_text())
        trial = summary["trial"]
        # Ended by the target at its first whole-split look, long before the 6-step budget, judged on the holdout.
        assert trial["ended"] == "target" and trial["reached"]["step"] == 1 and trial["split"] == "holdout"
        # It stopped inside its first epoch: no whole epoch done (a partial one no longer counts), one step.
        assert summary["config"]["holdout"] == 40 and summary["epochs_completed"] == 0
        assert summary["steps_completed"] == 1
        assert not (folder / "checkpoint-2.pth.tar").exists()

    # The paper grid where 4 workers' batches fit the 280 training images: at its LR, at a tuned one (one LR per
    # batch here: stage 1's best for the global batch where it has one), and the batch-norm control.
    paper = {row["per_worker_batch"]: row for row in results["paper"]}
    for b in (8, 16, 32, 64):
        assert "final_test_acc" in paper[b]["paper"] and len(paper[b]["grid"]) == 1
    assert paper[8]["grid"][0]["peak_lr"] == next(b["lr"] for b in results["best"] if b["batch"] == 32)
    # No stage-1 trial at global batch 128: the grid is the paper's LR, whose run is the paper-LR one.
    assert paper[32]["grid"][0]["peak_lr"] == 0.4 and paper[32]["tuned"]["final_test_acc"] == paper[32]["paper"][
        "final_test_acc"] and not (tmp_path / "easy" / "paper" / "b32-lr0.4-s42").exists()
    assert "final_test_acc" in paper[8]["control"] and "control" not in paper[16]
    assert "paper" not in paper[128] and "paper" not in paper[256]
    report = (tmp_path / "easy" / "report.md").read_text()
    assert "## The paper's grid: 4 workers, 1 epoch" in report and "Not comparable with the paper's column" in report

    hard = study(tmp_path / "hard", tiny_cifar, "--target", "0.99", "--no-paper")
    assert hard.returncode == 0, hard.stderr[-2000:]
    results = json.loads((tmp_path / "hard" / "results.json").read_text())
    assert len(results["trials"]) == 4 and {t["status"] for t in results["trials"]} <= {"missed", "diverged"}
    assert results["fit"] is None and all(b["steps"] is None and b["missed"] == 2 for b in results["best"])
    report = (tmp_path / "hard" / "report.md").read_text()
    assert "No LR reached the target within the budget for B = 32, 64" in report
    assert report.count("| missed |") + report.count("| diverged |") == 4

    again = study(tmp_path / "easy", tiny_cifar, "--target", "0.01", "--paper-epochs", "1", "--paper-lr-points", "1")
    assert again.returncode == 0, again.stderr[-2000:]
    # One stage per batch size, in ascending order; each plans from its trials' records, so nothing runs again.
    assert again.stdout.index("curve B=32: 2 of 2 already finished, skipped") < again.stdout.index(
        "curve B=64: 2 of 2 already finished, skipped")
    assert "paper: 7 of 7 already finished, skipped" in again.stdout
