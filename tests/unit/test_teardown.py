"""A rank stuck in its teardown (destroy_process_group, hvd.shutdown) cannot hold the job: past the bound the process
leaves with the exit code the run had earned, saying so once."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from batchscale.parallel.base import bounded

STUCK = """
import threading, sys
from batchscale.parallel.base import bounded
print("summary written", flush=True)
bounded(threading.Event().wait, 0.2, int(sys.argv[1]), quiet=sys.argv[2] == "quiet")  # never returns by itself
print("not reached")
"""


@pytest.mark.parametrize("code", [0, 3])
def test_a_stuck_teardown_ends_the_process_with_the_runs_exit_code(code):
    result = subprocess.run([sys.executable, "-c", STUCK, str(code), "loud"], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == code
    assert result.stdout == "summary written\n"
    assert "teardown did not end within 0.2 s" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_other_ranks_leave_quietly():
    result = subprocess.run([sys.executable, "-c", STUCK, "0", "quiet"], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0 and result.stderr == ""


def test_a_teardown_that_returns_is_left_alone():
    ran = threading.Event()
    bounded(ran.set, 600, 9)  # the watchdog is released at once by the finished work, not by its bound
    assert ran.is_set()
    watchdogs = [t for t in threading.enumerate() if t.name == "teardown-watchdog"]
    for t in watchdogs:
        t.join(timeout=30)  # released by the finished teardown, not by its bound
    assert not any(t.is_alive() for t in watchdogs)
