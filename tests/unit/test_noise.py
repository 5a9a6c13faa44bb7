"""The gradient noise scale: one overflow step cannot poison it, and fp16's loss scale never leaks into it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from workers import run_workers

from batchscale.config import Config
from batchscale.noise import MIN_PAIRS, GradNorms, NoiseScale
from batchscale.precision import FP32, resolve


def test_a_non_finite_pair_is_left_out_of_the_averages():
    clean, hit = NoiseScale(window=1e15), NoiseScale(window=1e15)
    pairs = [(4.0, 1.5), (5.0, 1.6), (3.5, 1.2)] * 4
    for small, big in pairs:
        clean.update(small, big, 32, 128, examples=1280)
    hit.update(math.inf, math.inf, 32, 128, examples=1280)  # an fp16 overflow step, skipped by the scaler
    for i, (small, big) in enumerate(pairs):
        hit.update(small, big, 32, 128, examples=1280)
        if i == 0:
            hit.update(math.nan, 1.0, 32, 128, examples=1280)
    assert hit.b_simple == pytest.approx(clean.b_simple, rel=1e-9) and hit.updates == clean.updates == 12


def test_with_a_long_window_the_estimate_is_the_ratio_of_plain_means():
    """Debiased: early pairs weigh no more than late ones. The first pair (at initialization, and far off)
    must not dominate: brute force is the ratio of the arithmetic means of the per-pair estimates."""
    rng = np.random.default_rng(3)
    b_small, b_big = 64, 256
    # |G|^2 = 1, tr(Sigma) = 200: E|g_b|^2 = 1 + 200 / b, scattered as squared norms are.
    smalls = (1 + 200 / b_small) * rng.gamma(20.0, 1 / 20, 40)
    bigs = (1 + 200 / b_big) * rng.gamma(20.0, 1 / 20, 40)
    smalls[0], bigs[0] = 40.0, 1.0  # a wild first pair, as at initialization
    scale = NoiseScale(window=1e15)
    for small, big in zip(smalls, bigs):
        scale.update(float(small), float(big), b_small, b_big, examples=b_big)
    trace = (smalls - bigs) / (1 / b_small - 1 / b_big)
    grad_sq = (b_big * bigs - b_small * smalls) / (b_big - b_small)
    assert scale.b_simple == pytest.approx(trace.mean() / grad_sq.mean(), rel=1e-9)
    # Its standard error against the spread of the same ratio over resampled pairs (a bootstrap, independent;
    # half its central 68%, since a ratio's tails are heavy).
    boot = [trace[i].mean() / grad_sq[i].mean() for i in (rng.integers(0, 40, 40) for _ in range(4000))]
    low, high = np.percentile(boot, [16, 84])
    assert scale.standard_error == pytest.approx((high - low) / 2, rel=0.3)


def test_no_estimate_from_a_handful_of_pairs():
    scale = NoiseScale()
    for _ in range(MIN_PAIRS - 1):
        scale.update(4.0, 1.5, 32, 128, examples=128)
    assert scale.b_simple is None
    scale.update(4.0, 1.5, 32, 128, examples=128)
    assert scale.b_simple is not None


def test_the_average_forgets_by_examples_so_batch_sizes_compare():
    """A batch-256 run measuring every 2,560 examples and a batch-1024 run every 10,240 forget a change in the
    noise at the same rate per example: after the same examples their averages agree."""
    small, large = NoiseScale(window=50_000), NoiseScale(window=50_000)

    def feed(scale: NoiseScale, b_big: int, examples: int, trace: float) -> None:
        # Exact norms for |G|^2 = 1 and tr(Sigma) = trace: |g_b|^2 = |G|^2 + trace / b.
        for _ in range(examples // (10 * b_big)):
            scale.update(1 + trace / 32, 1 + trace / b_big, 32, b_big, examples=10 * b_big)

    for scale, b_big in ((small, 256), (large, 1024)):
        feed(scale, b_big, 10_240, trace=100.0)
        feed(scale, b_big, 40_960, trace=400.0)
    assert small.moments()["trace"] == pytest.approx(large.moments()["trace"], rel=1e-9)
    # And both have forgotten most of the first stretch: past its share of the examples (10,240 of 51,200).
    assert 400 - small.moments()["trace"] < 300 * 10_240 / 51_200


def _small_batch_norm(precision_name: str) -> float:
    """One process under torch.distributed with DDP: the comm hook takes the worker's own gradient norm."""
    from batchscale.parallel.torchdist import TorchBackend
    from batchscale.training.step import train_step

    config = Config(precision=precision_name, no_cuda=True)
    backend = TorchBackend(config)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model, optimizer = backend.prepare(model, optimizer)
    precision = resolve(config, backend.device) if precision_name != "fp32" else FP32
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(16, 3, 32, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen))
    norms = GradNorms()
    norms.reset(backend.device)
    assert backend.can_probe
    backend.probe(norms)
    train_step(model, optimizer, [batch], backend, nn.CrossEntropyLoss(), precision, norms)
    backend.probe(None)
    backend.finish()
    return float(norms.small_sq)


def test_fp16_small_batch_norm_is_in_unscaled_units():
    fp32, fp16 = run_workers(_small_batch_norm, 1, "fp32")[0], run_workers(_small_batch_norm, 1, "fp16")[0]
    assert fp16 == pytest.approx(fp32, rel=0.05)  # fp16 rounding, not the scaler's factor of 65536**2


def test_the_small_batch_norm_is_the_mean_over_every_micro_batch():
    """Brute force: each micro-batch's own gradient from a backward pass of its own, against what the
    accumulating step records."""
    from batchscale.parallel.base import Backend
    from batchscale.training.step import train_step

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    gen = torch.Generator().manual_seed(1)
    micro = [(torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(4)]
    own = []
    for x, y in micro:
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        own.append(sum(float(p.grad.square().sum()) for p in model.parameters()))
    norms = GradNorms()
    norms.reset(torch.device("cpu"))
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), micro, Backend(Config(no_cuda=True)),
               nn.CrossEntropyLoss(), FP32, norms)
    assert float(norms.small_sq) == pytest.approx(sum(own) / 4, rel=1e-5)
