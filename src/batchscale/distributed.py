"""The distributed layer: everything the training loop needs from its workers, behind one small class.

`init_backend(config)` picks the single-process or torch.distributed backend; the loop
calls only the methods of `Backend` and never asks which one runs.
"""

import contextlib
import gc
import inspect
import os
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .adasum import AdasumOptimizer, check_world_size
from .config import Config
from .errors import BatchscaleError, ConfigError
from .noise import GradNorms

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
HOROVOD_VARS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
T = TypeVar("T")


def pick_device(local_rank: int, no_cuda: bool) -> torch.device:
    """This process's GPU (by local rank; with one visible GPU per process, that one), or the CPU."""
    if not no_cuda and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gpu_identity(device: torch.device) -> str:
    return f"{socket.gethostname()}/{torch.cuda.get_device_properties(device).uuid}"


def check_one_gpu_each(identities: list[str]) -> None:
    """NCCL fails deep inside ("Duplicate GPU detected") when two ranks share a GPU: say so first, in one line."""
    seen: dict[str, int] = {}
    for rank, identity in enumerate(identities):
        if identity in seen:
            host = identity.split("/", 1)[0]
            gpus = len({i for i in identities if i.startswith(host + "/")})
            ranks = sum(i.startswith(host + "/") for i in identities)
            raise ConfigError(
                f"ranks {seen[identity]} and {rank} would share one GPU on {host}: {ranks} processes there but "
                f"{gpus} GPU(s) visible to them; launch at most {gpus} per machine (--nproc-per-node / -np) or add --no-cuda"
            )
        seen[identity] = rank


class Backend:
    """One process, no communication. The base of the others."""

    name = "single"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rank, self.world_size, self.local_rank, self.local_world_size = 0, 1, 0, 1
        self.device = pick_device(0, config.no_cuda)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def lr_replicas(self) -> int:
        """How many batches of --batch-size one update combines, for the LR scaling rule.

        Adasum needs no scaling with the number of workers (Horovod's rule), averaging does.
        """
        if self.config.use_adasum:
            return 1
        return self.world_size * self.config.batches_per_allreduce

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Returns the model to call and the optimizer to step; together they combine all workers' gradients."""
        return model, optimizer

    def accumulating(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Context for a backward pass whose gradients must not be communicated yet."""
        return contextlib.nullcontext()

    def noise_probe(self, norms: GradNorms | None) -> bool:
        """Asks the backend to add each worker's own squared gradient norm, before the allreduce,
        to `norms.small_sq` during the next backward (None: stop). False where it cannot."""
        return False

    def optimizer_step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
        """Applies the combined gradients (through the fp16 gradient scaler when there is one)."""
        if scaler is None:
            optimizer.step()
            return
        scaler.step(optimizer)
        scaler.update()

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        return tensor

    def all_reduce_max(self, tensor: Tensor) -> Tensor:
        return tensor

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def average_buffers(self, model: nn.Module) -> None:
        """Makes batch-norm statistics identical on all ranks (each rank tracked its own shard's)."""

    def barrier(self) -> None:
        pass

    def shutdown(self) -> None:
        """Leaves at once: the path for errors, where a peer may never arrive."""

    def finish(self) -> None:
        """Leaves together: gloo aborts a rank that tears down while a peer is still finishing its work,
        or whose DDP reducer outlives the process group (hence the collection first)."""
        gc.collect()
        self.barrier()
        self.shutdown()

    def agree(self, fn: Callable[[], T]) -> T:
        """Runs `fn` on every rank; if it raises a BatchscaleError on any rank, all ranks stop instead of
        waiting forever in the next collective, with that error's exit code, and only the lowest failing
        rank says why."""
        error: BatchscaleError | None = None
        result: Any = None
        try:
            result = fn()
        except BatchscaleError as err:
            error = err
        codes = torch.zeros(self.world_size, device=self.device)
        codes[self.rank] = float(error.exit_code) if error is not None else 0.0
        codes = self.all_reduce_sum(codes)
        failed_ranks = codes.nonzero().flatten().tolist()
        if not failed_ranks:
            return result
        first = int(failed_ranks[0])
        if error is not None and first == self.rank:
            error.agreed = True
            raise error
        raise BatchscaleError(f"rank {first} stopped the job; see its message", quiet=True,
                              exit_code=int(codes[first].item()))


class TorchBackend(Backend):
    """torch.distributed: NCCL on GPUs, gloo on CPUs; gradients averaged by DDP with our comm hook."""

    name = "torch"

    def __init__(self, config: Config) -> None:
        self.config = config
        missing = [v for v in TORCHRUN_VARS if v not in os.environ]
        if missing:
            raise ConfigError(
                f"--backend torch needs a launcher that sets {', '.join(missing)}; start it with "
                "torchrun --nproc-per-node N train.py ..."
            )
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ["LOCAL_RANK"])
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self.device = pick_device(self.local_rank, config.no_cuda)
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

    def noise_probe(self, norms: GradNorms | None) -> bool:
        hook = getattr(self, "hook", None)
        if hook is None:
            return False
        hook.norms = norms
        return True

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


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside torch.compile's and DDP's wrappers: what checkpoints hold."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def float_buffers(model: nn.Module) -> Iterator[Tensor]:
    return (b for b in unwrap(model).buffers() if b.is_floating_point())


def launcher_rank() -> int:
    """This process's rank as the launcher set it, before any backend exists (0 when not launched)."""
    for var in ("RANK", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def launched_by() -> str:
    if any(v in os.environ for v in HOROVOD_VARS):
        return "horovod"
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return "torch"
    return "single"


def init_backend(config: Config) -> Backend:
    choice = launched_by() if config.backend == "auto" else config.backend
    if choice == "horovod":
        from .horovod_backend import HorovodBackend

        return HorovodBackend(config)
    if choice == "torch":
        return TorchBackend(config)
    return Backend(config)
