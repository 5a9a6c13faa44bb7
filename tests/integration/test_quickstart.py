"""The README's quick start, run as written (its `batchscale` lines, in a fresh folder holding ./data), on the CPU."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
from cifar_fixture import make_cifar
from launch import ROOT, env_with


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start"):]
    block = section[section.index("```bash") + len("```bash"):section.index("```", section.index("```bash") + 7)]
    return [line.split("  #")[0].strip() for line in block.strip().splitlines()]


def test_the_quick_start_sets_up_then_runs_train_sweep_report_and_study():
    lines = quick_start()
    assert [line.split()[0] for line in lines[:3]] == ["make", "source", "make"]  # set-up, run by make test itself
    assert [line.split()[1] for line in lines[3:]] == ["train", "sweep", "report", "study"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, cifar_cache):
    """A fresh folder with ./data: 4,500 real training images (enough for the study preset's 2,000 held out)."""
    root = tmp_path_factory.mktemp("newcomer")
    make_cifar(root / "data", cifar_cache, per_train_batch=900, test_images=500)
    return root


def test_the_quick_start_commands_finish_as_written(folder):
    for line in quick_start()[3:]:
        words = shlex.split(line)
        assert words[0] == "batchscale"
        result = subprocess.run([sys.executable, "-m", "batchscale.cli", *words[1:]], cwd=folder, env=env_with(),
                                capture_output=True, text=True, timeout=900, check=False)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    runs = list((folder / "logs").glob("*/summary.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["epochs_completed"] == 1
    assert (folder / "sweep-smoke" / "report.md").is_file()
    assert (folder / "study-smoke" / "report.md").is_file() and (folder / "study-smoke" / "results.json").is_file()
