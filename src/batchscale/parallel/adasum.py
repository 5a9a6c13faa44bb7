"""Adasum (Maleki et al., 2021) over torch.distributed, reducing what Horovod reduces: the optimizer's update.

Written by hand because torch.distributed has no Adasum; it follows Horovod's rule exactly
(per-tensor coefficients from float64 dot products, pairs at distance 1, 2, 4, ...), so
`--use-adasum` means the same under torchrun as under horovodrun, also on one node.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import ConfigError

# Below this squared norm a vector counts as zero and keeps coefficient 1, as in Horovod.
_TINY = math.sqrt(sys.float_info.min)


def adasum_pair(a: Tensor, b: Tensor) -> Tensor:
    """(1 - a.b / 2|a|^2) a + (1 - a.b / 2|b|^2) b: orthogonal vectors add, identical ones stay."""
    a64, b64 = a.double(), b.double()
    dot, a_sq, b_sq = float(a64.flatten() @ b64.flatten()), float(a64.square().sum()), float(b64.square().sum())
    a_coeff = 1.0 - dot / a_sq * 0.5 if a_sq >= _TINY else 1.0
    b_coeff = 1.0 - dot / b_sq * 0.5 if b_sq >= _TINY else 1.0
    return (a_coeff * a64 + b_coeff * b64).to(a.dtype)


def check_world_size(world_size: int) -> None:
    if world_size & (world_size - 1):
        raise ConfigError(
            f"--use-adasum needs a power-of-two number of workers (1, 2, 4, 8, ...), got {world_size}; "
            "change the worker count or drop --use-adasum"
        )


def adasum_allreduce(tensors: list[Tensor], rank: int, world_size: int, wire_dtype: torch.dtype | None = None) -> None:
    """Replaces each tensor, in place and identically on every rank, by the Adasum of its values on all ranks.

    Recursive doubling: at distance d each rank swaps its partial result with rank ^ d; the pair
    combines them with the lower rank's as `a`, so both hold bit-identical results afterwards.
    """
    check_world_size(world_size)
    dtype = wire_dtype or tensors[0].dtype
    sizes = [t.numel() for t in tensors]
    mine = torch.cat([t.reshape(-1).to(dtype) for t in tensors])
    theirs = torch.empty_like(mine)
    distance = 1
    while distance < world_size:
        partner = rank ^ distance
        requests = dist.batch_isend_irecv(
            [dist.P2POp(dist.isend, mine, partner), dist.P2POp(dist.irecv, theirs, partner)]
        )
        for request in requests:
            request.wait()
        low, high = (mine, theirs) if rank < partner else (theirs, mine)
        mine = torch.cat([adasum_pair(a, b) for a, b in zip(low.split(sizes), high.split(sizes))])
        distance *= 2
    for t, reduced in zip(tensors, mine.split(sizes)):
        t.copy_(reduced.view_as(t))


class AdasumOptimizer:
    """Horovod's Adasum optimizer: step locally, Adasum-reduce each parameter's change, apply the result.

    Momentum and weight decay act on each rank's own gradients first, exactly as in
    horovod.torch's _DistributedAdasumOptimizer.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, rank: int, world_size: int, wire_dtype: torch.dtype | None) -> None:
        check_world_size(world_size)
        self.optimizer, self.rank, self.world_size, self.wire_dtype = optimizer, rank, world_size, wire_dtype
        self.params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> dict[Any, Any]:
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:
        starts = [p.detach().clone() for p in self.params]
        self.optimizer.step(closure)
        deltas = [p.sub_(start) for p, start in zip(self.params, starts)]
        adasum_allreduce(deltas, self.rank, self.world_size, self.wire_dtype)
        for p, start in zip(self.params, starts):
            p.copy_(start.add_(p))

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)
