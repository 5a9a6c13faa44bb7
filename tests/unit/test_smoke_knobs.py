"""A newcomer's knobs: --train-subset for train, sweep and study, and pass-through flags a sweep or study would
otherwise override without a word."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchscale.config import Config
from batchscale.errors import ConfigError
from batchscale.study.study import StudyConfig, batch_trials, common_args
from batchscale.study.sweep import Run, SweepConfig, command
from batchscale.training.loop import train


def tiny(data, log_dir, **changes) -> Config:
    settings = {"train_dir": str(data), "val_dir": str(data), "log_dir": str(log_dir), "download": False,
                "no_cuda": True, "width": 4, "batch_size": 32, "epochs": 1, "progress": False}
    return Config(**{**settings, **changes})


def test_train_subset_trains_on_only_that_many_images(tiny_cifar, tmp_path):
    summary = train(tiny(tiny_cifar, tmp_path / "run", train_subset=96))
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["images"] == 96 and record["step"] == 3  # 96 of the 320 images, 3 steps of 32
    assert summary["config"]["train_subset"] == 96


def test_train_subset_is_taken_after_the_holdout_so_the_held_out_images_stay_the_same(tiny_cifar, tmp_path):
    summary = train(tiny(tiny_cifar, tmp_path / "run", train_subset=64, holdout=100, target_accuracy=0.5))
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["images"] == 64 and summary["target_split"] == "holdout"


def test_a_subset_larger_than_the_data_is_said_and_the_real_count_recorded(tiny_cifar, tmp_path, capsys):
    # The tiny set has 320 training images; 100 held out leave 220, fewer than the 1000 asked for.
    summary = train(tiny(tiny_cifar, tmp_path / "run", train_subset=1000, holdout=100, target_accuracy=0.5))
    out = capsys.readouterr().out
    assert summary["train_images"] == 220 and summary["config"]["train_subset"] == 1000
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["train_images"] == 220
    assert "--train-subset 1000 is more than the 220 training images left after --holdout" in out
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["images"] == 6 * 32  # whole batches of the 220: 6 steps of 32


def test_a_subset_within_the_data_is_its_count_and_needs_no_note(tiny_cifar, tmp_path, capsys):
    summary = train(tiny(tiny_cifar, tmp_path / "run", train_subset=96))
    assert summary["train_images"] == 96 and "--train-subset" not in capsys.readouterr().out


def test_resuming_with_another_subset_is_refused(tiny_cifar, tmp_path):
    train(tiny(tiny_cifar, tmp_path / "run", train_subset=64))
    with pytest.raises(ConfigError, match="--train-subset 64"):
        train(tiny(tiny_cifar, tmp_path / "run", train_subset=96))


def test_negative_subset_is_refused():
    with pytest.raises(ConfigError, match="--train-subset must be an integer >= 0"):
        Config(train_subset=-1).validate()


def test_sweep_passes_its_subset_to_every_run(tmp_path):
    config = SweepConfig(out=str(tmp_path), train_subset=500, workers=(1, 2))
    for workers in (1, 2):
        args = command(config, Run(64, workers, "linear", 0.1, 42), tmp_path / "r")
        assert args[args.index("--train-subset") + 1] == "500"


def test_study_passes_its_subset_to_every_trial_and_budgets_by_it(tiny_cifar):
    config = StudyConfig(data=str(tiny_cifar), holdout=20, train_subset=100, batch_sizes=(16, 32), budget_epochs=2,
                         budget_steps=10**6)
    assert config.train_images == 100
    trials = [t for b in config.batch_sizes for t in batch_trials(config, b, (0.1,))]
    assert all(t.args[t.args.index("--train-subset") + 1] == "100" for t in trials)
    assert max(t.steps for t in trials) == 13  # 2 epochs of 100 images at batch 16, not of the 300 the folder holds


@pytest.mark.parametrize("passed,sweep_flag", [
    (["--epochs", "1"], "--epochs"), (["--epochs=1"], "--epochs"), (["--epoch", "1"], "--epochs"),
    (["--batch-size", "8"], "--batch-sizes"), (["--seed", "3"], "--seeds"), (["--log-dir", "x"], "--out"),
    (["--base-lr", "0.2"], "--base-lrs"), (["--train-subset", "10"], "--train-subset"),
])
def test_sweep_refuses_a_pass_through_flag_it_would_override(passed, sweep_flag, tmp_path):
    config = SweepConfig(out=str(tmp_path), train_args=("--width", "8", *passed))
    with pytest.raises(ConfigError) as err:
        config.validate()
    assert f"use batchscale sweep {sweep_flag}" in str(err.value) and "after --" in str(err.value)


def test_sweep_keeps_pass_through_flags_it_does_not_set(tmp_path):
    config = SweepConfig(out=str(tmp_path), train_args=("--width", "8", "--wd", "0.001", "--no-download"))
    config.validate()
    args = command(config, Run(64, 1, "linear", 0.1, 42), tmp_path / "r")
    assert args[args.index("--width") + 1] == "8" and args[args.index("--wd") + 1] == "0.001"


@pytest.mark.parametrize("passed,study_flag", [
    (["--width", "16"], "--width"), (["--epochs", "1"], "--budget-epochs"), (["--target-accuracy", "0.5"], "--target"),
    (["--train-dir", "/x"], "--train-dir"), (["--seed", "1"], "--seeds"), (["--max-steps", "5"], "--budget-steps"),
])
def test_study_refuses_a_pass_through_flag_it_would_override(passed, study_flag):
    with pytest.raises(ConfigError, match=f"use batchscale study {study_flag}"):
        StudyConfig(train_args=tuple(passed)).validate()


def test_study_honours_pass_through_flags_it_only_defaults(tiny_cifar):
    config = StudyConfig(data=str(tiny_cifar), holdout=20, batch_sizes=(16,), train_args=("--val-batch-size", "50"))
    config.validate()
    args = common_args(config)
    assert args[len(args) - 1 - args[::-1].index("--val-batch-size") + 1] == "50"  # the last one wins, and is ours


def test_the_default_log_dir_keeps_runs_that_cannot_share_a_folder_apart(tiny_cifar, tmp_path, monkeypatch):
    """The first experiment left a checkpoint; a second one with another width used to stop with '--width 4, this run
    has 8'. With the default --log-dir each gets its own folder, and rerunning the first finds its own again."""
    monkeypatch.chdir(tmp_path)
    common = {"train_dir": str(tiny_cifar), "val_dir": str(tiny_cifar), "download": False, "no_cuda": True,
              "batch_size": 32, "epochs": 1, "progress": False}
    first = train(Config(width=4, **common))
    second = train(Config(width=8, **common))
    assert first["config"]["log_dir"] != second["config"]["log_dir"]
    assert Path(first["config"]["log_dir"]).parent == Path("logs")
    assert "w4" in first["config"]["log_dir"] and "w8" in second["config"]["log_dir"]
    again = train(Config(width=4, **common))  # the same command: the same folder, found complete
    assert again["config"]["log_dir"] == first["config"]["log_dir"] and again["epochs_completed"] == 1


