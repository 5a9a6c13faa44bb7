"""--simulate-workers N: one process computes what N real workers compute, batch norm included."""

import torch
from torch import nn
from workers import run_workers

from batchscale import data
from batchscale.config import Config
from batchscale.models import CifarResNet18
from batchscale.parallel.base import Backend
from batchscale.parallel.torchdist import TorchBackend
from batchscale.training.step import train_step


def images() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    return torch.randint(0, 256, (128, 3, 32, 32), generator=gen, dtype=torch.uint8), torch.randint(0, 10, (128,), generator=gen)


def one_step(backend: Backend, simulate: bool, workers: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = CifarResNet18(width=4)  # batch norm: each worker's batch must be normalized by its own statistics
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model, optimizer = backend.prepare(model, optimizer)
    rank = 0 if simulate else backend.rank
    batches = data.TrainBatches(*images(), 8, 1, data.Shard(rank, workers), 3, torch.device("cpu"), simulate=simulate)
    micro = next(batches.epoch(1))
    assert len(micro) == (workers if simulate else 1)
    train_step(model, optimizer, micro, backend, nn.CrossEntropyLoss())
    return [p.grad.clone() for p in model.parameters()]


def real_rank() -> list[torch.Tensor]:
    backend = TorchBackend(Config(no_cuda=True))
    try:
        result = one_step(backend, simulate=False, workers=2)
        backend.finish()
        return result
    finally:
        backend.shutdown()


def test_two_simulated_workers_give_the_gradients_of_two_real_ones():
    real = run_workers(real_rank, 2)[0]
    simulated = one_step(Backend(Config(no_cuda=True)), simulate=True, workers=2)
    for r, s in zip(real, simulated):
        assert float((r - s).norm() / r.norm()) < 1e-5
    # And it is not what one big batch gives: batch norm over 16 images differs from two groups of 8.
    torch.manual_seed(0)
    whole = CifarResNet18(width=4)
    batches = data.TrainBatches(*images(), 16, 1, data.Shard(0, 1), 3, torch.device("cpu"))
    loss = nn.CrossEntropyLoss()(whole(next(batches.epoch(1))[0][0]), next(batches.epoch(1))[0][1])
    loss.backward()
    assert float((whole.stem[0].weight.grad - simulated[0]).norm() / simulated[0].norm()) > 1e-3
