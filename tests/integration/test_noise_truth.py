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


def exact_b_simple(folder: Path, weights: dict[str, torch.Tensor]) -> float:
    """tr(Sigma) / |G|^2 over the whole population: every training image, unflipped and flipped, one per-example
    gradient each (train mode, as the step computes it); Sigma is the population covariance (what draws with
    replacement sample), G the population mean."""
    model = CifarResNet18(width=WIDTH)
    model.load_state_dict(weights)
    model.train()
    x, y = data.load_split(folder, True)
    batches = data.TrainBatches(x, y, 1, 1, data.Shard(0, 1), 0, torch.device("cpu"), translate=0)
    n = x.shape[0]
    params = list(model.parameters())
    total, squares = None, torch.zeros((), dtype=torch.float64)
    for flip in (False, True):
        inputs, labels = batches.gather(torch.arange(n), torch.zeros(n, dtype=torch.long),
                                        torch.zeros(n, dtype=torch.long), torch.full((n,), flip))
        for i in range(n):
            grads = torch.autograd.grad(F.cross_entropy(model(inputs[i:i + 1]), labels[i:i + 1]), params)
            g = torch.cat([t.reshape(-1) for t in grads]).double()
            total = g if total is None else total + g
            squares += g.square().sum()
    mean = total / (2 * n)  # type: ignore[operator]
    trace = squares / (2 * n) - mean.square().sum()
    return float(trace / mean.square().sum())


def run(images: Path, log_dir: Path, seed: int, lr: str, epochs: int, *extra: str) -> dict:
    result = train(images, log_dir, "--batches-per-allreduce", str(ACCUMULATED), "--noise-every", "1",
                   "--translate", "0", "--lr-scaling", "none", "--base-lr", lr, "--warmup-epochs", "0",
                   "--lr-schedule", "constant", "--seed", str(seed), *extra, batch=1, epochs=epochs)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((log_dir / "summary.json").read_text())


@pytest.mark.parametrize("seed", [1, 2])
def test_the_probe_and_the_current_value_match_the_truth_at_the_final_weights_of_a_run_that_moved(images,
                                                                                                  tmp_path, seed):
    """LR 0.05 for 6 epochs: B_simple moves as the weights do. The probe (2,048 gradients at the final weights,
    no step between them) is within 25% of the truth there; the current value (the last quarter of the run's
    pairs, about 290 gradients) within x1.5."""
    summary = run(images, tmp_path, seed, "0.05", 6, "--noise-probe", "2048")
    truth = exact_b_simple(images, checkpoint.load(tmp_path / "checkpoint-6.pth.tar")["model"])
    probe = summary["noise_probe"]
    assert probe["gradients"] == 2048 and probe["micro_batch"] == 1 and probe["step"] == 72
    assert probe["b_simple"] == pytest.approx(truth, rel=0.25), (probe, truth)
    assert summary["noise_window"] == pytest.approx(0.25 * 72 * ACCUMULATED)  # a quarter of the run's images
    assert truth / 1.5 <= summary["noise_scale"] <= truth * 1.5, (summary["noise_scale"], truth)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_run_average_matches_the_truth_where_the_weights_stay_put(images, tmp_path, seed):
    """LR 1e-7: the weights stay where they started, B_simple has one true value for the whole run, and what is
    tested is the estimator as the trainer feeds it (every micro-batch of every step, 36 pairs)."""
    summary = run(images, tmp_path, seed, "1e-7", 3)
    truth = exact_b_simple(images, checkpoint.load(tmp_path / "checkpoint-3.pth.tar")["model"])
    assert summary["noise_pairs"] == 36
    assert truth / 1.5 <= summary["noise_scale_run"] <= truth * 1.5, (summary["noise_scale_run"], truth)
