"""The local pool's long-lived trial workers: several trainings in one process that reads the data once, each
with the results a fresh process gives; a training that raises, or a worker killed mid-training, fails that
training alone; a Ctrl-C leaves no process behind.

What ran where is seen by a spy: a sitecustomize on the workers' PYTHONPATH that records, per process, each
read of a CIFAR-10 file and each training started (and makes a training whose folder ends in "boom" raise)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from launch import HANG_S, state_of, train_args

from batchscale.study import executors
from batchscale.study.executors import REQUEUE, Job, LocalPool, Outcome
from batchscale.study.sweep import SweepConfig, close_pools, sweep

SPY = '''
import os

def _record(what):
    with open(os.environ["SPY_LOG"], "a") as f:
        f.write(f"{os.getpid()} {what}\\n")

import batchscale.data as _data
import batchscale.training.loop as _loop

_load, _train = _data._load_batch, _loop.train

def _spy_load(path):
    _record(f"load {path}")
    return _load(path)

def _spy_train(config, hooks=()):
    _record(f"train {config.log_dir}")
    if str(config.log_dir).endswith("boom"):
        raise RuntimeError("a bug in this training")
    return _train(config, hooks)

_data._load_batch, _loop.train = _spy_load, _spy_train
'''


@pytest.fixture
def spy(tmp_path, monkeypatch) -> Path:
    """The spy's record: one line per event, 'PID load FILE' or 'PID train FOLDER'."""
    folder = tmp_path / "spy"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SPY)
    record = tmp_path / "spy.log"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("SPY_LOG", str(record))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same float sums in a worker and in a fresh process
    for name in [k for k in os.environ if k.startswith("BATCHSCALE_")]:
        monkeypatch.delenv(name)
    return record


def events(record: Path, what: str) -> list[tuple[int, str]]:
    lines = [line.split(" ", 2) for line in record.read_text().splitlines()] if record.is_file() else []
    return [(int(pid), rest) for pid, kind, rest in lines if kind == what]


def job(data: Path, run_dir: Path, *extra: str, batch: int = 32) -> Job:
    args = train_args(data, run_dir, "--width", "4", *extra, batch=batch, epochs=1)
    return Job(run_dir.name, [sys.executable, "-m", "batchscale.cli", "train", *args], run_dir)


def run_pool(jobs: list[Job], **pool: object) -> dict[str, Outcome]:
    outcomes = {j.name: Outcome() for j in jobs}
    LocalPool(slots=1, **pool).run(jobs, outcomes, lambda running: None)  # type: ignore[arg-type]
    return outcomes


