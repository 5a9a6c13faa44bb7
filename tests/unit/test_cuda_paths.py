"""What a first GPU run would trip over, checked on the CPU: compiled DDP keeps no_sync, two ranks never share
a GPU silently, compiling covers every evaluation shape, a GPU-side data plan does not block, and Horovod gets
weights in a layout its collectives take."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from launch import needs_horovod
from torch import nn
from workers import run_workers

from batchscale.config import Config
from batchscale.errors import ConfigError
from batchscale.parallel.base import check_one_gpu_each


def _no_sync_under_compile() -> list[bool]:
    from batchscale.parallel.torchdist import TorchBackend

    backend = TorchBackend(Config(no_cuda=True))
    model, _ = backend.prepare(nn.Linear(4, 2), torch.optim.SGD(nn.Linear(4, 2).parameters(), lr=0.1))
    compiled = torch.compile(model)  # wrapping only: nothing is compiled until it is called
    flags = [model.require_backward_grad_sync]
    with backend.accumulating(compiled):
        flags.append(model.require_backward_grad_sync)
    flags.append(model.require_backward_grad_sync)
    backend.finish()
    return flags


def test_compiled_ddp_still_skips_the_allreduce_while_accumulating():
    assert run_workers(_no_sync_under_compile, 1) == [[True, False, True]]


HOROVOD_LAYOUT = """
import json, horovod.torch as hvd, torch
from batchscale.config import Config
from batchscale.models import CifarResNet18
from batchscale.parallel.horovod_backend import HorovodBackend
backend = HorovodBackend(Config(no_cuda=True))
backend.device = torch.device("cuda")  # the layout a GPU run gets; nothing is moved there
def broadcasts(memory_format):
    try:
        hvd.broadcast_parameters(CifarResNet18(width=4).to(memory_format=memory_format).state_dict(), root_rank=0)
        return True
    except ValueError:
        return False
print(json.dumps([broadcasts(backend.memory_format), broadcasts(torch.channels_last)]))
"""


@needs_horovod
def test_horovod_weights_on_a_gpu_are_in_a_layout_its_collectives_take():
    # On an H100 the first Horovod run died in broadcast_parameters: "Tensor is required to be contiguous".
    done = subprocess.run([sys.executable, "-c", HOROVOD_LAYOUT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    ours, channels_last = json.loads(done.stdout.strip().splitlines()[-1])
    assert ours and not channels_last  # ours goes through; the layout the other backends use on a GPU would not


def test_two_ranks_on_one_gpu_are_refused_naming_the_count():
    check_one_gpu_each(["node-a/GPU-0", "node-a/GPU-1", "node-b/GPU-0"])  # distinct GPUs: fine
    with pytest.raises(ConfigError, match=r"ranks 0 and 2 would share one GPU on node-a: 3 processes there but 2 GPU"):
        check_one_gpu_each(["node-a/GPU-0", "node-a/GPU-1", "node-a/GPU-0"])


@pytest.mark.parametrize("name,precision,want", [
    ("NVIDIA H100 NVL", "bf16", 835.0), ("NVIDIA H100 80GB HBM3", "bf16", 989.0), ("NVIDIA H100 PCIe", "bf16", 756.0),
    ("NVIDIA H100 80GB HBM3", "fp32", 494.7),  # fp32 convolutions run on TF32 tensor cores by default
])


def test_peak_flops_is_the_peak_of_the_arithmetic_used(monkeypatch, name, precision, want):
    from batchscale.precision import Precision
    from batchscale.training import bench

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]
    assert bench.peak_tflops(torch.device("cuda", 0), Precision(precision, "cuda", dtype, None)) == want
