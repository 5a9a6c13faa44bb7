"""The step with no host work trains exactly as a plain loop does; its augmentations are small pure functions,
each checked against a brute-force expectation; evaluation runs one static shape and still counts exactly."""

from __future__ import annotations

import gc
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchscale import data
from batchscale.training import loop
from batchscale.training import step as step_module
from batchscale.training.step import evaluate
from batchscale.checkpoint import load
from batchscale.cli import train_config
from batchscale.config import RECIPES, Config
from batchscale.models import CifarResNet18, tta_logits
from batchscale.parallel.base import Backend
from batchscale.study.sweep import shared_compile_cache

MEAN = torch.tensor(data.MEAN).view(3, 1, 1) * 255
STD = torch.tensor(data.STD).view(3, 1, 1) * 255


def brute_force_batch(images: torch.Tensor, labels: torch.Tensor, seed: int, epoch: int, step: int, batch: int,
                      cutout: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The documented augmentation, image by image: the epoch's draws from its seed (permutation, x and y
    offsets, flips, then cutout corners), a zero-padded 32x32 crop, a mirror, normalize, a zeroed square."""
    gen = torch.Generator().manual_seed(data.epoch_seed(seed, epoch))
    n = images.shape[0]
    perm = torch.randperm(n, generator=gen)
    dx, dy = torch.randint(0, 9, (n,), generator=gen), torch.randint(0, 9, (n,), generator=gen)
    flips = torch.randint(0, 2, (n,), generator=gen, dtype=torch.bool)
    cy = torch.randint(0, 32 - cutout + 1, (n,), generator=gen) if cutout else None
    cx = torch.randint(0, 32 - cutout + 1, (n,), generator=gen) if cutout else None
    xs = []
    for j in range(step * batch, (step + 1) * batch):
        padded = F.pad(images[perm[j]], (4, 4, 4, 4)).float()
        crop = padded[:, int(dy[j]) : int(dy[j]) + 32, int(dx[j]) : int(dx[j]) + 32]
        crop = (crop.flip(-1) if flips[j] else crop).sub(MEAN).div(STD)
        if cutout:
            crop = crop.clone()
            crop[:, int(cy[j]) : int(cy[j]) + cutout, int(cx[j]) : int(cx[j]) + cutout] = 0
        xs.append(crop)
    return torch.stack(xs), labels[perm[step * batch : (step + 1) * batch]]


def reference_run(tiny_cifar, config: Config) -> tuple[list[float], dict[str, torch.Tensor]]:
    """A plain loop: model(x), cross entropy, backward, torch's SGD, one step per batch of the epoch."""
    images, labels = data.load_split(tiny_cifar, train=True)
    torch.manual_seed(config.seed)
    model = CifarResNet18(width=config.width)
    opt = torch.optim.SGD(model.parameters(), lr=config.base_lr, momentum=config.momentum, nesterov=True,
                          weight_decay=config.wd)
    model.train()
    losses = []
    for step in range(images.shape[0] // config.batch_size):
        x, y = brute_force_batch(images, labels, config.seed, 1, step, config.batch_size, config.cutout)
        loss = F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, model.state_dict()


def tiny_config(tiny_cifar, tmp_path, **changes) -> Config:
    return Config(train_dir=str(tiny_cifar), val_dir=str(tiny_cifar), log_dir=str(tmp_path), width=2, batch_size=32,
                  epochs=1, lr_schedule="constant", warmup_epochs=0, label_smoothing=0.1, seed=3, no_cuda=True,
                  download=False, progress=False, noise_every=1000, **changes)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_the_loop_trains_as_a_plain_loop_does(tiny_cifar, tmp_path, monkeypatch, compiled):
    """Same losses and weights as the plain reference for a fixed seed (cutout on, label smoothing on): the
    whole-epoch augmentation, the one-callable forward and its metrics change nothing but where the work runs.
    Compiled runs Dynamo's graph of the step without inductor's kernels (aot_eager), so the tolerance is round-off."""
    config = tiny_config(tiny_cifar, tmp_path, cutout=8, compile=compiled)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="aot_eager"))
    loop.train(config)
    losses, weights = reference_run(tiny_cifar, config)
    saved = load(config.checkpoint_path(1))
    assert saved["history"][0]["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    trained = saved["model"]
    assert trained.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.allclose(trained[key].float(), value.float(), rtol=1e-4, atol=1e-6), key


def test_the_epochs_slices_are_the_batch_by_batch_augmentation(tiny_cifar):
    images, labels = data.load_split(tiny_cifar, train=True)
    batches = data.TrainBatches(images, labels, 32, 2, data.Shard(0, 1), 3, torch.device("cpu"), cutout=8)
    steps = list(batches.epoch(1))
    resumed = list(batches.epoch(1, start_image=3 * batches.global_batch))
    assert len(steps) == 5 and len(resumed) == 2
    for s, micro in enumerate(steps):
        for m, (x, y) in enumerate(micro):
            want_x, want_y = brute_force_batch(images, labels, 3, 1, 2 * s + m, 32, cutout=8)
            assert torch.allclose(x, want_x, atol=1e-6) and torch.equal(y, want_y)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed[0], steps[3]))


