"""The study's arithmetic, without training: presets, the noise-scale estimator, the scaling model and its fits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from launch import cli, one_line

from batchscale.noise import NoiseScale
from batchscale.study.plan import Network, fit_steps_to_target, plan, step_seconds
from batchscale.study.sweep import SweepConfig, preset


def test_presets(capsys):
    paper = preset("paper", SweepConfig())
    assert [r.batch_size for r in paper.runs()] == [8, 16, 32, 64, 128, 256]
    assert {r.workers for r in paper.runs()} == {4} and {r.lr_scaling for r in paper.runs()} == {"linear"}
    # The critical batch is `batchscale study`'s (its LR grid per batch), not a sweep preset with one LR rule.
    with pytest.raises(SystemExit) as exit_code:
        cli("sweep", "--preset", "critical-batch", "--out", "x", capsys=capsys)
    assert exit_code.value.code == 2 and "critical-batch" in capsys.readouterr().err


def test_noise_scale_estimate_within_ten_percent_of_the_truth():
    rng = np.random.default_rng(0)
    dim = 200
    true_grad = rng.normal(size=dim) * 0.1
    variances = rng.uniform(0.5, 2.0, size=dim)  # per-example gradient covariance, diagonal
    truth = variances.sum() / (true_grad @ true_grad)
    estimate = NoiseScale(window=51_000)  # about 200 pairs
    b_small, b_big = 32, 256
    for _ in range(3000):
        examples = true_grad + rng.normal(size=(b_big, dim)) * np.sqrt(variances)
        small, big = examples[:b_small].mean(0), examples.mean(0)
        estimate.update(float(small @ small), float(big @ big), b_small, b_big, examples=b_big)
    assert estimate.b_simple == pytest.approx(truth, rel=0.10)


def test_alpha_beta_ring_allreduce_and_overlap():
    net = Network(bandwidth_gbs=10.0, latency_us=5.0)
    assert net.allreduce_seconds(1e9, 1) == 0.0
    # 4 workers: 2 * 3/4 * 1 GB / 10 GB/s + 6 * 5 us
    assert net.allreduce_seconds(1e9, 4) == pytest.approx(0.15 + 30e-6)
    assert step_seconds(0.3, 0.15, overlap=False) == pytest.approx(0.45)
    assert step_seconds(0.3, 0.15, overlap=True) == pytest.approx(0.3)  # hidden behind 0.2 s of backward
    assert step_seconds(0.03, 0.15, overlap=True) == pytest.approx(0.03 + 0.15 - 0.02)


def test_steps_to_target_curve_is_recovered():
    s_min, b_noise = 1000.0, 512.0
    points = [(b, round(s_min * (1 + b_noise / b))) for b in (64, 128, 256, 1024)]
    fitted = fit_steps_to_target(points, None)
    assert fitted[0] == pytest.approx(s_min, rel=0.01) and fitted[1] == pytest.approx(b_noise, rel=0.01)


def test_sweep_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    code, err = cli("sweep", "--out", str(tmp_path / "taken"), capsys=capsys)
    assert code == 2 and "is a file, not a folder" in one_line(err)


def test_plan_with_one_run_at_the_target_uses_its_measured_noise_scale(tmp_path):
    """With a single point on the S(B) curve, B_noise is taken from that run's B_simple, as the docs say."""
    run = tmp_path / "b64-w1-linear-lr0.1-s42"
    run.mkdir()
    summary = {"config": {"batch_size": 64, "batches_per_allreduce": 1, "model": "resnet18"}, "global_batch": 64,
               "world_size": 1, "final_val_acc": 0.5, "best_val_acc": 0.5, "train_seconds": 10.0, "images_per_sec": 640.0,
               "steady_images_per_sec": 640.0, "epochs_completed": 1, "parameters": 1000, "noise_scale": 192.0,
               "target": {"step": 400, "train_seconds": 9.0}, "simulated_workers": False}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": 0.5}) + "\n")
    result = plan(tmp_path, Network(10.0, 5.0), workers=(1, 2))
    s_min, b_noise = result["steps_curve"]
    assert b_noise == 192.0 and s_min == pytest.approx(400 / (1 + 192 / 64))
