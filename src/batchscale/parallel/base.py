"""The backend interface: everything the training loop needs from its workers, behind one small class.

`Backend` itself is one process with no communication; `torchdist.TorchBackend` and
`horovod_backend.HorovodBackend` override what communicates. The loop calls only these methods
and never asks which one runs.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..errors import BatchscaleError, ConfigError
from ..noise import GradNorms

T = TypeVar("T")
# A teardown (a barrier, destroy_process_group, hvd.shutdown) after the outputs are written: a rank stuck in it must
# not hold the job, so past this many seconds the process leaves without it.
TEARDOWN_SECONDS = 60.0


def bounded(work: Callable[[], None], seconds: float, exit_code: int, quiet: bool = False) -> None:
    """Runs `work`; if it has not returned after `seconds`, ends the process with `exit_code` (the code the run had
    earned before teardown), saying so in one line unless `quiet`."""
    done = threading.Event()

    def watchdog() -> None:
        if done.wait(seconds):
            return
        if not quiet:
            sys.stderr.write(f"batchscale: the workers' teardown did not end within {seconds:g} s; leaving without it "
                             f"(every output was written before it; exit code {exit_code})\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)

    threading.Thread(target=watchdog, name="teardown-watchdog", daemon=True).start()
    try:
        work()
    finally:
        done.set()


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


class ReplicaState:
    """How a model's and an optimizer's state are read and restored: one whole replica in this process, inside any
    wrapper (torch.compile, DDP). A sharded backend (FSDP, ZeRO) overrides these four to gather and scatter; the
    checkpoint schema (state.TrainState) does not change."""

    def model_state_dict(self, model: nn.Module) -> dict[str, Any]:
        return unwrap(model).state_dict()

    def load_model_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        unwrap(model).load_state_dict(state)

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)
        match_layouts(optimizer)


@dataclass(frozen=True)
class Communication:
    """The part of the configuration a backend reads: where it runs and how it combines the gradients."""

    no_cuda: bool = False
    collective_timeout: float = 600.0
    use_adasum: bool = False
    fp16_allreduce: bool = False
    bf16_allreduce: bool = False
    gradient_predivide_factor: float = 1.0
    batches_per_allreduce: int = 1
    compile: bool = False

    @classmethod
    def of(cls, config: object) -> "Communication":
        """From a config.Config, or any object with these fields (this package does not import config.py)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


class Backend(ReplicaState):
    """One process, no communication. The base of the others, which override the `_join` and `_connect` steps of
    `__init__` and what communicates; the loop calls only the public methods and never asks which backend runs."""

    name = "single"

    def __init__(self, config: object) -> None:
        """`config`: a Communication, or what `Communication.of` reads one from (a config.Config)."""
        self.config = config if isinstance(config, Communication) else Communication.of(config)
        self.rank, self.world_size, self.local_rank, self.local_world_size = self._join()
        self.device = pick_device(self.local_rank, self.config.no_cuda)
        self._connect()

    def _join(self) -> tuple[int, int, int, int]:
        """(rank, world size, local rank, local world size), read from the launcher; before the device is chosen."""
        return 0, 1, 0, 1

    def _connect(self) -> None:
        """Joins the workers' communicator, once the device is chosen."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout of weights and batches. channels_last feeds tensor cores without layout transposes; on CPUs
        it rarely helps."""
        return torch.channels_last if self.device.type == "cuda" else torch.contiguous_format

    def averaged_batches(self) -> int:
        """How many batches of --batch-size one update averages: what the LR rule (schedule.py) scales with.

        A fact of the reduction, not a policy: Adasum combines workers without averaging them.
        """
        if self.config.use_adasum:
            return 1
        return self.world_size * self.config.batches_per_allreduce

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Returns the model to call and the optimizer to step; together they combine all workers' gradients. The
        trainer calls it once, on a fresh model and optimizer, and restores a checkpoint into what it returns (through
        the `*_state_dict` methods), so these are the only handles on the network."""
        return model, optimizer

    def accumulating(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Context for a backward pass whose gradients must not be communicated yet."""
        return contextlib.nullcontext()

    @property
    def can_probe(self) -> bool:
        """Whether `probe` can see each worker's own gradient before the allreduce (for the noise scale)."""
        return False

    def probe(self, norms: GradNorms | None) -> None:
        """During the following backward passes, add this worker's squared gradient norm, taken before the
        allreduce, to `norms.small_sq`; None stops it."""

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


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside torch.compile's and DDP's wrappers: what checkpoints hold."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Momentum saved from contiguous weights (a CPU run) comes back contiguous; channels_last weights on a GPU
    need it channels_last too, or the fused SGD kernel refuses the mismatched layouts."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p).copy_(value)


def float_buffers(model: nn.Module) -> Iterator[Tensor]:
    return (b for b in unwrap(model).buffers() if b.is_floating_point())
