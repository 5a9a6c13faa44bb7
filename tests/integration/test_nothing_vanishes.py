"""Nothing vanishes, nothing is orphaned: a diverged run is a result with a status, a launcher that dies takes
its workers with it (after they saved), a folder that turns read-only mid-run is one line, and a trial's
summary counts whole epochs."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from launch import HANG_S, command, env_with, needs_horovod, one_line, state_of, train, train_args, until

from batchscale import checkpoint

STOPPED, DIVERGED, NO_SPACE = 75, 3, 4
SWEEP = [sys.executable, "-m", "batchscale.cli", "sweep"]


def sweep_flags(data: Path) -> list[str]:
    return ["--", "--train-dir", str(data), "--val-dir", str(data), "--width", "4", "--no-download", "--no-cuda",
            "--warmup-epochs", "0"]


def test_a_diverged_run_is_a_result_in_the_sweep_its_exit_code_and_its_report(tiny_cifar, tmp_path):
    out = tmp_path / "sweep"
    cmd = [*SWEEP, "--out", str(out), "--batch-sizes", "32", "--base-lrs", "0.1,1e30", "--epochs", "1",
           *sweep_flags(tiny_cifar)]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env_with(), timeout=HANG_S)
    diverged = "b32-w1-linear-lr1e+30-s42"
    assert first.returncode == DIVERGED, first.stderr[-3000:]
    line = one_line(first.stderr)
    assert "1 of 2 runs diverged" in line and diverged in line and "batchscale report" in line
    assert "NaN or infinite at step" in line  # the first non-finite step, as diverged.json and the report say
    assert "0 failed, 1 diverged" in first.stdout.splitlines()[-1]
    assert (out / diverged / "diverged.json").is_file() and not (out / diverged / "summary.json").exists()

    report = subprocess.run([sys.executable, "-m", "batchscale.cli", "report", str(out)], capture_output=True,
                            text=True, env=env_with(), timeout=HANG_S)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (out / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {diverged} "))
    assert "| diverged |" in row and "NaN or infinite" in row and "| 32 |" in row
    assert "b32-w1-linear-lr0.1-s42" in text

    stamp = (out / "b32-w1-linear-lr0.1-s42" / "summary.json").stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, env=env_with(), timeout=HANG_S)
    assert again.returncode == DIVERGED and "2 of 2 runs already done, skipped" in again.stdout
    assert (out / "b32-w1-linear-lr0.1-s42" / "summary.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2])
def test_a_torchrun_killed_by_a_signal_it_does_not_handle_leaves_no_orphan(tiny_cifar, tmp_path, sig):
    # torchrun dies at once on USR1/USR2; its workers, which used to train on alone, see it gone and stop.
    args = train_args(tiny_cifar, tmp_path, "--finite-check-every", "2", batch=16)
    agent = subprocess.Popen(command(args, ranks=2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env_with(BATCHSCALE_FAULT="step:3:0", BATCHSCALE_FAULT_ACTION="stop"),
                             start_new_session=True)
    with killed_after(agent):
        stop_the_launcher(agent, sig, tmp_path, "torchrun")


def stop_the_launcher(agent: subprocess.Popen, sig: int, tmp_path: Path, name: str) -> None:
    """Rank 0 has stopped itself at step 3; `sig` ends the launcher; rank 0 then runs on."""
    rank0 = until(lambda: next((pid for pid in descendants(agent.pid) if state_of(pid) == "T"), None), agent,
                  "rank 0 stopping at step 3")
    below = descendants(agent.pid)
    agent.send_signal(sig)
    assert agent.wait(timeout=HANG_S) == -sig
    os.kill(rank0, signal.SIGCONT)
    out, err = agent.communicate(timeout=HANG_S)  # the ranks hold the pipes: this returns once they let go
    assert ended(below, within=HANG_S) == []
    said = (out + err).count(f"stopped by the end of its launcher ({name}")
    assert said == 1, (out + err)[-3000:]  # rank 0 alone says so
    # Rank 1 learnt of it while waiting for rank 0 in step 4: both stop at that step's check.
    assert checkpoint.load(tmp_path / "checkpoint-1.pth.tar.partial")["step"] == 4
    assert not (tmp_path / "summary.json").exists()
    # What the launcher's pipes may have lost is in the run folder, for the next start to say.
    record = json.loads((tmp_path / "stopped.json").read_text())
    assert record["step"] == 4 and record["message"].startswith(f"stopped by the end of its launcher ({name}")


def ended(pids: list[int], within: float) -> list[int]:
    """Waits (on pidfds, woken by each exit) until every process of `pids` has ended; returns those still alive."""
    alive = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            alive[os.pidfd_open(pid)] = pid
    deadline = time.monotonic() + within
    while alive and time.monotonic() < deadline:
        ready, _, _ = select.select(list(alive), [], [], max(0.0, deadline - time.monotonic()))
        for fd in ready:
            os.close(fd)
            del alive[fd]
    for fd in alive:
        os.close(fd)
    return sorted(alive.values())


@contextlib.contextmanager
def killed_after(launcher: subprocess.Popen) -> Iterator[None]:
    """Whatever the test found, no process of the launched tree (its own session) outlives it."""
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()


def start_sweep(out: Path, data: Path, flag: Path) -> tuple[subprocess.Popen, int]:
    """A one-run sweep whose training stops itself (SIGSTOP) at step 4; returns the sweep and the training's pid."""
    cmd = [*SWEEP, "--out", str(out), "--batch-sizes", "32", "--epochs", "2", *sweep_flags(data)]
    sweep = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env_with(BATCHSCALE_FAULT="step:4", BATCHSCALE_FAULT_ACTION="stop",
                                          BATCHSCALE_FAULT_ONCE=str(flag)))
    lock = out / "b32-w1-linear-lr0.1-s42" / ".batchscale.lock"
    until(lambda: flag.exists() and lock.exists() and lock.read_text().startswith("pid "), sweep,
          "the sweep's training reaching its fault point")
    child = int(lock.read_text().split()[1])
    until(lambda: state_of(child) == "T", sweep, "the sweep's training stopping at step 4")
    return sweep, child