def test_run_names_differ_in_exactly_what_a_resume_refuses():
    base = Config()
    refused = [Config(width=8), Config(seed=1), Config(batch_size=128), Config(batches_per_allreduce=2),
               Config(lr_scaling="sqrt"), Config(lr_schedule="step"), Config(holdout=100), Config(train_subset=10),
               Config(epochs=10), Config(simulate_workers=2)]
    names = {c.run_name(1) for c in refused} | {base.run_name(1), base.run_name(2)}
    assert len(names) == len(refused) + 2
    # What a resume applies and records may change without moving the run to another folder.
    assert Config(base_lr=0.2, wd=0.001, momentum=0.8, epochs=50).run_name(1) == base.run_name(1)
    assert Config(lr_schedule="step", epochs=90).run_name(1) == Config(lr_schedule="step", epochs=60).run_name(1)


def test_an_explicit_log_dir_is_used_as_given(tmp_path):
    assert Config(log_dir=str(tmp_path / "logs")).for_run(1).log_dir == str(tmp_path / "logs")


def test_the_issues_sweep_command_is_refused_in_one_line_before_anything_runs(tmp_path, capsys):
    from batchscale.cli import main

    assert main(["sweep", "--out", str(tmp_path / "s"), "--", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("batchscale sweep: error: --epochs (use batchscale sweep --epochs) after -- is set by batchscale "
                   "sweep for every run; give it before -- as shown")
    assert not (tmp_path / "s").exists()
