"""What a run is built from, in one place: seeds, its workers, the data on the device and how it is split, the state
it trains and checkpoints."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import data, faults
from ..config import Config
from ..errors import ConfigError
from ..models import check_fits
from ..parallel import Backend, init_backend
from ..parallel.launch import launcher_rank, launcher_world_size
from ..rundir import check_writable
from ..state import TrainState
from ..target import QUICK_PART, TargetWatch
from ..trackers import check_reachable


def start(config: Config) -> tuple[Config, Backend]:
    """The run's configuration as its launch completes it, checked, and its backend: whatever would fail later (an
    output folder that cannot be written, a model too large for the device) fails here, before any data is read."""
    faults.point("setup", 0, launcher_rank())  # a rank held here (BATCHSCALE_FAULT=setup:0) is one a busy machine delays
    config = config.validate().for_run(launcher_world_size())
    check_writable(config.log_dir, "--log-dir")
    check_writable(Path(config.checkpoint_path(1)).parent, "--checkpoint-format")
    if launcher_rank() == 0:  # the rank that opens the trackers
        check_reachable(config.tracker)
    backend = init_backend(config)
    check_fits(config.model, config.width, backend.device)
    return config, backend


def seed_everything(config: Config) -> None:
    torch.manual_seed(config.seed)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def count_workers(config: Config, backend: Backend) -> int:
    """The workers whose arithmetic the run does: its real ranks times --simulate-workers."""
    if config.simulate_workers > 1 and backend.world_size > 1:
        raise ConfigError("--simulate-workers runs in one process; launch it with python, not torchrun or horovodrun")
    return backend.world_size * config.simulate_workers


def new_state(config: Config, backend: Backend, model: nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler | None, workers: int) -> TrainState:
    """Where training stands before any checkpoint is restored: nothing trained, its trial not begun."""
    state = TrainState(model, optimizer, scaler, config.to_dict(), workers, owner=backend)
    state.noise.window = config.noise_window or math.inf  # 0: the trainer sets a share of the run
    state.trial = TargetWatch(config.target_accuracy, config.eval_growth, config.stop_at_target, config.max_steps)
    return state


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def prepare_data(config: Config, backend: Backend) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Downloads on one process per machine (if allowed and needed), then every rank reads the batches."""
    def fetch() -> None:
        if backend.local_rank != 0:
            return
        for root, train in ((config.train_dir, True), (config.val_dir, False)):
            if data.has_split(root, train):
                continue
            if not config.download:
                raise data.DataError(data.missing_message(root, train, "--no-download was given"))
            if backend.is_main:
                print(f"downloading CIFAR-10 into {root} ...", flush=True)
            try:
                data.download(root)
            except Exception as err:  # network and archive errors come in many types
                raise data.DataError(data.missing_message(root, train, f"the download failed ({err})")) from None

    backend.agree(fetch)
    return backend.agree(lambda: (*data.load_split(config.train_dir, True), *data.load_split(config.val_dir, False)))


@dataclass
class Splits:
    """The batches a run draws: training, the test set, the held-out images (if any), and the quick part of the
    target split (the held-out images, else the test set) that quick looks during an epoch see."""

    train: data.TrainBatches
    test: data.EvalBatches
    holdout: data.EvalBatches | None
    quick: data.EvalBatches

    @property
    def target(self) -> data.EvalBatches:
        return self.holdout or self.test


def load_splits(config: Config, backend: Backend, workers: int) -> Splits:
    """`workers` shards of the training set (real ranks times --simulate-workers), each rank's evaluation shard."""
    train_x, train_y, val_x, val_y = prepare_data(config, backend)
    if config.holdout >= train_x.shape[0] // 2:
        raise ConfigError(f"--holdout {config.holdout} is half or more of the {train_x.shape[0]} training images; "
                          "hold out fewer")
    train_x, train_y, held_x, held_y = data.split_holdout(train_x, train_y, config.holdout)
    if config.train_subset:  # after the holdout, so a subset never changes which images are held out
        train_x, train_y = train_x[:config.train_subset], train_y[:config.train_subset]
    device, memory_format = backend.device, backend.memory_format
    simulated = config.simulate_workers
    batches = data.TrainBatches(
        train_x, train_y, config.batch_size, config.batches_per_allreduce, data.Shard(backend.rank, workers),
        config.seed, device, memory_format=memory_format, simulate=simulated > 1,
        translate=config.translate, translate_pad=config.translate_pad, cutout=config.cutout,
    )
    shard = data.Shard(backend.rank, backend.world_size)

    def evals(x: Tensor, y: Tensor) -> data.EvalBatches:
        return data.EvalBatches(x, y, config.val_batch_size, shard, device, memory_format)

    target_x, target_y = (held_x, held_y) if config.holdout else (val_x, val_y)
    part = target_x.shape[0] // QUICK_PART
    return Splits(batches, evals(val_x, val_y), evals(held_x, held_y) if config.holdout else None,
                  evals(target_x[:part], target_y[:part]))