@pytest.mark.timeout(HANG_S)
def test_trials_run_one_after_another_in_one_worker_that_reads_the_data_once(tiny_cifar, spy, tmp_path):
    jobs = [job(tiny_cifar, tmp_path / f"t{i}", "--seed", str(i)) for i in range(3)]
    outcomes = run_pool(jobs)
    assert [o.exit_code for o in outcomes.values()] == [0, 0, 0]
    trained = events(spy, "train")
    assert [folder for _, folder in trained] == [str(j.run_dir) for j in jobs]
    assert len({pid for pid, _ in trained}) == 1 and trained[0][0] != os.getpid()
    loads = events(spy, "load")
    assert sorted(Path(f).name for _, f in loads) == sorted([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"])
    for j in jobs:
        assert (j.run_dir / "summary.json").is_file() and "training" in (j.run_dir / "train.log").read_text()


def numbers(run_dir: Path) -> tuple[list[dict[str, object]], dict[str, object]]:
    """What a run learned, without its timings."""
    keep = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "holdout_loss", "holdout_acc",
            "noise_scale")
    records = [{k: r.get(k) for k in keep} for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    summary = json.loads((run_dir / "summary.json").read_text())
    trial = summary["trial"]
    return records, {"final": summary["final_val_acc"], "best": summary["best_val_acc"],
                     "reached": trial.get("reached", {}).get("step") if trial.get("reached") else None,
                     "evals": [{k: v for k, v in e.items() if k != "train_seconds"} for e in trial["evals"]]}


@pytest.mark.timeout(HANG_S)
def test_a_trial_in_a_worker_learns_what_it_learns_in_a_fresh_process(tiny_cifar, spy, tmp_path):
    # The worker's second training, after another one (another seed, batch and settings), against a fresh process.
    trial = ("--seed", "7", "--holdout", "40", "--target-accuracy", "0.2", "--stop-at-target", "--max-steps", "8",
             "--batches-per-allreduce", "2")
    before = job(tiny_cifar, tmp_path / "worker" / "before", "--seed", "3", "--label-smoothing", "0.1", batch=16)
    outcomes = run_pool([before, job(tiny_cifar, tmp_path / "worker" / "trial", *trial, batch=16)])
    assert outcomes["trial"].exit_code == 0
    assert run_pool([job(tiny_cifar, tmp_path / "fresh" / "trial", *trial, batch=16)], fresh=True)["trial"].exit_code == 0
    pids = [pid for pid, _ in events(spy, "train")]
    assert pids[0] == pids[1] != pids[2]  # the worker's two trainings, then the fresh process
    assert numbers(tmp_path / "worker" / "trial") == numbers(tmp_path / "fresh" / "trial")


@pytest.mark.timeout(HANG_S)
def test_a_training_that_raises_fails_with_its_traceback_and_the_worker_goes_on(tiny_cifar, spy, tmp_path):
    jobs = [job(tiny_cifar, tmp_path / "boom"), job(tiny_cifar, tmp_path / "next")]
    outcomes = run_pool(jobs)
    assert outcomes["boom"].exit_code == 1 and outcomes["next"].exit_code == 0
    log = (tmp_path / "boom" / "train.log").read_text()
    assert "Traceback" in log and "RuntimeError: a bug in this training" in log
    assert "Traceback" not in (tmp_path / "next" / "train.log").read_text()
    assert len({pid for pid, _ in events(spy, "train")}) == 1  # the same worker ran the next one


@pytest.mark.timeout(HANG_S)
def test_a_worker_killed_mid_training_fails_that_training_only(tiny_cifar, spy, tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHSCALE_FAULT", "step:2")  # SIGKILL at step 2, of the first training only
    monkeypatch.setenv("BATCHSCALE_FAULT_ONCE", str(tmp_path / "fired"))
    jobs = [job(tiny_cifar, tmp_path / f"t{i}", "--seed", str(i)) for i in range(3)]
    outcomes = run_pool(jobs)
    assert [o.exit_code for o in outcomes.values()] == [-signal.SIGKILL, 0, 0]
    assert "ended with signal SIGKILL" in (tmp_path / "t0" / "train.log").read_text()
    pids = [pid for pid, _ in events(spy, "train")]
    assert pids[0] != pids[1] == pids[2]  # a new worker for the rest


@pytest.mark.timeout(HANG_S)
def test_ctrl_c_saves_the_running_training_and_leaves_no_process(tiny_cifar, spy, tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHSCALE_FAULT", "step:2")  # the training holds still at step 2 (SIGSTOP) ...
    monkeypatch.setenv("BATCHSCALE_FAULT_ACTION", "stop")
    started: list[subprocess.Popen] = []

    class Spied(subprocess.Popen):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(executors.subprocess, "Popen", Spied)

    def progress(running: set[str]) -> None:  # ... where the pool's next look sees it, and gets a Ctrl-C
        if running and state_of(started[0].pid) == "T":
            os.kill(os.getpid(), signal.SIGINT)

    jobs = [job(tiny_cifar, tmp_path / f"t{i}", "--checkpoint-every-steps", "1") for i in range(2)]
    outcomes = {j.name: Outcome() for j in jobs}
    with pytest.raises(executors.Stopped):
        LocalPool(slots=1).run(jobs, outcomes, progress)
    assert outcomes["t0"].exit_code == REQUEUE and outcomes["t1"].exit_code is None  # saved; t1 waits for a rerun
    assert "saved" in (tmp_path / "t0" / "train.log").read_text()
    assert len(started) == 1
    for process in started:
        assert process.returncode is not None  # ended and waited for by the pool
        with pytest.raises(ProcessLookupError):  # and reaped: no pid left
            os.close(os.pidfd_open(process.pid))


@pytest.mark.timeout(HANG_S)
def test_a_commands_runs_share_its_workers_until_it_ends(tiny_cifar, spy, tmp_path):
    # Two sweeps into one folder in one process, as a study's stages are: the second's training runs in the first's
    # worker. (Another folder is another compile cache in the environment, so another worker.)
    flags = ("--train-dir", str(tiny_cifar), "--val-dir", str(tiny_cifar), "--width", "4", "--no-download", "--no-cuda")
    for batch in (32, 16):
        sweep(SweepConfig(out=str(tmp_path / "sweep"), batch_sizes=(batch,), epochs=1, train_args=flags),
              say=lambda *a, **k: None)
    pids = {pid for pid, _ in events(spy, "train")}
    assert len(pids) == 1 and len(events(spy, "load")) == 6  # one worker, the data read once
    close_pools()  # what the command's exit does
    with pytest.raises(ProcessLookupError):
        os.close(os.pidfd_open(pids.pop()))
