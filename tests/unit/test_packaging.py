"""Packaging a newcomer meets: what only some commands need is an extra, each missing one is one line, the default
outputs stay out of git, and the version answers."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from batchscale.config import Config
from batchscale.errors import ConfigError
from batchscale.training.bench import BenchConfig
from batchscale.study.study import StudyConfig
from batchscale.study.sweep import SweepConfig

ROOT = Path(__file__).resolve().parents[2]


def test_only_what_every_command_needs_is_a_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {d.split(">")[0].split("=")[0] for d in project["dependencies"]}
    assert required == {"torch", "torchvision", "numpy", "tensorboard", "tqdm"}
    extras = project["optional-dependencies"]
    assert {"plots", "slurm", "mlflow", "wandb", "all", "dev"} <= extras.keys()
    assert any(d.startswith("ruff") for d in extras["dev"])  # [tool.ruff] is configured, so dev installs it
    assert "batchscale[all]" in extras["dev"]  # make test runs the tests of every extra


@pytest.mark.parametrize("output", [
    f"{Config().log_dir}/x", f"{SweepConfig().out}/x", f"{StudyConfig().out}/x", BenchConfig().output, "data/x",
    "mlruns/x", "wandb/x",
])
def test_default_outputs_are_git_ignored(output):
    path = Path(output).as_posix()
    result = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, check=False)
    assert result.returncode == 0, f"{path} is not in .gitignore"


def test_report_without_matplotlib_is_one_line_naming_the_extra(monkeypatch):
    from batchscale.study.runs import pyplot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'batchscale\[plots\]'"):
        pyplot()


def test_citation_names_the_original_paper():
    text = (ROOT / "CITATION.cff").read_text()
    assert "Performance analysis of model training by batch size in synchronous distributed deep learning" in text
    assert "2023" in text and "KIPS" in text


def test_the_configured_linter_passes():
    pytest.importorskip("ruff")  # installed by the dev extra
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests", "benchmarks"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
