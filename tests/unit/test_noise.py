"""The gradient noise scale: one overflow step cannot poison it, and fp16's loss scale never leaks into it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from workers import run_workers

from batchscale.config import Config
from batchscale.noise import GradNorms, NoiseScale
from batchscale.precision import FP32, resolve


def test_a_non_finite_pair_is_left_out_of_the_averages():
    clean, hit = NoiseScale(), NoiseScale()
    pairs = [(4.0, 1.5), (5.0, 1.6), (3.5, 1.2)]
    for small, big in pairs:
        clean.update(small, big, 32, 128, examples=1280)
    hit.update(math.inf, math.inf, 32, 128, examples=1280)  # an fp16 overflow step, skipped by the scaler
    for i, (small, big) in enumerate(pairs):
        hit.update(small, big, 32, 128, examples=1280)
        if i == 0:
            hit.update(math.nan, 1.0, 32, 128, examples=1280)
    assert hit.b_simple == pytest.approx(clean.b_simple, rel=1e-12) and hit.updates == clean.updates == 3


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
    assert float(small.trace_sigma) == pytest.approx(float(large.trace_sigma), rel=1e-9)
    assert float(small.trace_sigma) == pytest.approx(400 - 300 * math.exp(-40_960 / 50_000), rel=1e-9)


def _small_batch_norm(precision_name: str) -> float:
    """One process under torch.distributed with DDP: the comm hook takes the worker's own gradient norm."""
    from batchscale.parallel.torchdist import TorchBackend
    from batchscale.trainer import train_step

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
