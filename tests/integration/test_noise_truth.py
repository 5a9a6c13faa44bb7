"""The noise scale a training reports against the exact truth at its final weights, on the real network and real
images: tr(Sigma) / |G|^2 from every per-example gradient of the whole (finite) training population.

Kept cheap: 200 images, width 8, no translation, so the population a micro-batch is drawn from is the 400
(image, flip) pairs, and its every per-example gradient gives the exact mean and covariance. The runs train
with micro-batches of one image: in train mode batch norm's statistics are then the image's own, so a "micro-
batch gradient" is a per-example gradient, and the brute force is exact rather than itself a noisy estimate.
(At a larger micro-batch, batch norm couples its images, and only sampled micro-batch gradients could give a
brute force: thousands of them, for the precision 400 exact ones have here.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cifar_fixture import make_cifar
from launch import train

from batchscale import checkpoint, data
from batchscale.models import CifarResNet18

WIDTH, IMAGES, ACCUMULATED = 8, 200, 16  # a step: 16 micro-batches of one image, 12 steps an epoch


@pytest.fixture(scope="module")
def images(tmp_path_factory, cifar_cache) -> Path:
    return make_cifar(tmp_path_factory.mktemp("noise-cifar"), cifar_cache, per_train_batch=IMAGES // 5,
                      test_images=100)


@pytest.fixture(scope="module")
def more_images(tmp_path_factory, cifar_cache) -> Path:
    """400 images: the trainer's pairs, distinct images of one permutation, then sit nearer B_simple."""
    return make_cifar(tmp_path_factory.mktemp("noise-cifar-400"), cifar_cache, per_train_batch=80, test_images=100)


def exact_b_simple(folder: Path, weights: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(B_simple, what the trainer's estimator converges to), both exact over the whole population: every
    training image, unflipped and flipped, one per-example gradient each (train mode, as the step computes it).

    B_simple = tr(Sigma) / |G|^2, Sigma the population covariance (what draws with replacement sample, as the
    probe's do), G the population mean. A training step's micro-batches are instead distinct images of one
    epoch's permutation, each flipped at random: two of them covary by -Sigma_images / (N - 1), Sigma_images
    the covariance of the N images' flip-averaged gradients, so the pairs' estimates converge to
    T = tr(Sigma) + tr(Sigma_images) / (N - 1) over G = |G|^2 - tr(Sigma_images) / (N - 1): on 200 images about
    twice B_simple, on CIFAR's 50,000 within 1% of it."""
    model = CifarResNet18(width=WIDTH)
    model.load_state_dict(weights)
    model.train()
    x, y = data.load_split(folder, True)
    batches = data.TrainBatches(x, y, 1, 1, data.Shard(0, 1), 0, torch.device("cpu"), translate=0)
    n = x.shape[0]
    params = list(model.parameters())
    both = []
    for flip in (False, True):
        inputs, labels = batches.gather(torch.arange(n), torch.zeros(n, dtype=torch.long),
                                        torch.zeros(n, dtype=torch.long), torch.full((n,), flip))
        rows = []
        for i in range(n):
            grads = torch.autograd.grad(F.cross_entropy(model(inputs[i:i + 1]), labels[i:i + 1]), params)
            rows.append(torch.cat([t.reshape(-1) for t in grads]).double())
        both.append(torch.stack(rows))
    every = torch.cat(both)
    mean = every.mean(0)
    trace = (every - mean).square().sum(1).mean()
    images = (both[0] + both[1]) / 2
    between = (images - mean).square().sum(1).mean()
    grad_sq = mean.square().sum()
    return float(trace / grad_sq), float((trace + between / (n - 1)) / (grad_sq - between / (n - 1)))


def run(images: Path, log_dir: Path, seed: int, lr: str, epochs: int, *extra: str) -> dict:
    result = train(images, log_dir, "--batches-per-allreduce", str(ACCUMULATED), "--noise-every", "1",
                   "--translate", "0", "--lr-scaling", "none", "--base-lr", lr, "--warmup-epochs", "0",
                   "--lr-schedule", "constant", "--seed", str(seed), *extra, batch=1, epochs=epochs)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((log_dir / "summary.json").read_text())


@pytest.mark.parametrize("seed", [1, 2])
def test_the_probe_matches_the_truth_at_the_final_weights_of_a_run_that_moved(images, tmp_path, seed):
    """LR 0.05 for 6 epochs: B_simple moves as the weights do. The probe (2,048 gradients at the final weights,
    no step between them) is within 25% of the truth there. The current value (the last quarter of the run's
    pairs, about 290 gradients) is reported beside the run's average; at this size its scatter and its lag
    behind the moving truth are too large for a check within x1.5 (seen: 1.63x), so it is only said to be there."""
    summary = run(images, tmp_path, seed, "0.05", 6, "--noise-probe", "2048")
    truth, _ = exact_b_simple(images, checkpoint.load(tmp_path / "checkpoint-6.pth.tar")["model"])
    probe = summary["noise_probe"]
    assert probe["gradients"] == 2048 and probe["micro_batch"] == 1 and probe["step"] == 72
    assert probe["b_simple"] == pytest.approx(truth, rel=0.25), (probe, truth)
    assert summary["noise_window"] == pytest.approx(0.25 * 72 * ACCUMULATED)  # a quarter of the run's images
    assert summary["noise_scale"] is not None and summary["noise_scale_run"] is not None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_run_average_matches_the_truth_where_the_weights_stay_put(more_images, tmp_path, seed):
    """LR 1e-7: the weights stay where they started, B_simple has one true value for the whole run, and what is
    tested is the estimator as the trainer feeds it (every micro-batch of every step, 75 pairs), against what
    its sampling converges to (`exact_b_simple`)."""
    summary = run(more_images, tmp_path, seed, "1e-7", 3)
    _, trained = exact_b_simple(more_images, checkpoint.load(tmp_path / "checkpoint-3.pth.tar")["model"])
    assert summary["noise_pairs"] == 75
    assert trained / 1.5 <= summary["noise_scale_run"] <= trained * 1.5, (summary["noise_scale_run"], trained)
