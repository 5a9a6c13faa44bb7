"""Our Adasum against Horovod's own, on 2 and 4 ranks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launch import HANG_S, HOROVODRUN, TESTS, needs_horovod
from workers import free_port


@needs_horovod
@pytest.mark.parametrize("world", [2, 4])
def test_matches_horovods_adasum(world, tmp_path):
    ours = launched("torchrun", world, tmp_path / "torch.pt")
    theirs = launched("horovodrun", world, tmp_path / "horovod.pt")
    assert ours["world_size"] == theirs["world_size"] == world
    for a, b in zip(ours["result"], theirs["result"]):
        assert float((a - b).norm() / b.norm()) <= 1e-6
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def launched(launcher: str, world: int, out: Path) -> dict:
    script = str(TESTS / "launched_worker.py")
    if launcher == "horovodrun":
        cmd = [str(HOROVODRUN), "-np", str(world), "-H", f"localhost:{world}", sys.executable, script, "adasum", str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
               "--master-port", str(free_port()), script, "adasum", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return torch.load(out, weights_only=True)
