"""The noise scale in whole runs."""

from __future__ import annotations

import json
import subprocess

from launch import HANG_S, command, env_with, train_args


def test_one_process_under_torchrun_trains_without_a_noise_estimate(tiny_cifar, tmp_path):
    """One worker, no accumulation: the small batch is the whole batch, so nothing is measured (it used to crash)."""
    cmd = command(train_args(tiny_cifar, tmp_path, "--noise-every", "5", epochs=1), ranks=2)
    cmd[cmd.index("--nproc-per-node") + 1] = "1"
    result = subprocess.run(cmd, capture_output=True, text=True, env=env_with(), timeout=HANG_S)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["backend"] == "torch" and summary["world_size"] == 1 and summary["noise_scale"] is None
