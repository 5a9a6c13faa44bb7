"""Horovod backend: what the original ran, with every flag meaning what Horovod means by it."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import Backend, check_one_gpu_each, float_buffers, gpu_identity


class HorovodBackend(Backend):
    name = "horovod"

    def _join(self) -> tuple[int, int, int, int]:
        config = self.config
        if config.compile:
            raise ConfigError("--compile is not supported under Horovod (its gradient hooks); use torchrun for compiled runs")
        if config.bf16_allreduce:
            raise ConfigError("Horovod cannot allreduce bfloat16 tensors; use --fp16-allreduce, or torchrun for bf16")
        try:
            import horovod.torch as hvd
        except ImportError:
            raise ConfigError(
                "Horovod is not installed in this environment; run `make horovod` (or scripts/install_horovod.sh), "
                "or launch with torchrun instead"
            ) from None
        self.hvd = hvd
        # Horovod's stall watchdog ends a job whose ranks stop meeting, as --collective-timeout does for torchrun.
        timeout = max(1, int(config.collective_timeout))
        os.environ.setdefault("HOROVOD_STALL_CHECK_TIME_SECONDS", str(min(60, timeout)))
        os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", str(timeout))
        hvd.init()
        return hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size()

    def _connect(self) -> None:
        config, hvd = self.config, self.hvd
        if self.device.type == "cuda":
            check_one_gpu_each(hvd.allgather_object(gpu_identity(self.device)))
        if config.use_adasum:
            if not hvd.mpi_enabled():
                raise ConfigError(
                    "Horovod's Adasum needs MPI and this job runs on Gloo (horovodrun --gloo); "
                    "launch without --gloo, or drop --use-adasum"
                )
            from .adasum import check_world_size

            check_world_size(self.world_size)
            if self._gpu_adasum and self.local_world_size == self.world_size and self.world_size > 1 and self.rank == 0:
                warnings.warn(
                    "Horovod's GPU Adasum averages gradients within a node (NCCL sum, then 1/local size) and applies "
                    f"Adasum only between nodes; on this single node it averages {self.world_size} GPUs, and the LR is "
                    f"scaled by {self.local_world_size} as for averaging (Horovod's advice). Use torchrun for Adasum "
                    "between these GPUs.",
                    stacklevel=2,
                )

    @property
    def _gpu_adasum(self) -> bool:
        return self.config.use_adasum and self.device.type == "cuda" and self.hvd.nccl_built()

    @property
    def memory_format(self) -> torch.memory_format:
        # Horovod's collectives refuse any tensor that is not is_contiguous(), and channels_last weights and
        # gradients are not (seen on an H100: broadcast_parameters fails at once).
        return torch.contiguous_format

    def averaged_batches(self) -> int:
        # Horovod's GPU Adasum averages within the node, so the LR scales with the GPUs per node.
        if self._gpu_adasum:
            return self.local_world_size * self.config.batches_per_allreduce
        return super().averaged_batches()

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        hvd = self.hvd
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        state = optimizer.state_dict()
        compression = hvd.Compression.fp16 if self.config.fp16_allreduce else hvd.Compression.none
        # DistributedOptimizer builds a new optimizer from the param groups: a resumed state must be reloaded.
        distributed = hvd.DistributedOptimizer(
            optimizer,
            named_parameters=model.named_parameters(),
            compression=compression,
            backward_passes_per_step=self.config.batches_per_allreduce,
            op=hvd.Adasum if self.config.use_adasum else hvd.Average,
            gradient_predivide_factor=self.config.gradient_predivide_factor,
        )
        if state["state"]:
            distributed.load_state_dict(state)
            # Only with state: on a fresh optimizer Horovod initializes it with a zero-gradient step,
            # which applies weight decay once and seeds momentum, unlike any other backend.
            hvd.broadcast_optimizer_state(distributed, root_rank=0)
        return model, distributed

    def accumulating(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()  # DistributedOptimizer counts backward passes itself

    def optimizer_step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
        if scaler is None:
            optimizer.step()
            return
        # The scaler reads the gradients, so Horovod's allreduce must finish first (Horovod's AMP recipe).
        optimizer.synchronize()  # type: ignore[attr-defined]
        with optimizer.skip_synchronize():  # type: ignore[attr-defined]
            scaler.step(optimizer)
        scaler.update()

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        return self.hvd.allreduce_(tensor, op=self.hvd.Sum)

    def all_reduce_max(self, tensor: Tensor) -> Tensor:
        return self.hvd.allreduce_(tensor, op=self.hvd.Max)

    def broadcast_object(self, obj: Any) -> Any:
        return self.hvd.broadcast_object(obj, root_rank=0, name="batchscale.object")  # same name on every rank

    def average_buffers(self, model: nn.Module) -> None:
        for buf in float_buffers(model):
            self.hvd.allreduce_(buf, op=self.hvd.Average)

    def barrier(self) -> None:
        self.hvd.barrier()

    def shutdown(self) -> None:
        self.hvd.shutdown()
