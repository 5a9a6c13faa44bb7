"""The local executor's stop: queued trainings wait for the rerun instead of keeping the pool alive."""

from __future__ import annotations

import sys

import pytest

from batchscale.errors import Stopped
from batchscale.study.executors import Job, LocalPool, Outcome


@pytest.mark.timeout(60)
def test_a_stopped_pool_returns_with_trainings_still_queued(tmp_path):
    # The first job signals the pool itself (as a scheduler or Ctrl-C would) and ends; two more are queued.
    signal_pool = "import os, signal; os.kill(os.getppid(), signal.SIGTERM)"
    jobs = [Job(f"j{i}", [sys.executable, "-c", signal_pool if i == 0 else "pass"], tmp_path / f"j{i}") for i in range(3)]
    outcomes = {job.name: Outcome() for job in jobs}
    with pytest.raises(Stopped):
        LocalPool(slots=1).run(jobs, outcomes, lambda running: None)
    assert outcomes["j0"].exit_code is not None  # it ended (perhaps by the SIGTERM the pool passed on)
    assert not (tmp_path / "j1").exists() and outcomes["j1"].exit_code is None  # never started: the rerun runs it
