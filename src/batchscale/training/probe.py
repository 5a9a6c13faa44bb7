"""B_simple at fixed weights: `--noise-probe N` takes N micro-batch gradients at the run's final weights (its
target, in a trial that stops there), with no optimizer step between them, so the LR and the path that led
there do not move it.

The gradients come in `GROUPS` groups of N // GROUPS; each group is one pair for the estimator (noise.py): the
mean squared norm of its micro-batch gradients against the squared norm of their mean. From one group, those
two give exactly the unbiased brute force (tr(Sigma) as the micro-batch size times their sample variance, |G|^2
as their mean's squared norm less its own noise); the groups' scatter gives the interval, and their raw sums go
to summary.json, so a study can pool them over seeds and batch sizes before dividing (noise.pool).

Micro-batches are the run's own (its --batch-size, augmented as training draws them, from epochs after the
run's last), in train mode: each has its own batch-norm statistics, as in the training step. The gradient is
of the loss alone (weight decay, which adds no noise, is the optimizer's). Batch-norm running statistics are
restored afterwards, and nothing goes through the backend's communication hooks: every worker probes its own
shard and the sums are added up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .. import data
from ..noise import SUMS, NoiseScale, pool
from ..parallel import Backend, unwrap

GROUPS = 16  # pairs per probe: enough scatter for an interval (15 degrees of freedom) from one run alone
MIN_GRADIENTS = 2 * GROUPS  # a pair needs two micro-batches


def micro_batches(batches: data.TrainBatches, first_epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
    epoch = first_epoch
    while True:
        for step in batches.epoch(epoch):
            yield from step
        epoch += 1


def probe_noise(model: nn.Module, batches: data.TrainBatches, gradients: int, criterion: nn.Module,
                backend: Backend, first_epoch: int) -> dict[str, Any]:
    """The probe's record for summary.json: B_simple and its 90% interval (high: null where unbounded), the
    raw sums (noise.SUMS), and what it took."""
    start = time.perf_counter()
    raw = unwrap(model)
    was_training = raw.training
    buffers = {k: v.clone() for k, v in raw.named_buffers()}
    params = [p for p in raw.parameters() if p.requires_grad]
    size = gradients // GROUPS
    world, rank = backend.world_size, backend.rank
    mine = GROUPS // world + (rank < GROUPS % world)  # this worker's share of the groups
    scale = NoiseScale(window=math.inf)
    stream = micro_batches(batches, first_epoch)
    raw.train()
    for _ in range(mine):
        total: Tensor | None = None
        small = torch.zeros((), dtype=torch.float64, device=backend.device)
        for _ in range(size):
            x, y = next(stream)
            grads = torch.autograd.grad(criterion(raw(x), y), params)
            flat = torch.cat([g.detach().reshape(-1).float() for g in grads])
            small = small + flat.double().square().sum()
            total = flat if total is None else total + flat
        mean = total / size  # type: ignore[operator]
        scale.update(small / size, mean.double().square().sum(), batches.batch_size, size * batches.batch_size,
                     examples=0.0)
    with torch.no_grad():
        for k, v in raw.named_buffers():
            v.copy_(buffers[k])
    raw.train(was_training)
    local = scale.raw_sums() or [0.0] * len(SUMS)  # a worker with no group adds nothing
    sums = backend.all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=backend.device)).tolist()
    pooled = pool([sums])
    return {
        "gradients": size * GROUPS, "groups": GROUPS, "micro_batch": batches.batch_size,
        "group_batch": size * batches.batch_size, "sums": sums,
        "b_simple": pooled and pooled.b_simple, "low": pooled and pooled.low,
        "high": pooled.high if pooled and pooled.bounded else None, "level": pooled and pooled.level,
        "seconds": time.perf_counter() - start,
    }
