"""Inside a study, what its trainings' pool says names the study, not the sweep: the line a dead trial worker
leaves in the trial's log, and the stop line."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from batchscale.errors import Stopped
from batchscale.study.executors import Job, LocalPool, Outcome, Worker


def test_a_dead_trial_worker_leaves_the_study_named_in_the_trials_log(tmp_path):
    worker = Worker({**os.environ}, "study")
    worker.log = tmp_path / "train.log"
    worker.process.kill()  # as the kernel's OOM killer ends it mid-training
    worker.process.wait()
    code = worker.result()
    worker.close()
    said = worker.log.read_text()
    assert code == -signal.SIGKILL and said.startswith("batchscale study: error: the trial worker")
    assert "SIGKILL" in said and "sweep" not in said


@pytest.mark.parametrize("command", ["study", "sweep"])
def test_a_stopped_pool_names_the_command_that_ran(tmp_path, command):
    pool = LocalPool(1, command=command)
    # A training that runs until it is told to stop (a process of its own: not a batchscale train command line).
    job = Job("t", [sys.executable, "-c", "import time; time.sleep(300)"], tmp_path / "t")
    sent: list[int] = []

    def progress(running: set[str]) -> None:
        if running and not sent:  # the training is running: the user presses Ctrl-C, or SLURM sends SIGTERM
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Stopped) as stopped:
        pool.run([job], {"t": Outcome()}, progress)
    assert str(stopped.value).startswith(f"the {command} was stopped by SIGTERM")
    other = "sweep" if command == "study" else "study"
    assert other not in str(stopped.value)
