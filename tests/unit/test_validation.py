"""Validation is exact: every test image once, summed and divided by the test-set size, for any world size."""

import pytest
import torch
import torch.nn.functional as F
from workers import run_workers

from batchscale import data
from batchscale.config import Config
from batchscale.parallel.base import Backend
from batchscale.parallel.torchdist import TorchBackend
from batchscale.training.step import evaluate


def model() -> torch.nn.Module:
    # A linear model on pixels: its predictions vary image by image, so a dropped or doubled image shows.
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10))


def evaluate_on(backend: Backend, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> tuple[float, float]:
    batches = data.EvalBatches(images, labels, batch_size, data.Shard(backend.rank, backend.world_size), backend.device)
    return evaluate(model(), batches, backend)


def ranked(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> tuple[float, float]:
    backend = TorchBackend(Config(no_cuda=True))
    try:
        result = evaluate_on(backend, images, labels, batch_size)
        backend.finish()
        return result
    finally:
        backend.shutdown()


@pytest.fixture(scope="module")
def test_set(real_test_images):
    pixels, labels = real_test_images
    return torch.from_numpy(pixels).view(-1, 3, 32, 32), torch.from_numpy(labels).long()


@pytest.fixture(scope="module")
def reference(test_set):
    images, labels = test_set
    net = model().eval()
    with torch.no_grad():
        x = (images.float() - torch.tensor(data.MEAN).view(1, 3, 1, 1) * 255) / (torch.tensor(data.STD).view(1, 3, 1, 1) * 255)
        out = net(x)
    return F.cross_entropy(out, labels.long(), reduction="sum").item() / 10_000, (out.argmax(1) == labels).sum().item() / 10_000


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ten_thousand_images_once_for_world_sizes_1_2_3(world, test_set, reference):
    images, labels = test_set
    # 384 does not divide 10,000 / world: the last batch of each shard is short, never padded.
    if world == 1:
        results = [evaluate_on(Backend(Config(no_cuda=True)), images, labels, 384)]
    else:
        results = run_workers(ranked, world, images, labels, 384)
    for loss, acc in results:
        assert loss == pytest.approx(reference[0], rel=1e-5)
        assert acc == pytest.approx(reference[1], abs=1e-9)
        assert (acc * 10_000) == pytest.approx(round(acc * 10_000), abs=1e-6)  # a count over exactly 10,000
