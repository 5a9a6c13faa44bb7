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


def _probe_sums(rng: np.random.Generator, grad: np.ndarray, variances: np.ndarray, micro: int, groups: int,
                size: int) -> list[float]:
    """A fixed-weights probe drawn exactly: `groups` groups of `size` micro-batch gradients of `micro` examples,
    each example's gradient the true one plus diagonal noise."""
    scale = NoiseScale(window=math.inf)
    for _ in range(groups):
        parts = grad + rng.normal(size=(size, grad.size)) * np.sqrt(variances / micro)
        mean = parts.mean(0)
        scale.update(float((parts * parts).sum(1).mean()), float(mean @ mean), micro, size * micro, examples=0.0)
    return scale.raw_sums()


def test_pooled_sums_hold_measurements_whose_own_grad_sq_came_out_negative():
    """Pooled before dividing, over 96 probes each too small to resolve |G|^2 alone (a sixth or more of their own
    |G|^2 estimates negative): the truth, not the low draws a `|G|^2 > 0` gate would keep, nor the high ratios."""
    from batchscale.noise import moments, pool

    rng = np.random.default_rng(7)
    dim = 300
    grad = rng.normal(size=dim) * 0.02
    variances = rng.uniform(0.5, 2.0, size=dim)
    truth = variances.sum() / (grad @ grad)  # about 3,600: far above the micro-batch of 8
    probes = [_probe_sums(rng, grad, variances, micro=8, groups=16, size=8) for _ in range(96)]
    negative = sum(moments(s)["grad_sq"] <= 0 for s in probes)
    assert negative >= 12  # the case the pooling is for
    pooled = pool(probes)
    assert pooled.b_simple == pytest.approx(truth, rel=0.2) and pooled.low <= truth <= pooled.high


def test_fieller_interval_covers_the_truth_and_is_unbounded_where_grad_sq_is_not_resolved():
    from batchscale.noise import pool

    rng = np.random.default_rng(11)
    dim = 100
    grad = rng.normal(size=dim) * 0.05
    variances = rng.uniform(0.5, 2.0, size=dim)
    truth = variances.sum() / (grad @ grad)
    intervals = [pool([_probe_sums(rng, grad, variances, micro=8, groups=16, size=4)]) for _ in range(300)]
    held = sum(p.low <= truth <= p.high for p in intervals) / len(intervals)
    assert 0.84 <= held <= 0.96, held  # a 90% interval
    assert any(not p.bounded for p in intervals) or all(p.high < 10 * truth for p in intervals)
    # No gradient at all (the truth is infinite): nearly every interval runs to infinity, and says so.
    flat = [pool([_probe_sums(rng, np.zeros(dim), variances, micro=8, groups=16, size=4)]) for _ in range(100)]
    assert sum(not p.bounded for p in flat) >= 85
    assert all(math.isinf(p.high) for p in flat if not p.bounded)


def test_the_current_value_follows_a_change_the_run_average_keeps():
    """After the noise quadruples, the current value (a window of 5,000 examples) is near the new truth within
    a few windows; the run's average, every pair alike, sits between old and new by their shares of the pairs."""
    scale = NoiseScale(window=5_000)
    for trace, pairs in ((100.0, 100), (400.0, 100)):
        for _ in range(pairs):  # exact norms for |G|^2 = 1: |g_b|^2 = |G|^2 + trace / b
            scale.update(1 + trace / 32, 1 + trace / 256, 32, 256, examples=256)
    assert scale.b_simple == pytest.approx(400.0, rel=0.02)
    assert scale.run_b_simple == pytest.approx(250.0, rel=1e-6)
