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


def test_a_stop_is_answered_at_once_and_a_second_signal_ends_a_training_that_is_slow_to_save(tmp_path, capfd):
    """On a CPU a training's step, at the end of which it saves and stops, may be minutes away: the study says at
    once what it asked, and a second SIGTERM ends the training there and then."""
    pool = LocalPool(1, command="study")
    # A training in the middle of a long step: it does not act on SIGTERM for as long as the step lasts.
    ready = tmp_path / "ready"
    slow = ("import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "pathlib.Path(sys.argv[1]).touch(); time.sleep(300)")
    job = Job("t", [sys.executable, "-c", slow, str(ready)], tmp_path / "t")
    outcomes = {"t": Outcome()}
    said: list[str] = []

    def progress(running: set[str]) -> None:
        if not running or not ready.exists():  # signalled only once it is in its step
            return
        if not said:
            os.kill(os.getpid(), signal.SIGTERM)
            said.append(capfd.readouterr().err)  # printed by the time the signal was handled
        elif len(said) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            said.append(capfd.readouterr().err)

    with pytest.raises(Stopped, match="second signal"):
        pool.run([job], outcomes, progress)
    assert said[0].startswith("batchscale study: SIGTERM: asked the 1 running training(s) to save")
    assert "a second signal ends them at once" in said[0]
    assert "SIGTERM again: ended the 1 running training(s) at once" in said[1]
    assert outcomes["t"].exit_code == -signal.SIGKILL  # ended by the second signal, not by its own step's end
