"""Run under torchrun or horovodrun by the tests: the same work on either backend, rank 0 saves the result.

usage: launched_worker.py adasum OUT   |   launched_worker.py parity OUT FLAGS_JSON
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

from batchscale import data
from batchscale.config import Config
from batchscale.models import CifarResNet18
from batchscale.parallel import init_backend
from batchscale.training.step import train_step


def rank_tensors(rank: int) -> list[torch.Tensor]:
    """Per-rank values with a shared component, so the pairs are neither parallel nor orthogonal."""
    shared = torch.Generator().manual_seed(100)
    own = torch.Generator().manual_seed(rank)
    shapes = [(7,), (3, 5), (64, 3, 3, 3), (1000,)]
    return [torch.randn(s, generator=shared) + 0.7 * torch.randn(s, generator=own) for s in shapes]


def adasum(out: str) -> None:
    backend = init_backend(Config(no_cuda=True, use_adasum=True))
    tensors = rank_tensors(backend.rank)
    if backend.name == "horovod":
        hvd = backend.hvd  # type: ignore[attr-defined]
        result = [hvd.allreduce(t, op=hvd.Adasum, name=f"t{i}") for i, t in enumerate(tensors)]
    else:
        from batchscale.parallel.adasum import adasum_allreduce

        adasum_allreduce(tensors, backend.rank, backend.world_size)
        result = tensors
    if backend.rank == 0:
        torch.save({"result": result, "world_size": backend.world_size}, out)
    backend.finish()


def parity(out: str, flags: dict) -> None:
    config = Config(no_cuda=True, batch_size=8, **flags)
    backend = init_backend(config)
    result = trajectory(config, backend)  # the model is gone before the process group goes
    if backend.rank == 0:
        torch.save(result, out)
    backend.finish()


def trajectory(config: Config, backend) -> dict:
    torch.manual_seed(0)
    model = CifarResNet18(width=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model, optimizer = backend.prepare(model, optimizer)
    gen = torch.Generator().manual_seed(1)
    images, labels = torch.randint(0, 256, (256, 3, 32, 32), generator=gen, dtype=torch.uint8), torch.randint(0, 10, (256,), generator=gen)
    batches = data.TrainBatches(images, labels, config.batch_size, config.batches_per_allreduce,
                                data.Shard(backend.rank, backend.world_size), 5, backend.device)
    losses = []
    for _, micro in zip(range(5), batches.epoch(1)):
        loss_sum, _ = train_step(model, optimizer, micro, backend, nn.CrossEntropyLoss())
        images_seen = torch.tensor(float(sum(y.shape[0] for _, y in micro)))
        totals = backend.all_reduce_sum(torch.stack([loss_sum.detach(), images_seen]))
        losses.append(float(totals[0] / totals[1]))
    module = getattr(model, "module", model)
    return {"losses": losses, "weights": {k: v.clone() for k, v in module.state_dict().items()}}


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "adasum":
        adasum(sys.argv[2])
    else:
        parity(sys.argv[2], json.loads(sys.argv[3]))
