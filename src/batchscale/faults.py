"""Fault injection for the test suite: crash this process at a named point, as a real failure would.

BATCHSCALE_FAULT=POINT:VALUE[:RANK] SIGKILLs the process when it reaches that point
(e.g. `after-checkpoint:1`, `step:5:1`). With BATCHSCALE_FAULT_ONCE=FILE it fires only
if FILE does not exist yet, and creates it, so a restarted worker runs on.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def point(name: str, value: int, rank: int = 0) -> None:
    spec = os.environ.get("BATCHSCALE_FAULT")
    if not spec:
        return
    parts = spec.split(":")
    want_rank = int(parts[2]) if len(parts) > 2 else 0
    if parts[0] != name or int(parts[1]) != value or want_rank != rank:
        return
    once = os.environ.get("BATCHSCALE_FAULT_ONCE")
    if once:
        if Path(once).exists():
            return
        Path(once).touch()
    os.kill(os.getpid(), signal.SIGKILL)
