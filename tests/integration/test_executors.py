"""Where a sweep's trainings run: several at once here, or a job array on a real (one-node) SLURM cluster,
preempted mid-run and requeued; every way ends with the same weights."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch import HANG_S, env_with, pending, same_weights, state_of, until
from slurm_cluster import cluster

from batchscale.study.sweep import SweepConfig, sweep

RUNS = ("b16-w1-linear-lr0.1-s42", "b32-w1-linear-lr0.1-s42")


def train_args(data: Path) -> tuple[str, ...]:
    return ("--train-dir", str(data), "--val-dir", str(data), "--width", "4", "--no-download", "--deterministic",
            "--warmup-epochs", "1", "--checkpoint-every-steps", "2", "--no-cuda")


def sweep_command(out: Path, data: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "batchscale.cli", "sweep", "--out", str(out), "--batch-sizes", "16,32", "--epochs",
            "2", *flags, "--", *train_args(data)]


@pytest.fixture(autouse=True, scope="module")
def one_thread_each():
    """The same threads per run whatever the slots: bit-identical float sums (the pool otherwise splits the cores)."""
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    if before is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = before


@pytest.fixture(scope="module")
def one_at_a_time(tiny_cifar, tmp_path_factory, one_thread_each) -> Path:
    out = tmp_path_factory.mktemp("sequential")
    sweep(SweepConfig(out=str(out), batch_sizes=(16, 32), epochs=2, train_args=train_args(tiny_cifar)),
          say=lambda *a, **k: None)
    return out


def test_two_local_slots_run_side_by_side_and_give_the_same_weights(tiny_cifar, one_at_a_time, tmp_path):
    lines: list[str] = []
    sweep(SweepConfig(out=str(tmp_path), batch_sizes=(16, 32), epochs=2, slots=2, train_args=train_args(tiny_cifar)),
          say=lambda text, **kw: lines.append(text))
    assert any(line.startswith("[sweep] 0 done, 2 running, 0 queued") for line in lines)  # both at once
    assert lines[-1].startswith("[sweep] 2 done, 0 running, 0 queued, 0 failed")
    for run in RUNS:
        assert same_weights(one_at_a_time / run / "checkpoint-2.pth.tar", tmp_path / run / "checkpoint-2.pth.tar")


def test_a_failed_run_names_its_log_and_the_others_finish(tiny_cifar, tmp_path):
    config = SweepConfig(out=str(tmp_path), batch_sizes=(16, 400), epochs=1, slots=2, train_args=train_args(tiny_cifar))
    with pytest.raises(Exception, match=r"1 of 2 runs failed: b400-w1-linear-lr0.1-s42 \(failed; see .*train.log\)"):
        sweep(config, say=lambda *a, **k: None)
    assert json.loads((tmp_path / RUNS[0] / "summary.json").read_text())["epochs_completed"] == 1


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    with cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def stopped_trainer(out: Path, sweep_process: subprocess.Popen) -> tuple[str, int]:
    """The run whose training stopped itself at its fault point (state T), and that training's pid: the job is queued
    and started by SLURM, no event of ours to wait on."""

    def stopped() -> tuple[str, int] | None:
        for run in RUNS:
            lock = out / run / ".batchscale.lock"
            text = lock.read_text() if lock.is_file() else ""
            if text.startswith("pid ") and state_of(int(text.split()[1])) == "T":
                return run, int(text.split()[1])
        return None

    return until(stopped, sweep_process, "an array task's training stopping at step 3")


def test_a_slurm_job_array_survives_preemption_and_ends_like_a_local_sweep(slurm, tiny_cifar, one_at_a_time, tmp_path):
    out = tmp_path / "sweep"
    once = tmp_path / "fired"
    env = {**env_with(**slurm), "BATCHSCALE_FAULT": "step:3", "BATCHSCALE_FAULT_ACTION": "stop",
           "BATCHSCALE_FAULT_ONCE": str(once)}
    waiting = subprocess.Popen(sweep_command(out, tiny_cifar, "--executor", "slurm", "--cpus-per-run", "1"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    until(lambda: once.exists() and (out / "jobs.json").is_file(), waiting, "the job array submitted and at step 3")
    jobs = json.loads((out / "jobs.json").read_text())
    stopped, pid = stopped_trainer(out, waiting)
    # What SLURM sends before a preemption or a time limit, to every process of the job.
    subprocess.run(["scancel", "--signal=USR1", jobs[stopped]], check=True, env=env_with(**slurm))
    # slurmd delivers it a moment later; then let the training go on.
    until(lambda: pending(pid, signal.SIGUSR1), waiting, "slurmd delivering SIGUSR1 to the training")
    os.kill(pid, signal.SIGCONT)
    stdout, stderr = waiting.communicate(timeout=HANG_S)
    assert waiting.returncode == 0, stderr[-3000:]
    assert "[sweep] 2 done, 0 running, 0 queued, 0 failed" in stdout
    log = (out / stopped / "train.log").read_text()
    # SLURM's signal reaches the training twice: from slurmd, and as SIGTERM from its array task, which forwards
    # what it gets; whichever the training handles first names the stop. Either way it saved at step 3.
    assert re.search(r"stopped by SIG(USR1|TERM) after step 3 ", log), log[-2000:]
    assert "after step 3 (step 3 of " in log  # the requeued job resumed from the step checkpoint
    other = next(run for run in RUNS if run != stopped)
    assert (out / other / "train.log").read_text().count("batchscale:") == 1  # only the preempted task requeued
    for run in RUNS:
        assert same_weights(one_at_a_time / run / "checkpoint-2.pth.tar", out / run / "checkpoint-2.pth.tar")
    status = subprocess.run([sys.executable, "-m", "batchscale.cli", "sweep", "--status", "--out", str(out)],
                            capture_output=True, text=True, env=env_with(**slurm))
    assert status.returncode == 0 and f"{RUNS[0]}: done, epoch 2/2, job {jobs[RUNS[0]]}" in status.stdout


def test_no_wait_submits_and_status_follows_the_runs(slurm, tiny_cifar, tmp_path):
    out = tmp_path / "sweep"
    submitted = subprocess.run(sweep_command(out, tiny_cifar, "--executor", "slurm", "--no-wait", "--epochs", "1"),
                               capture_output=True, text=True, env=env_with(**slurm), timeout=HANG_S)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert f"batchscale sweep --status --out {out}" in submitted.stdout
    deadline = time.monotonic() + HANG_S
    while True:
        status = subprocess.run([sys.executable, "-m", "batchscale.cli", "sweep", "--status", "--out", str(out)],
                                capture_output=True, text=True, env=env_with(**slurm))
        assert status.returncode == 0, status.stderr
        if "[sweep] 2 done" in status.stdout:
            break
        assert "failed" not in status.stdout.split(";")[0].replace("0 failed", ""), status.stdout
        assert time.monotonic() < deadline, status.stdout
        time.sleep(1)  # the cluster runs them; --status is what a user would poll
