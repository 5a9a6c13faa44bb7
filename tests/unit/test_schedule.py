import math

import pytest

from batchscale.config import Config
from batchscale.schedule import LRSchedule, lr_scale


@pytest.mark.parametrize("rule,replicas,expected", [("linear", 8, 8.0), ("sqrt", 16, 4.0), ("none", 8, 1.0), ("linear", 1, 1.0)])
def test_scale_rules(rule, replicas, expected):
    assert lr_scale(rule, replicas) == expected


def make(schedule: str, replicas: int = 4, scaling: str = "linear", **kw) -> LRSchedule:
    """100 steps an epoch of a batch of one image: the LR at `images` is the LR at step `images`."""
    config = Config(epochs=10, base_lr=0.1, warmup_epochs=2, lr_schedule=schedule, lr_scaling=scaling, **kw)
    return LRSchedule.from_config(config, replicas=replicas, epoch_images=100, batch=1)


@pytest.mark.parametrize("schedule", ["cosine", "step", "onecycle"])
def test_warmup_ramps_per_step_from_base_to_peak(schedule):
    lr = make(schedule)
    assert lr.peak_lr == pytest.approx(0.4)
    assert lr(0) == pytest.approx(0.1)
    assert lr(100) == pytest.approx(0.25)  # halfway through a 200-step warmup
    assert lr(150) == pytest.approx(0.325)
    assert lr(200) == pytest.approx(0.4)


def test_cosine_values():
    lr = make("cosine")
    assert lr(600) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # half of the 800 post-warmup steps
    assert lr(999) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 799 / 800)))
    assert lr(1000) == pytest.approx(0.0, abs=1e-12)


def test_step_values():
    lr = make("step", lr_decay_epochs=(5, 8), lr_decay_factor=0.1)
    assert lr(499) == pytest.approx(0.4)
    assert lr(500) == pytest.approx(0.04)
    assert lr(799) == pytest.approx(0.04)
    assert lr(800) == pytest.approx(0.004)


def test_onecycle_values():
    lr = make("onecycle")
    assert lr(600) == pytest.approx(0.2)
    assert lr(1000) == pytest.approx(0.0, abs=1e-12)


def test_sqrt_scaling_and_no_warmup():
    lr = LRSchedule.from_config(Config(epochs=10, base_lr=0.1, warmup_epochs=0, lr_scaling="sqrt"), 16, 10, 1)
    assert lr(0) == pytest.approx(0.4)
    assert lr(50) == pytest.approx(0.2)


def test_warmup_can_start_below_the_base_lr():
    config = Config(epochs=10, base_lr=0.4, warmup_epochs=1, warmup_start_lr=0.0, lr_schedule="onecycle")
    lr = LRSchedule.from_config(config, replicas=1, epoch_images=100, batch=1)
    assert lr(0) == 0.0 and lr(50) == pytest.approx(0.2) and lr(100) == pytest.approx(0.4)
    assert lr(550) == pytest.approx(0.2)


def test_a_schedule_says_whether_its_lr_depends_on_the_epoch_count():
    """What a resume under another --epochs asks: only a schedule that spreads its decay over the run refuses it."""
    assert {kind: make(kind).depends_on_epochs for kind in ("cosine", "onecycle", "step", "constant")} == {
        "cosine": True, "onecycle": True, "step": False, "constant": False}
    assert make("cosine")(500) != LRSchedule.from_config(Config(epochs=20, base_lr=0.1, warmup_epochs=2), 4, 100, 1)(500)
    assert make("step")(500) == LRSchedule.from_config(Config(epochs=20, base_lr=0.1, warmup_epochs=2,
                                                              lr_schedule="step"), 4, 100, 1)(500)


def closed_form(kind: str, images: float, *, peak: float, base: float, warmup: float, total: float, epoch: float,
                decay: tuple[int, ...] = (), factor: float = 0.1) -> float:
    """The schedule written out over images, independently of LRSchedule: a linear ramp from `base` to `peak` over
    `warmup` images, then constant, a step decay at each `decay` epoch of `epoch` images, a half cosine or a
    straight line to zero at `total` images."""
    if images < warmup:
        return base + (peak - base) * images / warmup
    if kind == "constant":
        return peak
    if kind == "step":
        return peak * factor ** len([e for e in decay if images >= e * epoch])
    done = (images - warmup) / (total - warmup)
    return peak * (0.5 + 0.5 * math.cos(math.pi * done)) if kind == "cosine" else peak * (1 - done)


@pytest.mark.parametrize("kind", ["cosine", "step", "onecycle", "constant"])
def test_schedules_by_images_give_the_same_lr_at_the_same_images_for_every_batch(kind):
    """6400 images an epoch: batches of 32, 64 and 128 take whole epochs in 200, 100 and 50 steps, and a warmup of
    half an epoch is whole steps of each. Without LR scaling the schedule is one curve over images, whatever the
    batch, and equals the closed form at every step's images."""
    config = Config(epochs=4, base_lr=0.05, warmup_epochs=0.5, lr_schedule=kind, lr_scaling="none",
                    lr_decay_epochs=(2, 3), warmup_start_lr=0.0)
    curves = {}
    for batch in (32, 64, 128):
        schedule = LRSchedule.from_config(config, replicas=batch // 32, epoch_images=6400, batch=batch)
        assert schedule.total_images == 4 * 6400 and schedule.warmup_images == 3200
        curves[batch] = {step * batch: schedule(step * batch) for step in range(4 * 6400 // batch)}
    for images, lr in curves[128].items():
        assert curves[32][images] == pytest.approx(lr, rel=1e-12, abs=1e-15)
        assert curves[64][images] == pytest.approx(lr, rel=1e-12, abs=1e-15)
    for batch, curve in curves.items():
        for images, lr in curve.items():
            want = closed_form(kind, images, peak=0.05, base=0.0, warmup=3200, total=4 * 6400, epoch=6400,
                               decay=(2, 3))
            assert lr == pytest.approx(want, rel=1e-12, abs=1e-15), (batch, images)
