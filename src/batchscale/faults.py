"""Fault injection: fail this process at a named point, as a real failure would, so the recovery paths
(resume, teardown, the one-line errors) are exercised by the real program, not a copy of it.

A production hook, inert by default: `point()` returns at once unless BATCHSCALE_FAULT is set, and it
imports nothing of batchscale, so any module may call it (it sits at the bottom of the import graph).

BATCHSCALE_FAULT=POINT:VALUE[:RANK] acts when rank RANK (default 0) reaches that point, e.g.
`after-checkpoint:1`, `step:5:1`, `during-save:2`, `setup:0` (a training's start, before any check). BATCHSCALE_FAULT_ACTION says how:
`kill` (SIGKILL, the default), `stop` (SIGSTOP: a hung rank), `term` (SIGTERM, as a scheduler sends
before a kill), `hup` (SIGHUP, a closed terminal), `int` (SIGINT, a Ctrl-C), `nan` (the weights become NaN),
`fill` (fills the disk holding the folder BATCHSCALE_FAULT_FILL with one file, as another program might) or
`readonly` (makes the folder BATCHSCALE_FAULT_FILL refuse new files, as a chmod or a read-only remount would;
chattr +i, so root is refused too, on file systems that have the flag).
With BATCHSCALE_FAULT_ONCE=FILE it acts only if FILE does not exist yet, and creates it,
so a restarted worker runs on.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
from torch import nn


def _armed(name: str, value: int, rank: int) -> bool:
    spec = os.environ.get("BATCHSCALE_FAULT")
    if not spec:
        return False
    parts = spec.split(":")
    want_rank = int(parts[2]) if len(parts) > 2 else 0
    if parts[0] != name or int(parts[1]) != value or want_rank != rank:
        return False
    once = os.environ.get("BATCHSCALE_FAULT_ONCE")
    if once:
        if Path(once).exists():
            return False
        Path(once).touch()
    return True


def point(name: str, value: int, rank: int = 0, model: nn.Module | None = None) -> None:
    if not _armed(name, value, rank):
        return
    action = os.environ.get("BATCHSCALE_FAULT_ACTION", "kill")
    if action == "nan" and model is not None:
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return
    if action == "fill":
        _fill(Path(os.environ["BATCHSCALE_FAULT_FILL"]))
        return
    if action == "readonly":
        import subprocess

        subprocess.run(["chattr", "+i", os.environ["BATCHSCALE_FAULT_FILL"]], check=True)
        return
    signals = {"stop": signal.SIGSTOP, "term": signal.SIGTERM, "hup": signal.SIGHUP, "int": signal.SIGINT}
    os.kill(os.getpid(), signals.get(action, signal.SIGKILL))


def _fill(folder: Path) -> None:
    chunk = b"\0" * 2**16
    try:
        with open(folder / "filler", "ab") as f:
            while True:
                f.write(chunk)
                f.flush()
    except OSError:
        pass
