"""Data-parallel arithmetic: 2 ranks x b, or k micro-batches of b, give the gradient of one batch of 2b or kb."""

import pytest
import torch
from torch import nn
from workers import run_workers

from batchscale.config import Config
from batchscale.parallel.base import Backend
from batchscale.parallel.torchdist import TorchBackend
from batchscale.training.step import train_step

B = 8


def tiny_net() -> nn.Module:
    torch.manual_seed(3)  # no batch norm: the gradient of a batch is the mean of per-sample gradients
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))


def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    return torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def gradients(backend: Backend, micro: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    model = tiny_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model, optimizer = backend.prepare(model, optimizer)
    train_step(model, optimizer, micro, backend, nn.CrossEntropyLoss())
    return [p.grad.detach().clone() for p in model.parameters()]


def single_reference(n: int) -> list[torch.Tensor]:
    return gradients(Backend(Config(no_cuda=True)), [batch(n)])


def rank_gradients(config: Config, micro_batches: int) -> list[torch.Tensor]:
    backend = TorchBackend(config)
    try:
        x, y = batch(2 * B * micro_batches)
        # Rank r's micro-batch m holds images [(m * 2 + r) * B, ...): together the ranks cover the whole batch.
        micro = [(x[(m * 2 + backend.rank) * B :][:B], y[(m * 2 + backend.rank) * B :][:B]) for m in range(micro_batches)]
        result = gradients(backend, micro)
        backend.finish()
        return result
    finally:
        backend.shutdown()


def assert_close(got: list[torch.Tensor], want: list[torch.Tensor], tol: float) -> None:
    """Per-tensor relative error in norm: summation order alone moves single elements by more than rtol."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert float((g - w).norm() / w.norm()) <= tol


def test_accumulated_micro_batches_equal_one_large_batch():
    x, y = batch(4 * B)
    micro = [(x[i * B : (i + 1) * B], y[i * B : (i + 1) * B]) for i in range(4)]
    assert_close(gradients(Backend(Config(no_cuda=True)), micro), single_reference(4 * B), tol=1e-5)


@pytest.mark.parametrize(
    "flags,micro,tol",
    [
        ({}, 1, 1e-5),
        ({"gradient_predivide_factor": 2.0}, 1, 1e-5),
        ({}, 2, 1e-5),  # no_sync accumulation across 2 micro-batches, then one allreduce
        ({"fp16_allreduce": True}, 1, 1e-3),
        ({"bf16_allreduce": True}, 1, 1e-2),
    ],
)


def test_two_ranks_average_to_the_single_process_gradient(flags, micro, tol):
    config = Config(no_cuda=True, **flags)
    grads = run_workers(rank_gradients, 2, config, micro)
    want = single_reference(2 * B * micro)
    for g0, g1 in zip(grads[0], grads[1]):
        assert torch.equal(g0, g1)  # every rank applies the same update
    assert_close(grads[0], want, tol)
    if flags.get("fp16_allreduce"):
        # Compression is real: the result differs from the fp32 one, within fp16 rounding.
        assert any(not torch.equal(g, w) for g, w in zip(grads[0], want))
