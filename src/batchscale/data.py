"""CIFAR-10 from disk to device, and the per-epoch batches that every rank draws from it.

The whole set lives on the training device as uint8; each batch's random crop and flip
is one gather over the padded images, so the GPU never waits on a data loader.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .config import global_batch
from .errors import ConfigError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
NUM_CLASSES = 10
# Per-channel mean and std of the 50,000 training images, in [0, 1] units.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
PAD = 4


class DataError(ConfigError):
    """The data on disk is missing, unreadable or not CIFAR-10."""


class _Refused(pickle.UnpicklingError):
    pass


class _BatchUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch holds (dicts, lists, strings, numpy uint8 arrays)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"it asks for {module}.{name}, which a CIFAR-10 batch never holds")


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    hint = f"replace it with the python-version CIFAR-10 batch (or delete {path.parent} to download afresh)"
    try:
        with open(path, "rb") as f:
            raw = _BatchUnpickler(f, encoding="bytes").load()
    except _Refused as err:
        raise DataError(f"refusing to load {path}: {err}; {hint}") from None
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror or err}); check that it is a readable file, or {hint}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as err:
        raise DataError(f"{path} is truncated or corrupt ({type(err).__name__}: {err}); {hint}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (no dict inside); {hint}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {shape}; {hint}")
    if not isinstance(labels, list) or len(labels) != data.shape[0]:
        raise DataError(f"{path}: 'labels' must be a list of {data.shape[0]} class numbers; {hint}")
    try:
        label_array = np.asarray(labels)
    except ValueError:  # a ragged list of lists
        label_array = np.asarray([], dtype=object)
    if label_array.ndim != 1 or label_array.dtype.kind not in "iu" or (len(labels) and (label_array.min() < 0 or label_array.max() >= NUM_CLASSES)):
        raise DataError(f"{path}: labels must be a flat list of integers 0-{NUM_CLASSES - 1}; {hint}")
    return data, label_array.astype(np.int64)


def has_split(root: str | Path, train: bool) -> bool:
    folder = Path(root) / FOLDER
    return all((folder / name).exists() for name in (TRAIN_FILES if train else TEST_FILES))


def load_split(root: str | Path, train: bool) -> tuple[Tensor, Tensor]:
    """Returns (images uint8 [N, 3, 32, 32], labels int64 [N]) on the CPU."""
    folder = Path(root) / FOLDER
    parts = [_load_batch(folder / name) for name in (TRAIN_FILES if train else TEST_FILES)]
    data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(data), torch.from_numpy(labels)


def missing_message(root: str | Path, train: bool, reason: str) -> str:
    flag = "--train-dir" if train else "--val-dir"
    names = "data_batch_1..5" if train else "test_batch"
    return (
        f"CIFAR-10 {'training' if train else 'test'} batches not found in {Path(root) / FOLDER} ({names}) "
        f"and {reason}; put the python-version batches there or point {flag} at the folder that holds {FOLDER}/"
    )


def download(root: str | Path) -> None:
    """Fetches and md5-checks the official archive, then moves it into place atomically."""
    from torchvision.datasets.utils import download_and_extract_archive

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        download_and_extract_archive(ARCHIVE_URL, download_root=tmp, md5=ARCHIVE_MD5)
        target = root / FOLDER
        if not (has_split(root, True) and has_split(root, False)):
            # Another machine sharing this folder may have finished first; its copy is as good.
            if target.exists():
                shutil.rmtree(target)
            os.replace(Path(tmp) / FOLDER, target)


HOLDOUT_SEED = 20190808  # fixed, not --seed: every trial of a study validates on the same images


def split_holdout(images: Tensor, labels: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train images, train labels, held-out images, held-out labels): `n` training images chosen by a fixed
    seed are set aside, and the rest keep their order. The two parts share no image index."""
    if n == 0:
        return images, labels, images[:0], labels[:0]
    held = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(HOLDOUT_SEED))[:n]
    keep = torch.ones(images.shape[0], dtype=torch.bool)
    keep[held] = False
    held = held.sort().values
    return images[keep], labels[keep], images[held], labels[held]


@dataclass(frozen=True)
class Shard:
    rank: int
    world_size: int


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


