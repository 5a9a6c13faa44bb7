"""Tiny CIFAR-10 folders in the official pickle layout, cut from the real test batch when it is at hand."""

from __future__ import annotations

import pickle
import subprocess
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "cifar10"
_real: tuple[np.ndarray, np.ndarray] | None = None


def real_test_batch(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 real test images (unpacked once per session), or seeded random ones if shared/ is absent."""
    global _real
    if _real is None:
        if (SHARED / "unpack.sh").exists():
            subprocess.run([str(SHARED / "unpack.sh"), str(cache), "test_batch"], check=True, capture_output=True)
            with open(cache / "cifar-10-batches-py" / "test_batch", "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            _real = batch[b"data"], np.asarray(batch[b"labels"])
        else:
            rng = np.random.default_rng(0)
            _real = rng.integers(0, 256, (10_000, 3072), dtype=np.uint8), rng.integers(0, 10, 10_000)
    return _real


def write_batch(path: Path, data: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {b"batch_label": b"fixture", b"labels": [int(v) for v in labels], b"data": data, b"filenames": []}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def make_cifar(root: Path, cache: Path, per_train_batch: int, test_images: int) -> Path:
    """root/cifar-10-batches-py with 5 train batches of `per_train_batch` images and a test batch."""
    data, labels = real_test_batch(cache)
    folder = root / "cifar-10-batches-py"
    for i in range(5):
        part = slice(i * per_train_batch, (i + 1) * per_train_batch)
        write_batch(folder / f"data_batch_{i + 1}", data[part], labels[part])
    start = 5 * per_train_batch
    write_batch(folder / "test_batch", data[start : start + test_images], labels[start : start + test_images])
    return root
