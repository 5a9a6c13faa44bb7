"""The batch-size study: sweep, report, noise scale and the scaling model."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from launch import cli, one_line

from batchscale.errors import BatchscaleError
from batchscale.study.plan import Network, plan
from batchscale.study.sweep_report import fmt, report
from batchscale.study.sweep import SweepConfig, sweep


def tiny_sweep(out: Path, data: Path) -> SweepConfig:
    return SweepConfig(
        out=str(out), batch_sizes=(16, 32), workers=(2,), epochs=2, launcher="simulate",
        train_args=("--train-dir", str(data), "--val-dir", str(data), "--width", "4", "--no-download",
                    "--warmup-epochs", "1", "--noise-every", "1", "--target-accuracy", "0.12"),
    )


@pytest.fixture(scope="module")
def swept(tiny_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    lines: list[str] = []
    folders = sweep(tiny_sweep(out, tiny_cifar), say=lambda text, **kw: lines.append(text))
    return out, folders, lines


def test_sweep_runs_every_point_with_simulated_workers(swept):
    out, folders, lines = swept
    assert [f.name for f in folders] == ["b16-w2-linear-lr0.1-s42", "b32-w2-linear-lr0.1-s42"]
    for folder, batch in zip(folders, (16, 32)):
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["epochs_completed"] == 2 and summary["simulated_workers"] is True
        assert summary["world_size"] == 2 and summary["global_batch"] == 2 * batch
        assert summary["config"]["simulate_workers"] == 2
        assert list(folder.glob("events.out.tfevents.*")) and (folder / "checkpoint-2.pth.tar").exists()
    assert any("epoch" in line and "left" in line for line in lines)  # the progress line
    scales = [json.loads((f / "summary.json").read_text())["noise_scale"] for f in folders]
    assert any(s is not None and s > 0 for s in scales)


def test_rerun_skips_finished_runs(swept, tiny_cifar):
    out, folders, _ = swept
    stamps = [(f / "summary.json").stat().st_mtime_ns for f in folders]
    lines: list[str] = []
    sweep(tiny_sweep(out, tiny_cifar), say=lambda text, **kw: lines.append(text))
    assert "2 of 2 runs already done, skipped" in lines
    assert lines[-1].startswith("[sweep] 2 done, 0 running, 0 queued, 0 failed")
    assert [(f / "summary.json").stat().st_mtime_ns for f in folders] == stamps


def test_interrupted_sweep_resumes_the_run_from_its_checkpoint(tiny_cifar, tmp_path, monkeypatch):
    config = tiny_sweep(tmp_path / "sweep", tiny_cifar)
    config.batch_sizes = (32,)
    monkeypatch.setenv("BATCHSCALE_FAULT", "after-checkpoint:1")
    monkeypatch.setenv("BATCHSCALE_FAULT_ONCE", str(tmp_path / "fired"))
    with pytest.raises(BatchscaleError, match="1 of 1 runs failed"):
        sweep(config, say=lambda *a, **k: None)
    folders = sweep(config, say=lambda *a, **k: None)
    log = (folders[0] / "train.log").read_text()
    assert "checkpoint-1.pth.tar after epoch 1" in log
    assert json.loads((folders[0] / "summary.json").read_text())["epochs_completed"] == 2


def test_report_numbers_equal_the_summaries_and_every_plot_exists(swept):
    out, folders, _ = swept
    path = report(out)
    text = path.read_text()
    for folder in folders:
        s = json.loads((folder / "summary.json").read_text())
        row = next(line for line in text.splitlines() if line.startswith(f"| {folder.name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3] == str(s["global_batch"])
        assert cells[4] == fmt(s["final_val_acc"]) and cells[5] == fmt(s["best_val_acc"])
        assert cells[7] == fmt(s["train_seconds"], 1) and cells[8] == fmt(s["images_per_sec"], 1)
        assert cells[11] == fmt(s["noise_scale"], 1)
        target = s["target"] or {}
        assert cells[9] == str(target.get("step", "-")) and cells[10] == fmt(target.get("train_seconds"), 1)
    listed = re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", text)
    assert len(listed) == 5
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert sorted(listed) == pngs
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 2000


def test_plan_reads_the_sweep_and_lands_in_the_report(swept, tiny_cifar, tmp_path):
    # A real single-worker run gives the compute time the plan starts from.
    config = tiny_sweep(tmp_path / "sw", tiny_cifar)
    config.workers = (1,)
    config.batch_sizes = (32,)
    sweep(config, say=lambda *a, **k: None)
    result = plan(tmp_path / "sw", Network(1.0, 100.0), workers=(1, 2, 4))
    summary = json.loads((tmp_path / "sw" / "b32-w1-linear-lr0.1-s42" / "summary.json").read_text())
    rows = {r["workers"]: r for r in result["rows"]}
    assert rows[1]["compute_s"] == pytest.approx(32 / summary["steady_images_per_sec"])
    assert rows[4]["allreduce_s"] == pytest.approx(2 * 3 / 4 * summary["parameters"] * 4 / 1e9 + 6 * 100e-6)
    assert rows[4]["step_s_no_overlap"] > rows[2]["step_s_no_overlap"] > rows[1]["step_s_no_overlap"]
    text = report(tmp_path / "sw").read_text()
    assert "## Scaling model" in text and "alpha-beta" in text
    assert math.isfinite(rows[2]["images_per_sec_overlap"])


@pytest.mark.parametrize("damage,message", [
    (lambda run: (run / "summary.json").write_text('{"config": {"model"'), "summary.json is truncated or not JSON"),
    (lambda run: (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text()[:-20]), "truncated or broken line 2"),
    (lambda run: (run / "metrics.jsonl").write_text(""), "metrics.jsonl has no epochs"),
    (lambda run: (run / "metrics.jsonl").unlink(), "metrics.jsonl is missing"),
], ids=["truncated-summary", "truncated-metrics", "empty-metrics", "missing-metrics"])


def test_report_on_damaged_runs_says_which_file_inone_line(swept, tmp_path, capsys, damage, message):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(swept[0], copy)
    damage(copy / swept[1][1].name)
    code, err = cli("report", str(copy), capsys=capsys)
    assert code == 2
    line = one_line(err)
    assert message in line and swept[1][1].name in line


@pytest.mark.parametrize("flags,message", [
    (["--bandwidth", "0"], "--bandwidth must be a positive number"),
    (["--bandwidth", "-3"], "--bandwidth must be a positive number"),
    (["--bandwidth", "nan"], "--bandwidth must be a positive number"),
    (["--latency", "-1"], "--latency must be a number of microseconds >= 0"),
    (["--latency", "nan"], "--latency must be a number of microseconds >= 0"),
    (["--workers", "0"], "--workers must be integers >= 1"),
    (["--workers", "2,-4"], "--workers must be integers >= 1"),
])


def test_plan_refuses_values_that_would_predict_nonsense(swept, capsys, flags, message):
    code, err = cli("plan", str(swept[0]), *flags, capsys=capsys)
    assert code == 2 and message in one_line(err)
    assert not (swept[0] / "plan.json").exists()
