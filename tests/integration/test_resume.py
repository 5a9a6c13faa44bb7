"""Resuming trains exactly the steps an uninterrupted run trains, and summary.json says what ran."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from launch import one_line, same_weights, train


def records(log_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def three_epochs(tiny_cifar, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("three-epochs")
    result = train(tiny_cifar, out, "--checkpoint-every-steps", "3", epochs=3)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_resume_inside_an_early_epoch_trains_every_later_epoch_whole(tiny_cifar, three_epochs, tmp_path):
    # Killed at step 5 of epoch 1 (of 3) with a step checkpoint at 3: the resume offset applies to epoch 1 only.
    killed = train(tiny_cifar, tmp_path, "--checkpoint-every-steps", "3", epochs=3, env={"BATCHSCALE_FAULT": "step:5"})
    assert killed.returncode != 0 and (tmp_path / "checkpoint-1.pth.tar.partial").exists()
    again = train(tiny_cifar, tmp_path, "--checkpoint-every-steps", "3", epochs=3)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "after step 3 (step 3 of epoch 1)" in again.stdout
    assert [r["images"] for r in records(tmp_path)] == [320, 320, 320]
    assert [r["step"] for r in records(tmp_path)] == [10, 20, 30]
    assert same_weights(three_epochs / "checkpoint-3.pth.tar", tmp_path / "checkpoint-3.pth.tar")


def test_more_epochs_are_refused_where_the_schedule_depends_on_them(tiny_cifar, tmp_path):
    assert train(tiny_cifar, tmp_path, "--lr-schedule", "cosine", epochs=1).returncode == 0
    extended = train(tiny_cifar, tmp_path, "--lr-schedule", "cosine", epochs=2)
    assert extended.returncode == 2
    line = one_line(extended.stderr)
    assert "--epochs 1" in line and "cosine" in line and "--lr-schedule step" in line


def test_flags_changed_on_resume_are_applied_and_listed_in_the_summary(tiny_cifar, tmp_path):
    first = train(tiny_cifar, tmp_path, "--lr-schedule", "step", epochs=1)
    assert first.returncode == 0, first.stderr[-3000:]
    # Extending a finished run is allowed where the schedule's LR does not depend on --epochs.
    more = train(tiny_cifar, tmp_path, "--lr-schedule", "step", "--wd", "0.001", "--momentum", "0.8", "--no-nesterov",
                 "--precision", "bf16", epochs=2)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "--wd 0.0005 -> 0.001" in more.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    changed = {c["setting"]: (c["from"], c["to"], c["step"]) for c in summary["changes"]}
    assert changed == {"--epochs": (1, 2, 10), "--wd": (0.0005, 0.001, 10), "--momentum": (0.9, 0.8, 10),
                       "--nesterov": (True, False, 10), "--precision": ("auto", "bf16", 10)}
    assert summary["config"]["wd"] == 0.001 and summary["precision"] == "bf16" and summary["epochs_completed"] == 2
    group = torch.load(tmp_path / "checkpoint-2.pth.tar", weights_only=True)["optimizer"]["param_groups"][0]
    assert (group["weight_decay"], group["momentum"], group["nesterov"]) == (0.001, 0.8, False)  # what really ran


def test_a_different_split_of_the_same_global_batch_is_refused(tiny_cifar, tmp_path):
    # 2 simulated workers x 16 was trained; 1 x 32 has the same global batch but half the peak LR.
    assert train(tiny_cifar, tmp_path, "--simulate-workers", "2", "--lr-schedule", "step", batch=16, epochs=1).returncode == 0
    single = train(tiny_cifar, tmp_path, "--lr-schedule", "step", batch=32, epochs=2)
    assert single.returncode == 2
    line = one_line(single.stderr)
    assert "2 worker(s) x --batch-size 16" in line and "1 worker(s) x --batch-size 32" in line and "peak LR" in line
    resumed = train(tiny_cifar, tmp_path, "--simulate-workers", "2", "--lr-schedule", "step", batch=16, epochs=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_no_resume_in_a_finished_folder_leaves_nothing_of_the_old_run(tiny_cifar, tmp_path):
    assert train(tiny_cifar, tmp_path, epochs=2).returncode == 0
    killed = train(tiny_cifar, tmp_path, "--no-resume", "--width", "4", epochs=2,
                   env={"BATCHSCALE_FAULT": "after-checkpoint:1"})
    assert killed.returncode != 0
    assert not (tmp_path / "summary.json").exists()  # a sweep must not take this run as done
    assert not (tmp_path / "checkpoint-2.pth.tar").exists()  # nor resume the old run's epoch 2
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    again = train(tiny_cifar, tmp_path, "--width", "4", epochs=2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "checkpoint-1.pth.tar after epoch 1" in again.stdout


def test_rerunning_a_finished_run_with_other_flags_reports_what_ran(tiny_cifar, tmp_path):
    assert train(tiny_cifar, tmp_path, "--lr-schedule", "step", epochs=1).returncode == 0
    again = train(tiny_cifar, tmp_path, "--lr-schedule", "step", "--wd", "0.01", epochs=1)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["wd"] == 0.0005 and summary["changes"] == []  # nothing trained with 0.01


def test_a_trial_killed_mid_epoch_resumes_its_evaluations_and_budget(tiny_cifar, tmp_path):
    # A study trial: held-out split (280 images left: 17 steps per epoch), evaluations inside epochs, and a
    # 25-step budget that ends inside epoch 2.
    trial = ("--holdout", "40", "--eval-growth", "1.05", "--target-accuracy", "0.99", "--stop-at-target",
             "--max-steps", "25", "--lr-schedule", "constant", "--checkpoint-every-steps", "4", "--batch-size", "16")
    whole = train(tiny_cifar, tmp_path / "whole", *trial, epochs=5)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = train(tiny_cifar, tmp_path / "cut", *trial, epochs=5, env={"BATCHSCALE_FAULT": "step:23"})
    assert killed.returncode != 0
    again = train(tiny_cifar, tmp_path / "cut", *trial, epochs=5)
    assert again.returncode == 0, again.stderr[-3000:]
    first, second = (json.loads((tmp_path / d / "summary.json").read_text())["trial"] for d in ("whole", "cut"))
    assert first["ended"] == second["ended"] == "budget" and first["reached"] is None
    drop = ("train_seconds",)
    assert [{k: v for k, v in e.items() if k not in drop} for e in first["evals"]] == \
           [{k: v for k, v in e.items() if k not in drop} for e in second["evals"]]
    assert first["evals"][-1]["step"] == 25
    assert [r["step"] for r in records(tmp_path / "cut")] == [17, 25]
    assert [r["images"] for r in records(tmp_path / "cut")] == [272, 128]
    assert same_weights(tmp_path / "whole" / "checkpoint-2.pth.tar", tmp_path / "cut" / "checkpoint-2.pth.tar")
