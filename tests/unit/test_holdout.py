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


def held_out_history() -> list[dict]:
    # The held-out split peaks at epoch 2, where the test accuracy (0.50) is below the final one (0.56).
    accs = [(0.40, 0.42), (0.50, 0.55), (0.56, 0.51)]  # (test, held-out) per epoch
    return [{"epoch": e, "step": 10 * e, "val_acc": test, "val_loss": 1.0, "holdout_acc": held, "images": 320,
             "epoch_seconds": 1.0, "train_seconds": float(e), "wall_seconds": float(e)}
            for e, (test, held) in enumerate(accs, 1)]


def test_with_a_holdout_the_picked_epochs_test_acc_is_named_for_what_it_is():
    from batchscale.config import Config
    from batchscale.metrics import closing_line, summarize

    summary = summarize(Config(holdout=100, log_dir="run"), "single", 1, held_out_history(), 10)
    assert summary["test_acc_at_best_holdout_epoch"] == 0.50 and summary["best_holdout_acc"] == 0.55
    assert summary["best_epoch"] == 2
    line = closing_line(summary)
    assert "test acc 0.5600 (test acc at best held-out epoch 2: 0.5000)" in line and "best 0.5" not in line


def test_without_a_holdout_best_is_the_best_test_accuracy():
    from batchscale.config import Config
    from batchscale.metrics import closing_line, summarize

    history = held_out_history()
    for record in history:
        del record["holdout_acc"]
    summary = summarize(Config(log_dir="run"), "single", 1, history, 10)
    assert summary["test_acc_at_best_holdout_epoch"] is None and summary["best_val_acc"] == 0.56
    assert "held-out" not in closing_line(summary)