def test_cutout_zeroes_exactly_one_square_per_image():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 32, 32, generator=gen) + 1  # no zero anywhere before
    cy, cx = torch.tensor([0, 20, 5, 0, 11, 24]), torch.tensor([0, 3, 24, 24, 11, 0])
    out = data.cutout(x, cy, cx, 8)
    for i in range(6):
        want = x[i].clone()
        want[:, cy[i] : cy[i] + 8, cx[i] : cx[i] + 8] = 0
        assert torch.equal(out[i], want)
        assert int((out[i] == 0).sum()) == 3 * 8 * 8


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize("dy,dx", [(1, 1), (-1, -1), (2, -3), (0, 0)])
def test_translate_moves_every_pixel_exactly(mode, dy, dx):
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1

    def source(k: int, n: int) -> int | None:  # where output pixel k comes from; None: uncovered, zero
        if 0 <= k < n:
            return k
        if mode == "zeros":
            return None
        return -k if k < 0 else 2 * (n - 1) - k

    out = data.translate(x, dy, dx, mode)
    for i in range(8):
        for j in range(8):
            r, c = source(i - dy, 8), source(j - dx, 8)
            want = x[:, :, r, c] if r is not None and c is not None else torch.zeros(2, 3)
            assert torch.equal(out[:, :, i, j], want)


def test_reflect_padding_of_the_training_set_mirrors_the_edges():
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    padded = data.pad_images(images, 4, "reflect")
    assert padded.dtype == torch.uint8 and padded.shape == (3, 3, 40, 40)
    assert torch.equal(padded[:, :, 4:36, 4:36], images)
    assert torch.equal(padded[:, :, 4:36, 0], images[:, :, :, 4])  # column -4 mirrors column 4
    assert torch.equal(padded[:, :, 0, 4:36], images[:, :, 4, :])


def test_flip_tta_of_a_flip_invariant_model_equals_no_tta():
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))  # blind to mirroring
    x = torch.randn(5, 3, 32, 32)
    assert not torch.allclose(x.flip(-1), x)
    assert torch.allclose(tta_logits(model, x, "flip"), tta_logits(model, x, "none"), atol=1e-6)


