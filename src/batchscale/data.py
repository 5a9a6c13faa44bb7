"""CIFAR-10 from disk to device, and the per-epoch batches that every rank draws from it.

The whole set lives on the training device as uint8; at each epoch's start the rank's whole
epoch is cropped, flipped (and cut out) in a few large gathers, and each step takes a slice of
it, so the GPU never waits on a data loader and a step launches no augmentation kernels.
The augmentations are small pure tensor functions (`crop_flip`, `cutout`, `translate`, `flip`),
testable alone.
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
# Labels of the rows that pad an evaluation batch to its static size: cross_entropy's ignore_index, so they add
# nothing to the loss, never match a prediction, and are not counted.
PAD_LABEL = -100
# Images gathered at once when an epoch is augmented: bounds the gather's temporaries, not the kernel count.
CHUNK = 8192
PAD_MODES = ("zeros", "reflect")


def pad_images(images: Tensor, pad: int, mode: str = "zeros") -> Tensor:
    """Images padded by `pad` pixels on each side: zeros (the crop of He et al.) or mirrored edges
    (cifar10-zoo's translate). Reflection needs a float dtype in torch, so uint8 goes through float and back."""
    if mode == "zeros":
        return torch.nn.functional.pad(images, (pad,) * 4)
    return torch.nn.functional.pad(images.float(), (pad,) * 4, mode="reflect").to(images.dtype)


def crop_flip(padded: Tensor, idx: Tensor, dx: Tensor, dy: Tensor, flip: Tensor, size: int = 32) -> Tensor:
    """Image `idx[i]` of the padded set, its size x size window at column dx[i] and row dy[i], mirrored
    left-right where flip[i]: one gather, no per-image Python."""
    arange = torch.arange(size, device=padded.device)
    rows = dy[:, None] + arange
    cols = dx[:, None] + torch.where(flip[:, None], size - 1 - arange, arange)
    channels = torch.arange(padded.shape[1], device=padded.device)[None, :, None, None]
    return padded[idx[:, None, None, None], channels, rows[:, None, :, None], cols[:, None, None, :]]


def cutout(x: Tensor, cy: Tensor, cx: Tensor, size: int) -> Tensor:
    """x with the size x size square whose top-left corner is (cy[i], cx[i]) set to 0 in image i (after
    normalizing, 0 is the mean colour), as cifar10-zoo's batch_cutout; the corners keep the square inside."""
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    in_rows = (rows[None, :] >= cy[:, None]) & (rows[None, :] < cy[:, None] + size)
    in_cols = (cols[None, :] >= cx[:, None]) & (cols[None, :] < cx[:, None] + size)
    return x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0)


def flip(x: Tensor) -> Tensor:
    """Every image mirrored left-right."""
    return x.flip(-1)


