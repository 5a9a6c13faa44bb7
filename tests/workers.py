"""Runs a function on N real torch.distributed (gloo) processes on this machine and collects results."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable[..., Any], world_size: int, port: int, out: str, args: tuple[Any, ...]) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    result = fn(*args)
    torch.save(result, Path(out) / f"rank{rank}.pt")


def run_workers(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """fn must be importable (module level); returns each rank's return value, rank 0 first."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_entry, args=(fn, world_size, free_port(), out, args), nprocs=world_size, join=True)
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
