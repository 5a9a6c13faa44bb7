"""Failures and recovery: kills mid-epoch and mid-save, corrupt and foreign checkpoints, NaN, hung ranks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from launch import HANG_S, command, env_with, same_weights, state_of, train, train_args, until, weights


@pytest.fixture(scope="module")
def reference(tiny_cifar, tmp_path_factory) -> Path:
    """An uninterrupted deterministic run that also checkpoints every 3 steps."""
    out = tmp_path_factory.mktemp("reference")
    result = train(tiny_cifar, out, "--checkpoint-every-steps", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_killed_mid_epoch_resumes_at_that_step_with_identical_weights(tiny_cifar, reference, tmp_path):
    # Epoch 2 is global steps 11-20; its checkpoint at epoch step 6 is global step 16; the kill comes at 18.
    killed = train(tiny_cifar, tmp_path, "--checkpoint-every-steps", "3", env={"BATCHSCALE_FAULT": "step:18"})
    assert killed.returncode != 0
    assert (tmp_path / "checkpoint-2.pth.tar.partial").exists() and not (tmp_path / "checkpoint-2.pth.tar").exists()
    again = train(tiny_cifar, tmp_path, "--checkpoint-every-steps", "3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "after step 16 (step 6 of epoch 2)" in again.stdout
    assert same_weights(reference / "checkpoint-2.pth.tar", tmp_path / "checkpoint-2.pth.tar")
    assert not (tmp_path / "checkpoint-2.pth.tar.partial").exists()  # folded into the epoch's checkpoint
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["images"] == 320
    assert records[1]["val_acc"] == want[1]["val_acc"]
    assert records[1]["train_loss"] == pytest.approx(want[1]["train_loss"], rel=1e-6)


def test_kill_during_save_leaves_the_previous_checkpoint_usable(tiny_cifar, reference, tmp_path):
    killed = train(tiny_cifar, tmp_path, "--checkpoint-every-steps", "3", env={"BATCHSCALE_FAULT": "during-save:20"})
    assert killed.returncode != 0
    assert not (tmp_path / "checkpoint-2.pth.tar").exists()
    assert list(tmp_path.glob(".checkpoint-2.pth.tar.*.tmp"))  # the half-done save, never renamed
    assert weights(tmp_path / "checkpoint-2.pth.tar.partial")  # the previous one loads
    again = train(tiny_cifar, tmp_path, "--checkpoint-every-steps", "3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "after step 19 (step 9 of epoch 2)" in again.stdout
    assert not list(tmp_path.glob(".*.tmp"))
    assert same_weights(reference / "checkpoint-2.pth.tar", tmp_path / "checkpoint-2.pth.tar")


def test_corrupt_newest_checkpoint_is_reported_and_the_one_before_used(tiny_cifar, tmp_path):
    assert train(tiny_cifar, tmp_path).returncode == 0
    newest = tmp_path / "checkpoint-2.pth.tar"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
    again = train(tiny_cifar, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "cannot load checkpoint" in again.stdout and "checkpoint-2.pth.tar" in again.stdout
    assert "resumed from" in again.stdout and "checkpoint-1.pth.tar after epoch 1" in again.stdout
    assert weights(newest)  # rewritten whole


def test_checkpoint_of_other_settings_is_refused_naming_the_difference(tiny_cifar, tmp_path):
    assert train(tiny_cifar, tmp_path, "--epochs", "1").returncode == 0
    wider = train(tiny_cifar, tmp_path, "--epochs", "1", "--width", "16")
    assert wider.returncode == 2
    assert "--width 8" in wider.stderr and "16" in wider.stderr and "--no-resume" in wider.stderr
    bigger = train(tiny_cifar, tmp_path, "--epochs", "1", "--batch-size", "64")
    assert bigger.returncode == 2 and "global batch 32" in bigger.stderr and "64" in bigger.stderr
    fresh = train(tiny_cifar, tmp_path, "--epochs", "1", "--width", "16", "--no-resume")
    assert fresh.returncode == 0


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_never_runs_its_payload(tiny_cifar, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "logs" / "checkpoint-1.pth.tar"
    evil.parent.mkdir()
    torch.save({"format_version": 1, "model": Payload(str(marker))}, evil)
    explicit = train(tiny_cifar, tmp_path / "logs", "--resume", str(evil))
    assert explicit.returncode == 2 and "cannot load checkpoint" in explicit.stderr
    assert len(explicit.stderr.strip().splitlines()) == 1
    automatic = train(tiny_cifar, tmp_path / "logs", "--epochs", "1")
    assert "cannot load checkpoint" in automatic.stdout  # reported, skipped, training starts afresh
    assert automatic.returncode == 0, automatic.stderr[-2000:]
    assert not marker.exists()


def test_non_finite_loss_stops_naming_step_and_lr_and_keeps_good_checkpoints(tiny_cifar, tmp_path):
    result = train(tiny_cifar, tmp_path, "--finite-check-every", "4",
                 env={"BATCHSCALE_FAULT": "step:13", "BATCHSCALE_FAULT_ACTION": "nan"})
    assert result.returncode == 3
    line = result.stderr.strip().splitlines()[-1]
    assert "NaN or infinite at step 14" in line and "lr " in line and "epoch 1 are intact" in line
    assert "Traceback" not in result.stderr
    assert (tmp_path / "checkpoint-1.pth.tar").exists() and not (tmp_path / "checkpoint-2.pth.tar").exists()
    assert all(torch.isfinite(w).all() for w in weights(tmp_path / "checkpoint-1.pth.tar").values() if w.is_floating_point())


def test_torchrun_restarts_a_killed_worker_from_the_checkpoint(tiny_cifar, tmp_path):
    once = tmp_path / "fault-fired"
    result = train(tiny_cifar, tmp_path / "logs", ranks=2, torchrun_flags=("--max-restarts", "1"),
                 env={"BATCHSCALE_FAULT": "step:15:1", "BATCHSCALE_FAULT_ONCE": str(once)})
    assert once.exists()  # rank 1 really was killed during epoch 2
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout and "after epoch 1" in result.stdout
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["world_size"] == 2


def test_hung_rank_ends_the_torchrun_job_after_the_collective_timeout(tiny_cifar, tmp_path):
    # subprocess.run's timeout is the bound: a job that hung would raise TimeoutExpired and fail the test.
    result = train(tiny_cifar, tmp_path, "--collective-timeout", "5", ranks=2,
                 env={"BATCHSCALE_FAULT": "step:3:1", "BATCHSCALE_FAULT_ACTION": "stop"}, timeout=HANG_S)
    assert result.returncode != 0
    assert not (tmp_path / "summary.json").exists()
    assert not (tmp_path / "checkpoint-1.pth.tar").exists()  # it ended inside epoch 1, not after it


def launched_ranks(launcher: subprocess.Popen, world: int) -> dict[int, int]:
    """{rank: pid} of the workers torchrun started, read from their environment ({} until all have started)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        try:
            env = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
        except OSError:  # ended between listing and reading
            continue
        if "RANK" in env:
            ranks[int(env["RANK"])] = pid
    return ranks if len(ranks) == world else {}