def translate(x: Tensor, dy: int, dx: int, mode: str = "reflect") -> Tensor:
    """Every image moved by dy rows and dx columns (down and right when positive); the pixels it uncovers come
    from its mirrored edge (reflect) or are 0 (zeros). cifar10-zoo's test-time augmentation moves by one pixel."""
    pad = max(abs(dy), abs(dx))
    if pad == 0:
        return x
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="reflect" if mode == "reflect" else "constant")
    h, w = x.shape[-2:]
    return padded[..., pad - dy : pad - dy + h, pad - dx : pad - dx + w]


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
        translate: int = PAD,
        translate_pad: str = "zeros",
        cutout: int = 0,
    ) -> None:
        self.n = images.shape[0]
        self.translate, self.cutout = translate, cutout
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
        self.padded = pad_images(images, translate, translate_pad).to(device)
        self.labels = labels.to(device)
        self.device = device
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255

    @property
    def epoch_images(self) -> int:
        """The images a whole epoch takes at the current global batch (its last, smaller batch is dropped)."""
        return self.n // self.global_batch * self.global_batch

    def fits(self, taken: int) -> bool:
        """Whether another step of the current global batch fits in an epoch `taken` images into it."""
        return taken + self.global_batch <= self.n

    def epoch_plan(self, epoch: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """This rank's (indices, dx, dy, flip), each shaped [steps, micro_batches, batch_size]."""
        plan = self.draws(epoch)
        return plan["idx"], plan["dx"], plan["dy"], plan["flip"]

    def draws(self, epoch: int, start_image: int = 0) -> dict[str, Tensor]:
        """Every random choice of the epoch, drawn from the seed alone in a fixed order (the permutation, crop
        offsets, flips, then cutout corners if any), so every rank draws the same and takes its part; each
        shaped [steps, micro_batches, batch_size], the steps those that fit from image `start_image` of the
        permutation on."""
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        perm = torch.randperm(self.n, generator=gen)
        t = self.translate
        if self.augment:
            dx = torch.randint(0, 2 * t + 1, (self.n,), generator=gen)
            dy = torch.randint(0, 2 * t + 1, (self.n,), generator=gen)
            flips = torch.randint(0, 2, (self.n,), generator=gen, dtype=torch.bool)
        else:
            dx = dy = torch.full((self.n,), t)
            flips = torch.zeros(self.n, dtype=torch.bool)
        drawn = {"idx": perm, "dx": dx, "dy": dy, "flip": flips}
        if self.augment and self.cutout:
            drawn["cy"] = torch.randint(0, 32 - self.cutout + 1, (self.n,), generator=gen)
            drawn["cx"] = torch.randint(0, 32 - self.cutout + 1, (self.n,), generator=gen)
        return {k: self.mine(v[start_image:]) for k, v in drawn.items()}

    def mine(self, t: Tensor) -> Tensor:
        """This rank's part of an epoch-long draw (from where the epoch stands), [steps, micro_batches, batch_size],
        on the device: each step takes the next global batch of the permutation."""
        steps = t.shape[0] // self.global_batch
        shape = (steps, self.micro_batches, self.shard.world_size, self.batch_size)
        if self.simulate:
            t = t[: steps * self.global_batch].view(shape).reshape(shape[0], -1, self.batch_size)
        else:
            t = t[: steps * self.global_batch].view(shape)[:, :, self.shard.rank]
        if self.device.type == "cuda":  # pinned, so the copy runs beside the GPU's work instead of blocking
            return t.contiguous().pin_memory().to(self.device, non_blocking=True)
        return t.contiguous()

    def gather(self, idx: Tensor, dx: Tensor, dy: Tensor, flip: Tensor,
               cy: Tensor | None = None, cx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Crops, flips, normalizes (and cuts out) a set of images: no per-image Python."""
        x = (crop_flip(self.padded, idx, dx, dy, flip).float() - self.mean) / self.std
        if cy is not None and cx is not None:
            x = cutout(x, cy, cx, self.cutout)
        return x.contiguous(memory_format=self.memory_format), self.labels[idx]

    def epoch(self, epoch: int, start_image: int = 0) -> Iterator[list[tuple[Tensor, Tensor]]]:
        """Yields one list of micro-batches (images, labels) per optimizer step: slices of the epoch's images,
        augmented at once here (a resumed epoch from image `start_image` of its permutation on: the run clock's
        `epoch_images`). Each image is augmented as its own draws say whatever the batching, so the slices equal
        batch-by-batch augmentation exactly."""
        drawn = self.draws(epoch, start_image)
        steps, k, b = drawn["idx"].shape[0], drawn["idx"].shape[1], self.batch_size
        if steps <= 0:
            return
        plan = {key: v.flatten() for key, v in drawn.items()}
        n = plan["idx"].numel()
        x = torch.empty((n, 3, 32, 32), device=self.device).contiguous(memory_format=self.memory_format)
        y = self.labels[plan["idx"]]
        for i in range(0, n, CHUNK):  # written in place: the epoch's images once in memory, not twice
            x[i : i + CHUNK] = self.gather(*(plan[key][i : i + CHUNK] for key in plan))[0]
        for step in range(steps):
            yield [(x[(step * k + m) * b : (step * k + m + 1) * b], y[(step * k + m) * b : (step * k + m + 1) * b])
                   for m in range(k)]


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

    def static_shape(self) -> Tensor:
        """The one input shape `static()` gives, for compiling up front."""
        return self.normalize(self.images[:1].expand(self.batch_size, -1, -1, -1))

    def static(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches all of --val-batch-size, so evaluation runs one graph: the last is padded with blank images
        labelled PAD_LABEL, which eval-mode batch norm keeps apart and the sums leave out (counted exactly)."""
        n = self.images.shape[0]
        for start in range(0, n, self.batch_size):
            x, y = self.images[start : start + self.batch_size], self.labels[start : start + self.batch_size]
            short = self.batch_size - x.shape[0]
            if short:
                x = torch.cat([x, x.new_zeros((short, *x.shape[1:]))])
                y = torch.cat([y, y.new_full((short,), PAD_LABEL)])
            yield self.normalize(x), y
