import os
import pickle

import numpy as np
import pytest
import torch
from cifar_fixture import write_batch

from batchscale import data
from batchscale.errors import ConfigError


def synthetic(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8), torch.arange(n) % 10


def loader(n: int, batch: int, micro: int, rank: int, world: int, augment: bool = True) -> data.TrainBatches:
    images, labels = synthetic(n)
    return data.TrainBatches(images, labels, batch, micro, data.Shard(rank, world), 7, torch.device("cpu"), augment)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("micro", [1, 2])
def test_epoch_covers_every_index_once_across_ranks(world, micro):
    n, batch = 1000, 16
    plans = [loader(n, batch, micro, r, world).epoch_plan(epoch=3)[0] for r in range(world)]
    seen = torch.cat([p.flatten() for p in plans])
    steps = n // (batch * micro * world)
    assert seen.numel() == steps * batch * micro * world  # only the last incomplete global batch is dropped
    assert seen.unique().numel() == seen.numel()  # no image twice
    assert n - seen.numel() < batch * micro * world


def test_permutation_same_on_all_ranks_and_new_each_epoch():
    a0, a1 = (loader(1000, 10, 1, r, 2).epoch_plan(1)[0] for r in (0, 1))
    b0 = loader(1000, 10, 1, 0, 2).epoch_plan(2)[0]
    # Each rank draws the same global permutation: rank 0 and 1 slices are disjoint and interleave by step.
    assert set(a0.flatten().tolist()).isdisjoint(a1.flatten().tolist())
    assert not torch.equal(a0, b0)
    assert torch.equal(a0, loader(1000, 10, 1, 0, 2).epoch_plan(1)[0])  # seeded: reproducible


def test_two_ranks_see_what_one_rank_sees_with_double_batch():
    one = loader(1000, 20, 1, 0, 1)
    two = [loader(1000, 10, 1, r, 2) for r in (0, 1)]
    (x1, y1), = next(one.epoch(5))
    parts = [next(t.epoch(5))[0] for t in two]
    assert torch.equal(torch.cat([p[0] for p in parts]), x1)
    assert torch.equal(torch.cat([p[1] for p in parts]), y1)


def test_augmentation_draws_differ_per_sample_and_keep_labels():
    images, labels = synthetic(512)
    batches = data.TrainBatches(images, labels, 512, 1, data.Shard(0, 1), 1, torch.device("cpu"))
    idx, dx, dy, flip = batches.epoch_plan(1)
    # Per-sample draws: many distinct offsets and both flip states within one batch.
    assert dx[0, 0].unique().numel() == 9 and dy[0, 0].unique().numel() == 9
    assert 0.35 < flip[0, 0].float().mean() < 0.65
    x, y = batches.gather(idx[0, 0], dx[0, 0], dy[0, 0], flip[0, 0])
    assert torch.equal(y, labels[idx[0, 0]])
    assert x.shape == (512, 3, 32, 32) and x.dtype == torch.float32
    # Each output is exactly its source image shifted by (dy - 4, dx - 4), mirrored if drawn so, zero-padded.
    mean = torch.tensor(data.MEAN).view(3, 1, 1) * 255
    std = torch.tensor(data.STD).view(3, 1, 1) * 255
    for j in range(0, 512, 37):
        src = torch.nn.functional.pad(images[idx[0, 0, j]], (4, 4, 4, 4)).float()
        crop = src[:, dy[0, 0, j] : dy[0, 0, j] + 32, dx[0, 0, j] : dx[0, 0, j] + 32]
        if flip[0, 0, j]:
            crop = crop.flip(-1)
        assert torch.allclose(x[j], (crop - mean) / std)


def test_without_augmentation_images_are_centred_and_normalized():
    images, labels = synthetic(64)
    batches = data.TrainBatches(images, labels, 64, 1, data.Shard(0, 1), 1, torch.device("cpu"), augment=False)
    (x, y), = next(batches.epoch(1))
    idx = batches.epoch_plan(1)[0][0, 0]
    mean = torch.tensor(data.MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(data.STD).view(1, 3, 1, 1) * 255
    assert torch.allclose(x, (images[idx].float() - mean) / std)


def test_global_batch_larger_than_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="lower --batch-size"):
        loader(100, 64, 1, 0, 2)


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_eval_shards_cover_the_test_set_exactly_once(world):
    images, labels = synthetic(10_000)
    shards = [data.EvalBatches(images, labels, 256, data.Shard(r, world), torch.device("cpu")) for r in range(world)]
    counts = [sum(y.shape[0] for _, y in s) for s in shards]
    assert sum(counts) == 10_000 and max(counts) - min(counts) <= 1
    assert torch.equal(torch.cat([s.labels for s in shards]), labels)


def test_load_split_reads_the_official_layout(tiny_cifar):
    x, y = data.load_split(tiny_cifar, train=True)
    assert x.shape == (320, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (320,)
    tx, ty = data.load_split(tiny_cifar, train=False)
    assert tx.shape == (200, 3, 32, 32) and int(ty.max()) <= 9


def test_real_test_batch_has_ten_thousand_balanced_images(cifar_cache, real_test_images):
    pixels, labels = real_test_images
    assert pixels.shape == (10_000, 3072)
    assert np.bincount(labels, minlength=10).tolist() == [1000] * 10


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_batch_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "data" / data.FOLDER
    folder.mkdir(parents=True)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Payload(str(marker)), b"labels": []}, f)
    with pytest.raises(data.DataError, match="refusing to load .*posix.system|refusing to load .*os.system"):
        data.load_split(tmp_path / "data", train=False)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "truncated or corrupt"),
        (None, "truncated or corrupt"),  # a real batch cut in half
        (pickle.dumps([1, 2, 3]), "no dict inside"),
        (pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}), "shape"),
        (pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}), "labels must be a flat list of integers 0-9"),
        (pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1]}), "list of 4"),
    ],
)


def test_bad_batches_are_reported_with_the_file(tmp_path, content, match):
    folder = tmp_path / data.FOLDER
    if content is None:
        write_batch(folder / "test_batch", np.zeros((10, 3072), np.uint8), np.zeros(10, int))
        raw = (folder / "test_batch").read_bytes()
        content = raw[: len(raw) // 2]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_batch").write_bytes(content)
    with pytest.raises(data.DataError, match=match) as err:
        data.load_split(tmp_path, train=False)
    assert "test_batch" in str(err.value)
