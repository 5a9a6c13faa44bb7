"""Adasum: the pairwise rule, our torch.distributed reduction, and agreement with Horovod's."""

import sys
from pathlib import Path

import pytest
import torch
from launched_worker import rank_tensors
from workers import run_workers

from batchscale.errors import ConfigError
from batchscale.parallel.adasum import adasum_allreduce, adasum_pair, check_world_size

HERE = Path(__file__).resolve().parents[1]
HOROVODRUN = Path(sys.executable).parent / "horovodrun"


def test_orthogonal_vectors_add():
    a, b = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, -2.0, 0.0])
    assert torch.equal(adasum_pair(a, b), a + b)


def test_identical_vectors_stay():
    a = torch.tensor([1.5, -2.0, 0.25])
    torch.testing.assert_close(adasum_pair(a, a.clone()), a)


def test_opposite_vectors_cancel_and_zero_is_neutral():
    a = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(adasum_pair(a, -a), torch.zeros(2))
    assert torch.equal(adasum_pair(torch.zeros(2), a), a)


def test_pair_rule_formula():
    a, b = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])
    # a.b = 1, |a|^2 = 2, |b|^2 = 1: (1 - 1/4) a + (1 - 1/2) b
    torch.testing.assert_close(adasum_pair(a, b), 0.75 * a + 0.5 * b)


@pytest.mark.parametrize("world", [3, 6])
def test_non_power_of_two_is_a_clear_error(world):
    with pytest.raises(ConfigError, match="power-of-two"):
        check_world_size(world)


def reduce_on_rank() -> list[torch.Tensor]:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    tensors = rank_tensors(dist.get_rank())
    adasum_allreduce(tensors, dist.get_rank(), dist.get_world_size())
    dist.barrier()  # leave together: gloo aborts a rank whose peer tears down first
    dist.destroy_process_group()
    return tensors


@pytest.mark.parametrize("world", [2, 4])
def test_allreduce_is_the_recursive_pairwise_tree(world):
    results = run_workers(reduce_on_rank, world)
    for r in range(1, world):  # bit-identical on every rank
        assert all(torch.equal(a, b) for a, b in zip(results[0], results[r]))
    per_rank = [rank_tensors(r) for r in range(world)]
    for i, got in enumerate(results[0]):
        level = [t[i] for t in per_rank]
        while len(level) > 1:
            level = [adasum_pair(level[j], level[j + 1]) for j in range(0, len(level), 2)]
        torch.testing.assert_close(got, level[0], rtol=1e-6, atol=1e-7)
