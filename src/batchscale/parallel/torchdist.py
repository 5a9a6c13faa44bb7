"""torch.distributed: NCCL on GPUs, gloo on CPUs; gradients averaged by DDP with our comm hook (Horovod's
averaging, optional predivide and 16-bit wire format), or combined by our Adasum."""

# No `from __future__ import annotations`: DDP checks the comm hook's annotations as real classes.

import contextlib
import inspect
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import ConfigError
from ..noise import GradNorms
from .adasum import AdasumOptimizer, check_world_size
from .base import Backend, check_one_gpu_each, float_buffers, gpu_identity
from .launch import TORCHRUN_VARS


class TorchBackend(Backend):
    """torch.distributed: NCCL on GPUs, gloo on CPUs; gradients averaged by DDP with our comm hook."""

    name = "torch"

    def _join(self) -> tuple[int, int, int, int]:
        missing = [v for v in TORCHRUN_VARS if v not in os.environ]
        if missing:
            raise ConfigError(
                f"--backend torch needs a launcher that sets {', '.join(missing)}; start it with "
                "torchrun --nproc-per-node N train.py ..."
            )
        env = os.environ
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]), int(env.get("LOCAL_WORLD_SIZE", "1"))

    def _connect(self) -> None:
        config = self.config
        self.hook: AllreduceHook | None = None  # DDP's comm hook, made by prepare (Adasum has none)
        if config.use_adasum:
            check_world_size(self.world_size)
        if not dist.is_initialized():
            timeout = timedelta(seconds=config.collective_timeout)
            store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
            # torchrun keeps one store across --max-restarts; a prefix per attempt keeps a restarted group
            # from reading the dead workers' addresses (pytorch/pytorch#167288: "connection refused").
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            if self.device.type == "cuda":  # a gather through the store, before NCCL can fail on a shared GPU
                gpus = dist.PrefixStore(f"batchscale/attempt-{attempt}/gpus", store)
                gpus.set(str(self.rank), gpu_identity(self.device))
                check_one_gpu_each([gpus.get(str(r)).decode() for r in range(self.world_size)])
            dist.init_process_group(
                backend="nccl" if self.device.type == "cuda" else "gloo",
                store=dist.PrefixStore(f"batchscale/attempt-{attempt}", store),
                rank=self.rank,
                world_size=self.world_size,
                timeout=timeout,
                device_id=self.device if self.device.type == "cuda" else None,
            )

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        compression = torch.float16 if self.config.fp16_allreduce else torch.bfloat16 if self.config.bf16_allreduce else None
        if self.config.use_adasum:
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)
            return model, AdasumOptimizer(optimizer, self.rank, self.world_size, compression)  # type: ignore[return-value]
        # As Horovod: per-rank BN statistics during the epoch, averaged at its end (no per-step broadcast).
        ddp_params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
        no_buffer_sync = "forward_sync_buffers" if "forward_sync_buffers" in ddp_params else "broadcast_buffers"
        ddp = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            gradient_as_bucket_view=True,
            **{no_buffer_sync: False},
        )
        self.hook = AllreduceHook(self.world_size, self.config.gradient_predivide_factor, compression)
        ddp.register_comm_hook(self.hook, allreduce_hook)
        return ddp, optimizer

    @property
    def can_probe(self) -> bool:
        return self.hook is not None

    def probe(self, norms: GradNorms | None) -> None:
        if self.hook is not None:
            self.hook.norms = norms

    def accumulating(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper hides DDP's no_sync
        if isinstance(inner, nn.parallel.DistributedDataParallel):
            return inner.no_sync()
        return contextlib.nullcontext()  # Adasum: gradients stay local, only the update is reduced

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_max(self, tensor: Tensor) -> Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def average_buffers(self, model: nn.Module) -> None:
        for buf in float_buffers(model):
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(self.world_size)

    def barrier(self) -> None:
        dist.barrier()

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class AllreduceHook:
    """State for `allreduce_hook`: Horovod's averaging (optional predivide, optional 16-bit wire format)."""

    def __init__(self, world_size: int, predivide: float, dtype: torch.dtype | None) -> None:
        self.world_size, self.predivide, self.dtype = world_size, predivide, dtype
        self.norms: GradNorms | None = None  # set for the steps that measure the noise scale


def allreduce_hook(state: AllreduceHook, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
    """Sum of grad/predivide over ranks, then divided by world_size/predivide, as Horovod's average does."""
    grads = bucket.buffer()
    if state.norms is not None:
        state.norms.small_sq += grads.float().square().sum()
    wire = grads.to(state.dtype) if state.dtype is not None else grads
    if state.predivide != 1.0:
        wire.div_(state.predivide)
    fut = dist.all_reduce(wire, async_op=True).get_future()

    def finish(f: torch.futures.Future[list[Tensor]]) -> Tensor:
        reduced = f.value()[0].div_(state.world_size / state.predivide)
        return grads.copy_(reduced) if reduced is not grads else grads

    return fut.then(finish)