def test_sighup_to_a_sweep_stops_its_training_with_it(tiny_cifar, tmp_path):
    sweep, child = start_sweep(tmp_path / "sweep", tiny_cifar, tmp_path / "once")
    sweep.send_signal(signal.SIGHUP)  # the terminal closed
    _, err = sweep.communicate(timeout=HANG_S)
    assert sweep.returncode == STOPPED, err[-3000:]
    assert "SIGHUP" in err.splitlines()[-1] and state_of(child) in ("gone", "Z")


def test_a_sweep_killed_outright_leaves_its_training_to_stop_itself(tiny_cifar, tmp_path):
    out = tmp_path / "sweep"
    sweep, child = start_sweep(out, tiny_cifar, tmp_path / "once")
    run = out / "b32-w1-linear-lr0.1-s42"
    watched = os.pidfd_open(child)  # before the kill: the pid stays this process until it is reaped
    sweep.kill()
    sweep.wait()
    os.kill(child, signal.SIGCONT)
    # Its exit, not its lock: the lock goes in teardown, before the stop line is written.
    assert select.select([watched], [], [], HANG_S)[0], f"the training outlived its sweep by {HANG_S} s"
    os.close(watched)
    log = (run / "train.log").read_text()
    assert "stopped by the end of its launcher (the sweep" in log, log[-2000:]
    # It stops at the first step after it learns of it (the watcher wakes beside the loop): before its epoch ends.
    step = int(log.split("after step ")[1].split()[0])
    assert 4 <= step < 10 and checkpoint.load(run / "checkpoint-1.pth.tar.partial")["step"] == step
    assert not (run / "summary.json").exists()


def test_sighup_to_a_training_saves_and_stops(tiny_cifar, tmp_path):
    result = train(tiny_cifar, tmp_path, env={"BATCHSCALE_FAULT": "step:4", "BATCHSCALE_FAULT_ACTION": "hup"})
    assert result.returncode == STOPPED, result.stderr[-3000:]
    assert "stopped by SIGHUP after step 4" in one_line(result.stderr)


def test_a_folder_that_turns_read_only_mid_run_is_one_line(tiny_cifar, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    if subprocess.run(["chattr", "+i", str(logs)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable flag (chattr +i)")
    subprocess.run(["chattr", "-i", str(logs)], check=True)
    try:
        result = train(tiny_cifar, logs, env={"BATCHSCALE_FAULT": "step:3", "BATCHSCALE_FAULT_ACTION": "readonly",
                                              "BATCHSCALE_FAULT_FILL": str(logs)})
    finally:
        subprocess.run(["chattr", "-i", str(logs)], check=True)
    assert result.returncode == NO_SPACE, result.stderr[-3000:]
    line = one_line(result.stderr)
    assert "permission denied" in line and f"make {logs} writable" in line and "space" not in line


def test_a_trial_cut_by_max_steps_counts_whole_epochs(tiny_cifar, tmp_path):
    result = train(tiny_cifar, tmp_path, "--max-steps", "15", epochs=3)  # 10 steps an epoch
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs_completed"] == 1 and summary["steps_completed"] == 15


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (short-lived helpers may end while the tree is read)."""
    try:
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []
    return children + [d for c in children for d in descendants(c)]


@needs_horovod
def test_a_horovodrun_killed_by_sigusr1_leaves_no_orphan(tiny_cifar, tmp_path):
    # horovodrun dies at once on USR1 while mpirun and the ranks below it live on: the ranks watch it too.
    args = train_args(tiny_cifar, tmp_path, "--finite-check-every", "2", batch=16)
    launcher = subprocess.Popen(command(args, ranks=2, launcher="horovodrun"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=env_with(BATCHSCALE_FAULT="step:3:0", BATCHSCALE_FAULT_ACTION="stop"),
                                start_new_session=True)
    with killed_after(launcher):
        stop_the_launcher(launcher, signal.SIGUSR1, tmp_path, "horovodrun")