def test_flip_translate_tta_weighs_the_six_views_as_the_published_recipe():
    """Built here by hand from mirrored-edge padding and slicing, as cifar10-zoo's infer_mirror_translate does."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))  # sees every pixel where it is
    x = torch.randn(4, 3, 32, 32)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, padded[:, :, 0:32, 0:32], padded[:, :, 2:34, 2:34]]

    def mirror(v: torch.Tensor) -> torch.Tensor:
        return (model(v) + model(v.flip(-1))) / 2

    want = mirror(views[0]) / 2 + (mirror(views[1]) + mirror(views[2])) / 4
    assert torch.allclose(tta_logits(model, x, "flip-translate"), want, atol=1e-5)
    assert not torch.allclose(want, model(x), atol=1e-3)


def test_evaluation_batches_have_one_shape_and_count_every_image_once():
    images = torch.randint(0, 256, (70, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(70) % 10
    evals = data.EvalBatches(images, labels, 32, data.Shard(0, 1), torch.device("cpu"))
    batches = list(evals.static())
    assert {tuple(x.shape) for x, _ in batches} == {(32, 3, 32, 32)} == {tuple(evals.static_shape().shape)}
    real = torch.cat([y for _, y in batches])
    assert torch.equal(real[real != data.PAD_LABEL], labels) and int((real == data.PAD_LABEL).sum()) == 26
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))
    loss, acc = evaluate(model, evals, Backend(Config(no_cuda=True)))
    with torch.no_grad():
        out = model(torch.cat([x for x, _ in evals]))  # the unpadded batches, every image once
    assert loss == pytest.approx(float(F.cross_entropy(out, labels)), rel=1e-5)
    assert acc == pytest.approx(float((out.argmax(1) == labels).float().mean()))


def test_cuda_graph_steps_are_marked_and_the_loop_freezes_the_collector(tiny_cifar, tmp_path, monkeypatch):
    """With --compile-mode reduce-overhead every optimizer step (not each micro-batch: their gradients must
    accumulate untouched) and every evaluation batch begins a CUDA-graph step, the warm-up's calls included; a
    skipped graph is warned about; the collector is frozen for training and unfrozen after. (torch.compile is
    stubbed: the CPU records no graphs.)"""
    marks, freezes = [], []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    monkeypatch.setattr(gc, "freeze", lambda: freezes.append(len(marks)))
    skips = iter([0, 1, 1])
    monkeypatch.setattr(step_module, "graphs_skipped", lambda: next(skips))
    config = tiny_config(tiny_cifar, tmp_path, compile=True, compile_mode="reduce-overhead", batches_per_allreduce=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = loop.train(config)
    # warm-up: 2 training calls and 2 of the one evaluation shape; 5 steps (of 2 micro-batches each); 200 test
    # images in one padded batch of 256.
    assert len(marks) == 4 + 5 + 1
    assert freezes == [4] and gc.get_freeze_count() == 0
    assert any("CUDA graphs skipped 1 of the compiled graphs" in str(w.message) for w in caught)
    assert summary["cuda_graphs_skipped"] == 1  # summary.json says so too


def test_recipe_fills_in_what_the_flags_left_out():
    config = train_config(["--recipe", "fast94", "--epochs", "3", "--no-cuda"])
    assert config.epochs == 3 and config.no_cuda  # given: the flag wins
    for key, value in RECIPES["fast94"].items():
        if key not in ("epochs", "warmup_epochs"):
            assert getattr(config, key) == value, key
    assert config.warmup_epochs == pytest.approx(0.6)  # the recipe's 20% warmup, of this run's 3 epochs
    assert train_config(["--recipe", "fast94", "--epochs", "3", "--warmup-epochs", "2"]).warmup_epochs == 2
    assert train_config(["--recipe", "fast94"]).warmup_epochs == RECIPES["fast94"]["warmup_epochs"]
    assert (config.batch_size, config.cutout, config.tta, config.translate_pad) == (500, 12, "flip-translate", "reflect")
    assert train_config(["--epochs", "3"]).cutout == 0  # no recipe, no change
    config.validate()


def test_a_sweeps_trials_share_one_compile_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    with shared_compile_cache(tmp_path):  # what the trainings launched inside inherit
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / ".compile-cache").resolve())
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ  # the sweep's own process is left as it was
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/mine")
    with shared_compile_cache(tmp_path):
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/mine"  # the user's own wins


def test_a_grouped_resnet_is_that_many_independent_resnets():
    """groups=G packs G ResNet-18s: with the members' weights copied in, each member's logits (train-mode batch
    norm included) are those of its own model on its own input."""
    torch.manual_seed(0)
    members = [CifarResNet18(width=2) for _ in range(3)]
    packed = CifarResNet18(width=2, groups=3)
    with torch.no_grad():
        for (name, target), *sources in zip(packed.state_dict().items(), *(m.state_dict().values() for m in members)):
            if name == "head.weight":
                sources = [s[:, :, None, None] for s in sources]
            if target.ndim == 0:  # num_batches_tracked
                continue
            target.copy_(torch.cat(sources))
    xs = [torch.randn(4, 3, 32, 32) for _ in members]
    out = packed(torch.cat(xs, dim=1)).view(4, 3, 10)
    for g, (model, x) in enumerate(zip(members, xs)):
        assert torch.allclose(out[:, g], model(x), atol=1e-5)
