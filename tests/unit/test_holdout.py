"""The held-out split: fixed, the same for every seed, and never trained on."""

from __future__ import annotations

import torch

from batchscale import data


def test_the_held_out_images_never_meet_training():
    n = 1000
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    labels = torch.arange(n)  # each image's label is its index, so a batch names the images it holds
    train_x, train_y, held_x, held_y = data.split_holdout(images, labels, 100)
    assert len(held_y) == 100 and len(train_y) == 900 and not set(held_y.tolist()) & set(train_y.tolist())
    seen = set()
    for seed in (0, 1, 2):
        batches = data.TrainBatches(train_x, train_y, 30, 2, data.Shard(0, 1), seed, torch.device("cpu"))
        for epoch in (1, 2):
            for micro in batches.epoch(epoch):
                for _, y in micro:
                    seen.update(y.tolist())
    assert seen and not seen & set(held_y.tolist())


def test_the_split_is_fixed_whatever_the_seed():
    labels = torch.arange(5000)
    torch.manual_seed(1)
    first = data.split_holdout(torch.zeros(5000, 1), labels, 500)[3]
    torch.manual_seed(2)
    second = data.split_holdout(torch.zeros(5000, 1), labels, 500)[3]
    assert torch.equal(first, second)
    # Spread over the set, not its first images (which would share the first training batch file).
    assert first.max() > 4000 and first.min() < 1000
