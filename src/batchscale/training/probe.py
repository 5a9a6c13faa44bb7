"""B_simple at fixed weights: `--noise-probe N` takes N micro-batch gradients at the run's final weights (its
target, in a trial that stops there), with no optimizer step between them, so the LR and the path that led
there do not move it.

The gradients come in `GROUPS` groups of N // GROUPS; each group is one pair for the estimator (noise.py): the
mean squared norm of its micro-batch gradients against the squared norm of their mean. From one group, those
two give exactly the unbiased brute force (tr(Sigma) as the micro-batch size times their sample variance, |G|^2
as their mean's squared norm less its own noise); the groups' scatter gives the interval, and their raw sums go
to summary.json, so a study can pool them over seeds and batch sizes before dividing (noise.pool).

Micro-batches are the run's own size (its --batch-size) and augmentation, drawn independently (images with
replacement, from a generator of their own, the run's data order untouched), so the estimator is unbiased for
a training set of any size; in train mode: each has its own batch-norm statistics, as in the training step.
The gradient is of the loss alone (weight decay, which adds no noise, is the optimizer's). Many micro-batches'
gradients come from one vectorized pass (torch.func.vmap over a copy of the model whose batch norm keeps no
running statistics), so the model, its running statistics and the backend's communication hooks are never
touched: every worker probes its own draws and the sums are added up.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap

from .. import data
from ..noise import SUMS, NoiseScale, pool
from ..parallel import Backend, unwrap

GROUPS = 16  # pairs per probe: enough scatter for an interval (15 degrees of freedom) from one run alone
MIN_GRADIENTS = 2 * GROUPS  # a pair needs two micro-batches


def micro_batches(batches: data.TrainBatches, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Independent micro-batches: images drawn with replacement, each augmented as training augments it."""
    gen = torch.Generator().manual_seed(seed)
    b, t, n = batches.batch_size, batches.translate, batches.n
    while True:
        idx = torch.randint(0, n, (b,), generator=gen)
        if batches.augment:
            dx, dy = (torch.randint(0, 2 * t + 1, (b,), generator=gen) for _ in range(2))
            flip = torch.randint(0, 2, (b,), generator=gen, dtype=torch.bool)
        else:
            dx = dy = torch.full((b,), t)
            flip = torch.zeros(b, dtype=torch.bool)
        corners = [torch.randint(0, 32 - batches.cutout + 1, (b,), generator=gen) for _ in range(2)] \
            if batches.augment and batches.cutout else []
        device = batches.labels.device
        yield batches.gather(*(v.to(device) for v in (idx, dx, dy, flip, *corners)))


CHUNK = 32  # micro-batch gradients per vectorized pass: memory for CHUNK copies of the gradient


def probe_noise(model: nn.Module, batches: data.TrainBatches, gradients: int, criterion: nn.Module,
                backend: Backend, seed: int) -> dict[str, Any]:
    """The probe's record for summary.json: B_simple and its 90% interval (high: null where unbounded), the
    raw sums (noise.SUMS), and what it took."""
    start = time.perf_counter()
    net = copy.deepcopy(unwrap(model))
    replace_all_batch_norm_modules_(net)  # batch statistics only, and nothing written back
    net.train()
    params = {k: v.detach() for k, v in net.named_parameters() if v.requires_grad}
    fixed = dict(net.named_buffers())

    def loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return criterion(functional_call(net, (p, fixed), (x,)), y)

    per_micro = vmap(grad(loss), in_dims=(None, 0, 0))
    size = gradients // GROUPS
    world, rank = backend.world_size, backend.rank
    mine = GROUPS // world + (rank < GROUPS % world)  # this worker's share of the groups
    scale = NoiseScale(window=math.inf)
    stream = micro_batches(batches, seed * 1_000_003 + rank)  # every worker its own draws
    for _ in range(mine):
        total: Tensor | None = None
        small = torch.zeros((), dtype=torch.float64, device=backend.device)
        left = size
        while left:
            m = min(CHUNK, left)
            xs, ys = zip(*(next(stream) for _ in range(m)))
            grads = per_micro(params, torch.stack(xs), torch.stack(ys))
            flat = torch.cat([g.detach().reshape(m, -1).float() for g in grads.values()], 1)
            small = small + flat.double().square().sum()
            total = flat.sum(0) if total is None else total + flat.sum(0)
            left -= m
        mean = total / size  # type: ignore[operator]
        scale.update(small / size, mean.double().square().sum(), batches.batch_size, size * batches.batch_size,
                     examples=0.0)
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