def waits_for_a_signal(pid: int) -> bool:
    """Whether the process sleeps in sigtimedwait (its kernel wait channel): a quiet rank waiting for its launcher."""
    try:
        return "sigtimedwait" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:  # ended: the caller sees it gone next time
        return False


def test_adasum_on_three_workers_is_refused_by_rank_0_even_when_the_other_ranks_get_there_first(tiny_cifar, tmp_path):
    """Rank 0 is held at its start, as a busy machine may hold it, while ranks 1 and 2 find the same refusal. They say
    nothing and must not end first: torchrun stops every rank once one has failed, and rank 0 would die unheard."""
    env = env_with(BATCHSCALE_FAULT="setup:0", BATCHSCALE_FAULT_ACTION="stop")
    job = subprocess.Popen(command(train_args(tiny_cifar, tmp_path, "--use-adasum", batch=10), ranks=3),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ranks: dict[int, int] = {}

    def refused_with_rank_0_held() -> bool:
        ranks.update(ranks or launched_ranks(job, 3))
        if not ranks:
            return False
        assert not {state_of(ranks[1]), state_of(ranks[2])} & {"gone", "Z"}, "a quiet rank ended before rank 0 spoke"
        return state_of(ranks[0]) == "T" and waits_for_a_signal(ranks[1]) and waits_for_a_signal(ranks[2])

    try:
        until(refused_with_rank_0_held, job, "ranks 1 and 2 refusing while rank 0 is held")
        os.kill(ranks[0], signal.SIGCONT)
        _, err = job.communicate(timeout=HANG_S)
    finally:
        if job.poll() is None:  # the test failed: leave no rank behind, rank 0 least (it is stopped)
            for pid in ranks.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            job.kill()
            job.wait()
    assert job.returncode != 0
    assert err.count("power-of-two") == 1, err[-3000:]  # said once, by rank 0, not by every rank
    assert not (tmp_path / "summary.json").exists()
