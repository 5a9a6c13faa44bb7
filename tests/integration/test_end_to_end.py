"""Whole runs on real images: one process and torchrun, outputs, kill-and-resume, two torchrun 'machines'."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from launch import HANG_S, ROOT, TORCHRUN, needs_horovod, train, weights
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from workers import free_port

LAUNCHERS = ["python", "torchrun", pytest.param("horovodrun", marks=needs_horovod)]


def launch(launcher: str, data: Path, log_dir: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    """2 epochs at global batch 32: python on one rank, torchrun or horovodrun on two."""
    ranks = 1 if launcher == "python" else 2
    return train(data, log_dir, ranks=ranks, launcher=launcher, env={"BATCHSCALE_FAULT": fault} if fault else None)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_epochs_write_every_output_and_resume_exactly(launcher, tiny_cifar, tmp_path):
    full = tmp_path / "full"
    result = launch(launcher, tiny_cifar, full)
    assert result.returncode == 0, result.stderr[-3000:]

    summary = json.loads((full / "summary.json").read_text())
    world = 1 if launcher == "python" else 2
    assert summary["world_size"] == world and summary["global_batch"] == 32
    assert summary["backend"] == {"python": "single", "torchrun": "torch", "horovodrun": "horovod"}[launcher]
    assert summary["epochs_completed"] == 2 and summary["config"]["width"] == 8
    assert summary["images_per_sec"] > 0 and summary["train_seconds"] <= summary["wall_seconds"]
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["images"] == 320 for r in records)  # 10 steps x global batch 32, every rank's images counted
    assert summary["final_val_acc"] == records[-1]["val_acc"]
    assert summary["best_val_acc"] == max(r["val_acc"] for r in records)
    for r in records:  # validation divides by the 200 test images exactly
        assert abs(r["val_acc"] * 200 - round(r["val_acc"] * 200)) < 1e-9

    events = EventAccumulator(str(full)).Reload()
    assert len(events.Scalars("train/lr")) == 20  # one per step (10 steps an epoch: fewer than 20 points' worth)
    # Changed deliberately (issue 22): every scalar is on the optimizer-step axis, epoch figures at the epoch's last step.
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "perf/images_per_sec", "perf/epoch_seconds"):
        assert [e.step for e in events.Scalars(tag)] == [10, 20]

    # Killed right after epoch 1's checkpoint, then rerun: resumes at epoch 2 and ends bit-identical.
    resumed = tmp_path / "resumed"
    killed = launch(launcher, tiny_cifar, resumed, fault="after-checkpoint:1")
    assert killed.returncode != 0
    assert (resumed / "checkpoint-1.pth.tar").exists() and not (resumed / "checkpoint-2.pth.tar").exists()
    again = launch(launcher, tiny_cifar, resumed)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "checkpoint-1.pth.tar after epoch 1" in again.stdout
    want, got = weights(full / "checkpoint-2.pth.tar"), weights(resumed / "checkpoint-2.pth.tar")
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert json.loads(lines[1])["val_acc"] == records[1]["val_acc"]


def test_finished_run_rerun_does_no_more_training(tiny_cifar, tmp_path):
    assert launch("python", tiny_cifar, tmp_path).returncode == 0
    before = (tmp_path / "checkpoint-2.pth.tar").stat().st_mtime_ns
    rerun = launch("python", tiny_cifar, tmp_path)
    assert rerun.returncode == 0 and "already complete (2 epoch(s)" in rerun.stdout  # was "resumed ... after epoch 2"
    assert (tmp_path / "checkpoint-2.pth.tar").stat().st_mtime_ns == before
    assert json.loads((tmp_path / "summary.json").read_text())["epochs_completed"] == 2


def test_two_torchrun_launchers_train_together_as_two_nodes(tiny_cifar, tmp_path):
    port = free_port()
    args = ["--train-dir", str(tiny_cifar), "--val-dir", str(tiny_cifar), "--log-dir", str(tmp_path), "--epochs", "1",
            "--batch-size", "16", "--width", "4", "--no-download", "--no-progress", "--no-cuda"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [*TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "batchscale-test", str(ROOT / "train.py"), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=HANG_S) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [o[1][-2000:] for o in outputs]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "torch"
    # Only one process (global rank 0) prints the epoch line.
    assert sum("epoch   1" in out for out, _ in outputs) == 1
