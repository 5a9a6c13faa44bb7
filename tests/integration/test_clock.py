"""The run clock: every step's LR is the schedule's closed form at the images the clock has seen, one curve for
every batch; examples to target are the clock's images; and a checkpoint that stored no clock (format 2) resumes
mid-epoch to the very weights of the unbroken run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from launch import same_weights, train

from batchscale import checkpoint
from batchscale.config import Config
from batchscale.training.loop import Hook
from batchscale.training.loop import train as train_here


class Spy(Hook):
    """What each update saw: the clock before it and the LR the optimizer really stepped with."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int, float]] = []

    @contextlib.contextmanager
    def update(self, trainer, step: int) -> Iterator[None]:
        clock = trainer.state.clock
        before = (clock.step, clock.images)
        yield
        self.seen.append((step, *before, trainer.optimizer.param_groups[0]["lr"]))


def onecycle(images: int, peak: float, warmup: int, total: int) -> float:
    """A ramp from zero to `peak` over `warmup` images, then a straight line to zero at `total`."""
    return peak * images / warmup if images < warmup else peak * (1 - (images - warmup) / (total - warmup))


def test_every_steps_lr_is_the_closed_form_at_the_clocks_images_for_every_batch(tiny_cifar, tmp_path):
    """256 images: batch 32 takes an epoch in 8 steps, batch 64 in 4; half an epoch of warmup is whole steps of
    both. Without LR scaling, the two runs step at one LR wherever they have seen the same images."""
    curves, epochs = {}, 2
    for batch in (32, 64):
        spy = Spy()
        config = Config(train_dir=str(tiny_cifar), val_dir=str(tiny_cifar), log_dir=str(tmp_path / f"b{batch}"),
                        download=False, no_cuda=True, width=4, progress=False, train_subset=256, batch_size=batch,
                        epochs=epochs, lr_schedule="onecycle", lr_scaling="none", base_lr=0.2, warmup_epochs=0.5,
                        warmup_start_lr=0.0, eval_growth=1.3, target_accuracy=0.99)
        summary = train_here(config, hooks=[spy])
        steps = epochs * 256 // batch
        assert [s for s, *_ in spy.seen] == list(range(steps))
        for step, clock_step, images, lr in spy.seen:
            assert clock_step == step and images == step * batch  # the clock counts each step's images
            assert lr == pytest.approx(onecycle(images, 0.2, 128, epochs * 256), rel=1e-12, abs=1e-15)
        curves[batch] = {images: lr for _, _, images, lr in spy.seen}
        evals = summary["trial"]["evals"]
        assert len(evals) > epochs and all(e["examples"] == e["step"] * batch for e in evals)
        assert summary["epochs_completed"] == epochs and summary["steps_completed"] == steps
    shared = curves[32].keys() & curves[64].keys()
    assert len(shared) == len(curves[64]) and all(curves[32][i] == pytest.approx(curves[64][i], rel=1e-12)
                                                  for i in shared)


def test_a_checkpoint_without_a_clock_resumes_inside_its_epoch_to_the_unbroken_runs_weights(tiny_cifar, tmp_path):
    """A step checkpoint of format 2 (step and epoch step only, as batchscale wrote before the clock) rebuilds the
    clock from its step and batch; the resumed run ends on the weights of the run never stopped."""
    whole = tmp_path / "whole"
    unbroken = train(tiny_cifar, whole, "--lr-schedule", "onecycle", "--checkpoint-every-steps", "3")
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]
    cut = tmp_path / "cut"
    killed = train(tiny_cifar, cut, "--lr-schedule", "onecycle", "--checkpoint-every-steps", "3",
                   env={"BATCHSCALE_FAULT": "step:15"})
    partial = cut / "checkpoint-2.pth.tar.partial"
    assert killed.returncode != 0 and partial.exists()
    state = checkpoint.load(partial)
    assert (state["step"], state["images"], state["epoch_step"], state["epoch_images"]) == (13, 416, 3, 96)
    for key in ("images", "epoch_images", "whole_epochs"):
        del state[key]
    torch.save({**state, "format_version": 2}, partial)
    again = train(tiny_cifar, cut, "--lr-schedule", "onecycle", "--checkpoint-every-steps", "3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "after step 13 (step 3 of epoch 2)" in again.stdout, again.stdout
    assert same_weights(whole / "checkpoint-2.pth.tar", cut / "checkpoint-2.pth.tar")
    assert checkpoint.load(cut / "checkpoint-2.pth.tar")["images"] == 640