class TrainBatches:
    """Per-epoch shuffled, augmented training batches for one rank, drawn on the device.

    With `simulate` the single process takes every rank's batches (rank-major within each
    micro-batch slot), as many micro-batches as the simulated workers have together.
    One permutation and one set of crop offsets and flips per epoch are drawn from the
    seed alone, identically on every rank, so a run on 2 ranks x batch b sees exactly
    the images (and augmentations) of a run on 1 rank x batch 2b.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        micro_batches: int,
        shard: Shard,
        seed: int,
        device: torch.device,
        augment: bool = True,
        memory_format: torch.memory_format = torch.contiguous_format,
        simulate: bool = False,
    ) -> None:
        self.n = images.shape[0]
        self.memory_format = memory_format
        self.simulate = simulate
        self.batch_size, self.micro_batches, self.shard, self.seed = batch_size, micro_batches, shard, seed
        self.augment = augment
        self.global_batch = global_batch(batch_size, micro_batches, shard.world_size)
        if self.n < self.global_batch:
            raise ConfigError(
                f"the global batch ({self.global_batch} = batch size x batches-per-allreduce x world size) is larger "
                f"than the {self.n} training images; lower --batch-size"
            )
        self.padded = torch.nn.functional.pad(images, (PAD,) * 4).to(device)
        self.labels = labels.to(device)
        self.device = device
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
        self.arange = torch.arange(32, device=device)

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def epoch_plan(self, epoch: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """This rank's (indices, dx, dy, flip), each shaped [steps, micro_batches, batch_size]."""
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        perm = torch.randperm(self.n, generator=gen)
        if self.augment:
            dx = torch.randint(0, 2 * PAD + 1, (self.n,), generator=gen)
            dy = torch.randint(0, 2 * PAD + 1, (self.n,), generator=gen)
            flip = torch.randint(0, 2, (self.n,), generator=gen, dtype=torch.bool)
        else:
            dx = dy = torch.full((self.n,), PAD)
            flip = torch.zeros(self.n, dtype=torch.bool)
        used = self.steps_per_epoch * self.global_batch
        shape = (self.steps_per_epoch, self.micro_batches, self.shard.world_size, self.batch_size)

        def mine(t: Tensor) -> Tensor:
            if self.simulate:
                t = t[:used].view(shape).reshape(shape[0], -1, self.batch_size)
            else:
                t = t[:used].view(shape)[:, :, self.shard.rank]
            if self.device.type == "cuda":  # pinned, so the copy runs beside the GPU's work instead of blocking
                return t.contiguous().pin_memory().to(self.device, non_blocking=True)
            return t.contiguous()

        return mine(perm), mine(dx), mine(dy), mine(flip)

    def gather(self, idx: Tensor, dx: Tensor, dy: Tensor, flip: Tensor) -> tuple[Tensor, Tensor]:
        """Crops, flips and normalizes one batch with a single gather: no per-image Python."""
        rows = dy[:, None] + self.arange
        cols = dx[:, None] + torch.where(flip[:, None], 31 - self.arange, self.arange)
        channels = torch.arange(3, device=self.device)[None, :, None, None]
        pixels = self.padded[idx[:, None, None, None], channels, rows[:, None, :, None], cols[:, None, None, :]]
        x = ((pixels.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        return x, self.labels[idx]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[list[tuple[Tensor, Tensor]]]:
        """Yields one list of micro-batches (images, labels) per optimizer step."""
        idx, dx, dy, flip = self.epoch_plan(epoch)
        for step in range(start_step, self.steps_per_epoch):
            yield [self.gather(idx[step, m], dx[step, m], dy[step, m], flip[step, m]) for m in range(idx.shape[1])]


class EvalBatches:
    """This rank's contiguous part of the test set: every image is evaluated exactly once across ranks."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shard: Shard,
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        self.memory_format = memory_format
        part = torch.tensor_split(torch.arange(images.shape[0]), shard.world_size)[shard.rank]
        self.images = images[part].to(device)
        self.labels = labels[part].to(device)
        self.total = images.shape[0]
        self.batch_size = batch_size
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        return -(-self.images.shape[0] // self.batch_size)

    def shapes(self) -> list[Tensor]:
        """One batch of each size evaluation meets (full ones, and the smaller last one), for compiling up front."""
        sizes = dict.fromkeys(min(self.batch_size, self.images.shape[0] - start)
                              for start in range(0, self.images.shape[0], self.batch_size))
        return [self.normalize(self.images[:size]) for size in sizes]

    def normalize(self, x: Tensor) -> Tensor:
        return ((x.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, self.images.shape[0], self.batch_size):
            yield self.normalize(self.images[start : start + self.batch_size]), self.labels[start : start + self.batch_size]
