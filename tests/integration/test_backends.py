"""Horovod and torch.distributed give the same training, and a dead rank ends the job instead of hanging."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launch import HANG_S, HOROVODRUN, ROOT, needs_horovod
from launch import TESTS as HERE
from workers import free_port


def launch(launcher: str, args: list[str], **kw) -> subprocess.CompletedProcess:
    if launcher == "horovodrun":
        cmd = [str(HOROVODRUN), "-np", "2", "-H", "localhost:2", sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def trajectory(launcher: str, flags: dict, out: Path) -> dict:
    result = launch(launcher, [str(HERE / "launched_worker.py"), "parity", str(out), json.dumps(flags)], timeout=HANG_S)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return torch.load(out, weights_only=True)


@needs_horovod
@pytest.mark.parametrize(
    "flags,tol",
    [
        ({}, 1e-5),
        ({"fp16_allreduce": True}, 2e-3),
        ({"batches_per_allreduce": 2}, 1e-5),
        ({"use_adasum": True}, 1e-5),
    ],
    ids=["average", "fp16", "accumulate-2", "adasum"],
)


def test_horovod_and_torch_distributed_train_alike(flags, tol, tmp_path):
    ours = trajectory("torchrun", flags, tmp_path / "torch.pt")
    theirs = trajectory("horovodrun", flags, tmp_path / "horovod.pt")
    assert len(ours["losses"]) == len(theirs["losses"]) == 5
    assert ours["losses"] == pytest.approx(theirs["losses"], rel=tol)
    assert len(set(ours["losses"])) > 1  # it trained: the loss moved
    for name, w in theirs["weights"].items():
        if w.is_floating_point():
            assert float((ours["weights"][name] - w).norm()) <= tol * max(1.0, float(w.norm())), name


@pytest.mark.parametrize("launcher", ["torchrun", pytest.param("horovodrun", marks=needs_horovod)])
def test_a_dead_rank_ends_the_job_in_bounded_time(launcher, tiny_cifar, tmp_path):
    env = {**os.environ, "BATCHSCALE_FAULT": "step:3:1", "OMP_NUM_THREADS": "1"}  # rank 1 is SIGKILLed at step 3
    args = [str(ROOT / "train.py"), "--train-dir", str(tiny_cifar), "--val-dir", str(tiny_cifar), "--log-dir",
            str(tmp_path), "--epochs", "2", "--batch-size", "16", "--width", "4", "--no-download", "--no-progress"]
    # launch()'s timeout is the bound: a job that hung would raise TimeoutExpired and fail the test.
    result = launch(launcher, args, env=env, timeout=HANG_S)
    assert result.returncode != 0
    assert not (tmp_path / "summary.json").exists()
