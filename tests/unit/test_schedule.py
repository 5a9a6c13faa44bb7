import math

import pytest

from batchscale.config import Config
from batchscale.schedule import LRSchedule, lr_scale


@pytest.mark.parametrize("rule,replicas,expected", [("linear", 8, 8.0), ("sqrt", 16, 4.0), ("none", 8, 1.0), ("linear", 1, 1.0)])
def test_scale_rules(rule, replicas, expected):
    assert lr_scale(rule, replicas) == expected


def make(schedule: str, replicas: int = 4, scaling: str = "linear", **kw) -> LRSchedule:
    config = Config(epochs=10, base_lr=0.1, warmup_epochs=2, lr_schedule=schedule, lr_scaling=scaling, **kw)
    return LRSchedule.from_config(config, replicas=replicas, steps_per_epoch=100)


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
    lr = LRSchedule.from_config(Config(epochs=10, base_lr=0.1, warmup_epochs=0, lr_scaling="sqrt"), 16, 10)
    assert lr(0) == pytest.approx(0.4)
    assert lr(50) == pytest.approx(0.2)


def test_warmup_can_start_below_the_base_lr():
    config = Config(epochs=10, base_lr=0.4, warmup_epochs=1, warmup_start_lr=0.0, lr_schedule="onecycle")
    lr = LRSchedule.from_config(config, replicas=1, steps_per_epoch=100)
    assert lr(0) == 0.0 and lr(50) == pytest.approx(0.2) and lr(100) == pytest.approx(0.4)
    assert lr(550) == pytest.approx(0.2)


def test_a_schedule_says_whether_its_lr_depends_on_the_epoch_count():
    """What a resume under another --epochs asks: only a schedule that spreads its decay over the run refuses it."""
    assert {kind: make(kind).depends_on_epochs for kind in ("cosine", "onecycle", "step", "constant")} == {
        "cosine": True, "onecycle": True, "step": False, "constant": False}
    assert make("cosine")(500) != LRSchedule.from_config(Config(epochs=20, base_lr=0.1, warmup_epochs=2), 4, 100)(500)
    assert make("step")(500) == LRSchedule.from_config(Config(epochs=20, base_lr=0.1, warmup_epochs=2,
                                                              lr_schedule="step"), 4, 100)(500)
