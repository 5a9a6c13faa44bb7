"""`batchscale study --preset smoke`, the quick start's study, run as a new user runs it (a fresh folder holding
./data: the quick-start test's 4,500 real images), ends with what a study is for: a fitted B_crit and its
interval, however rough, said in its last line with the report's path, and says at the start how it differs from
a real measurement."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from cifar_fixture import make_cifar
from launch import env_with



# About 90 CPU-seconds of one thread: 10 minutes wall on 2 cores under a load of 15; bounded far above that.
@pytest.mark.timeout(3600)
def test_the_smoke_study_ends_with_a_fitted_b_crit_and_its_interval(tmp_path, cifar_cache):
    make_cifar(tmp_path / "data", cifar_cache, per_train_batch=900, test_images=500)
    result = subprocess.run([sys.executable, "-m", "batchscale.cli", "study", "--preset", "smoke", "--out",
                             "study-smoke"], cwd=tmp_path, env=env_with(), capture_output=True, text=True,
                            timeout=3600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("a smoke study: one untuned LR per batch size, one seed") and "--preset cpu" in lines[0]
    results = json.loads((tmp_path / "study-smoke" / "results.json").read_text())
    assert [t["status"] for t in results["trials"]] == ["reached"] * 4
    fit, interval = results["fit"], results["interval"]
    assert fit is not None and interval is not None and interval["low"] <= fit["b_crit"] <= interval["high"]
    # The report's own first sentence (study_report.headline), then what a smoke study is, then the report's path.
    said = re.fullmatch(r"B_crit = ([\d,.]+) \[([\d,.]+|open), ([\d,.]+|open)\], (?:not )?decided at x[\d.]+ [^(]*"
                        r"\(.*\)[^(]* \(a smoke study, not a measurement: [^)]*\); the report: (.*)", lines[-1])
    assert said, lines[-1]
    shown = [f"{fit['b_crit']:,.0f}", f"{interval['low']:,.0f}",
             "open" if (results.get("interval_open") or {}).get("high") else f"{interval['high']:,.0f}"]
    assert list(said.groups()[:3]) == shown
    assert (tmp_path / said.group(4)).resolve() == (tmp_path / "study-smoke" / "report.md").resolve()
    assert result.stdout.count("report.md") == 1
