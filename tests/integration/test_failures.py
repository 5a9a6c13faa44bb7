"""Concurrent runs, signals, full disks and divergence: each ends in one line and a documented exit code,
and nothing wrong is saved or reported as a success."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from launch import HANG_S, command, env_with, one_line, pending, same_weights, start, state_of, train, train_args, until

from batchscale import checkpoint
from batchscale.config import Config
from batchscale.errors import Diverged
from batchscale.parallel.base import Backend

STOPPED, DIVERGED, NO_SPACE = 75, 3, 4


def wait_until_stopped(pid: int, parent: subprocess.Popen) -> None:
    """Blocks until process `pid` is in state T (it SIGSTOPped itself at a fault point); fails if `parent` exits."""
    until(lambda: state_of(pid) == "T", parent, f"pid {pid} stopping at its fault point")


# -- one run per folder ---------------------------------------------------------------------------------------


def test_a_second_run_on_a_busy_folder_is_refused_and_a_dead_runs_lock_blocks_nobody(tiny_cifar, tmp_path):
    first = start(tiny_cifar, tmp_path, env={"BATCHSCALE_FAULT": "step:3", "BATCHSCALE_FAULT_ACTION": "stop"})
    try:
        wait_until_stopped(first.pid, first)
        second = train(tiny_cifar, tmp_path)
        assert second.returncode == 2
        line = one_line(second.stderr)
        assert f"pid {first.pid}" in line and "another run" in line and "--log-dir" in line
        assert not list(tmp_path.glob("checkpoint-*"))  # it wrote nothing
    finally:
        first.kill()
        first.wait()
    third = train(tiny_cifar, tmp_path)  # the killed run's lock died with it
    assert third.returncode == 0, third.stderr[-3000:]


# -- signals ----------------------------------------------------------------------------------------------------


def test_sigterm_saves_a_step_checkpoint_and_the_rerun_ends_identical(tiny_cifar, tmp_path_factory):
    reference, stopped = tmp_path_factory.mktemp("reference"), tmp_path_factory.mktemp("stopped")
    assert train(tiny_cifar, reference).returncode == 0
    result = train(tiny_cifar, stopped, env={"BATCHSCALE_FAULT": "step:14", "BATCHSCALE_FAULT_ACTION": "term"})
    assert result.returncode == STOPPED
    line = one_line(result.stderr)
    assert "SIGTERM" in line and "after step 14" in line and "checkpoint-2.pth.tar.partial" in line
    where = line.split(" after ")[1].split(";")[0]  # the stop line's point; the resume line names it the same way
    assert where == "step 14 (step 4 of epoch 2)"  # epochs counted from 1, as epoch lines
    assert checkpoint.load(stopped / "checkpoint-2.pth.tar.partial")["step"] == 14
    # The stop is kept in the run folder (a launcher may take stderr with it) and said at the next start, once.
    record = json.loads((stopped / "stopped.json").read_text())
    assert record["step"] == 14 and record["message"] in line and "SIGTERM" in record["message"]
    again = train(tiny_cifar, stopped)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"after {where}" in again.stdout
    assert f"note: the last run in {stopped} was stopped by SIGTERM after {where}; saved " in again.stdout
    assert not (stopped / "stopped.json").exists()
    assert same_weights(reference / "checkpoint-2.pth.tar", stopped / "checkpoint-2.pth.tar")


def test_sigterm_to_torchrun_saves_once_for_all_ranks_and_resumes(tiny_cifar, tmp_path):
    # Rank 0 stops itself at step 3; torchrun gets SIGTERM (as from a scheduler) and passes it on to both ranks.
    args = train_args(tiny_cifar, tmp_path, "--finite-check-every", "2", batch=16)
    agent = subprocess.Popen(command(args, ranks=2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env_with(BATCHSCALE_FAULT="step:3:0", BATCHSCALE_FAULT_ACTION="stop"))
    children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children")
    rank0 = until(lambda: next((pid for pid in map(int, children.read_text().split()) if state_of(pid) == "T"), None),
                  agent, "rank 0 stopping at step 3")
    agent.send_signal(signal.SIGTERM)
    until(lambda: pending(rank0, signal.SIGTERM), agent, "torchrun passing SIGTERM on to rank 0")
    os.kill(rank0, signal.SIGCONT)
    out, err = agent.communicate(timeout=HANG_S)
    assert err.count("stopped by SIGTERM after step 4") == 1, err[-3000:]  # both ranks stopped at step 4; rank 0 says so
    assert "Rerun the same command" in err
    assert checkpoint.load(tmp_path / "checkpoint-1.pth.tar.partial")["step"] == 4
    assert not (tmp_path / "summary.json").exists()
    again = train(tiny_cifar, tmp_path, "--finite-check-every", "2", ranks=2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "after step 4 (step 4 of epoch 1)" in again.stdout


def test_an_interrupted_sweep_stops_its_training_and_leaves_no_orphan(tiny_cifar, tmp_path):
    import sys

    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "batchscale.cli", "sweep", "--out", str(out), "--batch-sizes", "32", "--epochs", "2",
           "--", "--train-dir", str(tiny_cifar), "--val-dir", str(tiny_cifar), "--width", "4", "--no-download"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BATCHSCALE_")}, "OMP_NUM_THREADS": "1",
           "BATCHSCALE_FAULT": "step:4", "BATCHSCALE_FAULT_ACTION": "stop", "BATCHSCALE_FAULT_ONCE": str(tmp_path / "once")}
    sweep = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lock = out / "b32-w1-linear-lr0.1-s42" / ".batchscale.lock"
    until(lambda: lock.exists() and lock.read_text().startswith("pid ") and (tmp_path / "once").exists(), sweep,
          "the sweep's training reaching its fault point")
    child = int(lock.read_text().split()[1])
    wait_until_stopped(child, sweep)
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=HANG_S)
    assert sweep.returncode == STOPPED, err[-3000:]
    assert "rerun" in err.splitlines()[-1]
    assert not Path(f"/proc/{child}").exists()  # the training ended with the sweep
    rerun = subprocess.run(cmd, capture_output=True, text=True, env={**env, "BATCHSCALE_FAULT": ""}, timeout=HANG_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((out / "b32-w1-linear-lr0.1-s42" / "summary.json").read_text())
    assert summary["epochs_completed"] == 2
    assert "step 4" in (out / "b32-w1-linear-lr0.1-s42" / "train.log").read_text()


# -- full disks -------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs: room for the logs and about three checkpoints of the width-8 model (1.4 MiB each)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()}); needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_found_before_training(tiny_cifar, small_disk):
    with open(small_disk / "filler", "wb") as f:
        f.write(b"\0" * (6 * 2**20 - 4096 * 4))
    result = train(tiny_cifar, small_disk / "logs")
    assert result.returncode == NO_SPACE
    line = one_line(result.stderr)
    assert "space" in line and str(small_disk) in line


def test_a_checkpoint_that_does_not_fit_ends_the_run_with_one_line_and_keeps_the_earlier_ones(tiny_cifar, small_disk, tmp_path):
    result = train(tiny_cifar, tmp_path / "logs", "--checkpoint-format", str(small_disk / "ck-{epoch}.pt"), epochs=6)
    assert result.returncode == NO_SPACE, result.stderr[-3000:]
    line = one_line(result.stderr)
    assert "no space left" in line and str(small_disk) in line and "--checkpoint-format" in line
    saved = sorted(small_disk.glob("ck-*.pt"))
    assert 1 <= len(saved) < 6 and all(checkpoint.load(p) for p in saved)
    assert not list(small_disk.glob(".*.tmp"))
    assert not (tmp_path / "logs" / "summary.json").exists()


def test_a_log_folder_that_fills_up_ends_the_run_with_one_line(tiny_cifar, small_disk, tmp_path):
    result = train(tiny_cifar, small_disk, "--checkpoint-format", str(tmp_path / "ck-{epoch}.pt"),
                   env={"BATCHSCALE_FAULT": "step:3", "BATCHSCALE_FAULT_ACTION": "fill",
                        "BATCHSCALE_FAULT_FILL": str(small_disk)})
    assert result.returncode == NO_SPACE, result.stderr[-3000:]
    line = one_line(result.stderr)
    assert "no space left" in line and "--log-dir" in line


# -- divergence -------------------------------------------------------------------------------------------------


def test_nan_from_the_last_step_of_an_epoch_is_never_saved(tiny_cifar, tmp_path):
    # The update of step 10 (the last of epoch 1) makes the weights NaN; its loss was still finite.
    result = train(tiny_cifar, tmp_path, env={"BATCHSCALE_FAULT": "step:10", "BATCHSCALE_FAULT_ACTION": "nan"})
    assert result.returncode == DIVERGED
    assert "epoch 1" in one_line(result.stderr)
    assert not (tmp_path / "checkpoint-1.pth.tar").exists() and not (tmp_path / "summary.json").exists()
    assert train(tiny_cifar, tmp_path).returncode == 0  # the rerun is not stuck on a poisoned checkpoint


def test_a_huge_learning_rate_is_reported_as_diverged_not_done(tiny_cifar, tmp_path):
    result = train(tiny_cifar, tmp_path, "--base-lr", "1e30", epochs=1)
    assert result.returncode == DIVERGED
    assert "NaN or infinite" in one_line(result.stderr)
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "checkpoint-1.pth.tar").exists()


def test_divergence_on_the_last_step_names_that_epoch(tiny_cifar, tmp_path):
    # NaN weights after step 9: the loss of step 10, the last of epoch 1, is the first non-finite one.
    result = train(tiny_cifar, tmp_path, env={"BATCHSCALE_FAULT": "step:9", "BATCHSCALE_FAULT_ACTION": "nan"})
    assert result.returncode == DIVERGED
    assert "at step 10 (epoch 1," in one_line(result.stderr)


def test_a_non_finite_checkpoint_on_disk_is_skipped_for_the_one_before(tiny_cifar, tmp_path):
    assert train(tiny_cifar, tmp_path).returncode == 0
    state = torch.load(tmp_path / "checkpoint-2.pth.tar", weights_only=True)
    next(iter(state["model"].values())).fill_(float("nan"))
    torch.save(state, tmp_path / "checkpoint-2.pth.tar")
    again = train(tiny_cifar, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "NaN or infinite" in again.stdout and "checkpoint-1.pth.tar after epoch 1" in again.stdout


def _fail_on_rank_one() -> list[int]:
    from batchscale.errors import BatchscaleError
    from batchscale.parallel.torchdist import TorchBackend

    backend = TorchBackend(Config(no_cuda=True))
    codes = []
    try:
        def diverge() -> None:
            if backend.rank == 1:
                raise Diverged("rank 1 diverged")

        backend.agree(diverge)
    except BatchscaleError as err:
        codes.append(err.exit_code)
    backend.finish()
    return codes


def test_every_rank_exits_with_the_failing_ranks_code():
    from workers import run_workers

    assert run_workers(_fail_on_rank_one, 2) == [[DIVERGED], [DIVERGED]]


def test_single_process_agree_raises_the_error_itself():
    with pytest.raises(Diverged):
        Backend(Config(no_cuda=True)).agree(lambda: (_ for _ in ()).throw(Diverged("x")))


def test_sigterm_while_an_mlflow_server_does_not_answer_ends_the_run_at_once(tiny_cifar, tmp_path):
    pytest.importorskip("mlflow")
    server = socket.socket()  # takes the connection and never answers, as a server that hangs
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(300)  # a bound on a hang, not a measurement: the run connects soon after it starts
    proc = start(tiny_cifar, tmp_path / "run", "--tracker", "tensorboard,mlflow",
                 env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{server.getsockname()[1]}"})
    try:
        connection, _ = server.accept()  # the run is waiting for the server's answer now
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
        connection.close()
    finally:
        proc.kill()
        server.close()
    # Killed by the signal itself: not ignored until MLflow's retries end, not a tracker error after the wait.
    assert proc.returncode == -signal.SIGTERM
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
