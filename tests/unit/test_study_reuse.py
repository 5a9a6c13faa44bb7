"""A finished study rerun with other settings reuses nothing it did not run: the study driven through its command
line with a stand-in for training (study_fakes.py) that records each trial's full config as the trainer does (parsed
from the very flags it was sent) and reaches the target at a known step, and names what it was sent to train."""

from __future__ import annotations

from pathlib import Path

import pytest
from launch import cli, one_line
from study_fakes import RecordingTraining

from batchscale.study import study as study_module


@pytest.fixture
def training(monkeypatch) -> RecordingTraining:
    fake = RecordingTraining()
    monkeypatch.setattr(study_module, "execute", fake)
    monkeypatch.setattr("batchscale.study.runs.pyplot", lambda: None)  # the report's plots are not checked here
    monkeypatch.setattr("batchscale.study.study_report.write_plots", lambda *a, **k: [])
    return fake


def study_flags(out: Path, data: Path, *more: str) -> list[str]:
    return ["study", "--out", str(out), "--data", str(data), "--batch-sizes", "16,32,64", "--lr-points", "2",
            "--lr-spacing", "2", "--extend-edges", "1", "--holdout", "32", "--width", "4", "--seeds", "1",
            "--no-paper", "--budget-steps", "60", "--target", "0.25", *more]


@pytest.mark.parametrize("change,flag,old", [
    (["--target", "0.2"], "--target", "0.25"),
    (["--budget-steps", "30"], "--budget-steps", "60"),
    (["--train-subset", "64"], "--train-subset", "0"),
    (["--holdout", "40"], "--holdout", "32"),
    (["--width", "8"], "--width", "4"),
    (["--warmup-images", "128"], "--warmup-images", "24576"),
    (["--schedule", "linear"], "--schedule", "constant"),
    (["--micro-batch", "8"], "--micro-batch", "16"),
    (["--eval-growth", "1.1"], "--eval-growth", "1.2"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_a_finished_study_rerun_with_a_setting_that_defines_its_trials_is_refused(tiny_cifar, tmp_path, capsys,
                                                                                   training, change, flag, old):
    out = tmp_path / "st"
    code, _ = cli(*study_flags(out, tiny_cifar), capsys=capsys)
    assert code == 0 and training.sent
    recorded = (out / "study.json").read_bytes()
    report = (out / "results.json").read_bytes()
    training.sent.clear()
    code, err = cli(*study_flags(out, tiny_cifar, *change), capsys=capsys)
    line = one_line(err)
    assert code == 2 and f"{change[0]} {change[1]}" in line and f"{flag} {old}" in line and "--out" in line
    assert training.sent == []  # nothing trained
    assert (out / "study.json").read_bytes() == recorded and (out / "results.json").read_bytes() == report


def test_each_trial_is_checked_against_its_own_record_without_study_json(tiny_cifar, tmp_path, capsys, training):
    """The trials' records are the ground truth: with study.json gone (or from another version), a trial run to
    another target is still not reused, and the line names the trial, both values and the study flag."""
    out = tmp_path / "st"
    assert cli(*study_flags(out, tiny_cifar), capsys=capsys)[0] == 0
    (out / "study.json").unlink()
    training.sent.clear()
    code, err = cli(*study_flags(out, tiny_cifar, "--target", "0.2"), capsys=capsys)
    line = one_line(err)
    assert code == 2 and "--target-accuracy 0.25 where this command gives 0.2 (--target)" in line
    assert "curve/b" in line and training.sent == []  # the first trial it reads, of whichever batch


def test_a_training_flag_after_the_dashes_that_defines_the_result_is_refused_one_that_does_not_is_not(
        tiny_cifar, tmp_path, capsys, training):
    out = tmp_path / "st"
    assert cli(*study_flags(out, tiny_cifar), capsys=capsys)[0] == 0
    first = sorted(training.sent)
    (out / "study.json").unlink()  # the per-trial check alone
    training.sent.clear()
    code, err = cli(*study_flags(out, tiny_cifar), "--", "--wd", "0.001", capsys=capsys)
    assert code == 2 and "--wd 0.0005 where this command gives 0.001" in one_line(err) and training.sent == []
    # Where it writes, what it keeps and how it is watched change nothing a trial measured: reused as it is.
    code, _ = cli(*study_flags(out, tiny_cifar, "--slots", "2"), "--", "--checkpoint-every-steps", "5",
                  "--finite-check-every", "7", capsys=capsys)
    assert code == 0 and training.sent == []
    assert len(first) == len(list((out / "curve").iterdir()))


def test_a_study_rerun_with_the_same_settings_or_more_seeds_reuses_what_it_ran(tiny_cifar, tmp_path, capsys, training):
    out = tmp_path / "st"
    assert cli(*study_flags(out, tiny_cifar), capsys=capsys)[0] == 0
    ran = set(training.sent)
    training.sent.clear()
    assert cli(*study_flags(out, tiny_cifar), capsys=capsys)[0] == 0 and training.sent == []
    flags = study_flags(out, tiny_cifar)
    flags[flags.index("--seeds") + 1] = "1,2"
    assert cli(*flags, capsys=capsys)[0] == 0
    assert training.sent and all(name.endswith("-s2") for name in training.sent) and not ran & set(training.sent)


def test_a_paper_run_with_other_epochs_is_not_reused(tiny_cifar, tmp_path, capsys, training):
    out = tmp_path / "st"
    flags = [f for f in study_flags(out, tiny_cifar) if f != "--no-paper"] + ["--paper-epochs", "2",
                                                                              "--paper-lr-points", "1"]
    assert cli(*flags, capsys=capsys)[0] == 0
    assert any(name.startswith("paper/") for name in training.sent)
    training.sent.clear()
    flags[flags.index("--paper-epochs") + 1] = "3"
    code, err = cli(*flags, capsys=capsys)
    line = one_line(err)
    assert code == 2 and "paper/" in line and "--epochs 2 where this command gives 3 (--paper-epochs)" in line
    assert training.sent == []
