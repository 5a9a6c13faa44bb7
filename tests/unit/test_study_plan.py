"""What the study asks of each training: its flags, read back by the trainer's own parser, are the protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchscale.cli import train_parser
from batchscale.config import Config
from batchscale.flags import build
from batchscale.schedule import LRSchedule
from batchscale.study.critical import StudyConfig, curve_trials, edge_trials, paper_runs, study_preset
from batchscale.study.protocol import MISSED, REACHED, Trial
from batchscale.study.study_report import drop_statement


def as_config(args: tuple[str, ...]) -> Config:
    return build(Config, train_parser("t").parse_args([*args, "--log-dir", "x"])).validate()


@pytest.fixture
def config() -> StudyConfig:
    cfg = study_preset("cpu", StudyConfig(out="s"))
    cfg._images = 48_000  # no data folder needed to plan
    return cfg


def test_a_curve_trial_stops_at_its_held_out_target_within_its_budget(config):
    trials = curve_trials(config)
    assert len(trials) == 7 * 4
    per_batch: dict[int, list[float]] = {}
    for trial in trials:
        c = as_config(trial.args)
        batch = c.batch_size * c.batches_per_allreduce
        assert c.batch_size == min(batch, 128) and c.stop_at_target and c.holdout == 2000 and c.eval_growth == 1.05
        # The budget: whichever of 6000 steps and 4 epochs of images comes first, and the epochs cover it.
        assert c.max_steps == trial.steps and c.max_steps <= 6000 and (c.max_steps - 1) * batch < 4 * 48_000
        assert c.max_steps == 6000 or c.max_steps * batch >= 4 * 48_000
        assert c.epochs * (48_000 // batch) >= c.max_steps
        schedule = LRSchedule.from_config(c, c.batches_per_allreduce, 48_000 // batch)
        # Warmed up from 0 to the trial's LR, then constant: no decay tied to the budget.
        assert schedule(0) == 0 and schedule(schedule.warmup_steps) == schedule(c.max_steps - 1) == c.base_lr
        per_batch.setdefault(batch, []).append(c.base_lr)
    for batch, lrs in per_batch.items():
        guess = 0.1 * batch / 128
        assert len(lrs) == 4 and min(lrs) < guess < max(lrs) and max(lrs) / min(lrs) == pytest.approx(8, rel=1e-4)


def test_the_paper_grid_runs_as_the_paper_ran_it_and_with_the_tuned_lr(config):
    runs = {r.name: as_config(r.args) for r in paper_runs(config, {64: 0.05, 1024: 1.2})}
    assert len(runs) == 6 + 2
    for name, c in runs.items():
        assert c.simulate_workers == 4 and c.epochs == config.paper_epochs and not c.stop_at_target
        peak = LRSchedule.from_config(c, 4, 100).peak_lr
        assert peak == pytest.approx(0.4 if "-paper-" in name else {"b16": 0.05, "b256": 1.2}[name.split("/")[1][:4].rstrip("-")])
    tuned = runs["paper/b16-tuned-lr0.05"]
    assert tuned.warmup_start_lr == pytest.approx(0.05 / 4)  # ramp from one worker's share, as the paper's


def test_the_report_says_how_much_of_the_papers_drop_survives():
    published = (23.9, 81.0, 86.0, 87.8, 88.2, 80.5)
    at_paper_lr = (0.20, 0.70, 0.80, 0.85, 0.86, 0.75)
    tuned = (0.80, 0.84, 0.85, 0.86, 0.86, 0.84)
    rows = [{"published": p, "paper": {"final_test_acc": a}, "tuned": {"final_test_acc": t}}
            for p, a, t in zip(published, at_paper_lr, tuned)]
    text = drop_statement(rows)
    assert "the smallest batch is 64.3 points and the largest 7.7 points below its best" in text
    assert "at the paper's LR, the smallest batch is 66.0 points and the largest 11.0 points" in text
    assert "with a tuned LR, the smallest batch is 6.0 points and the largest 2.0 points" in text


def test_the_cpu_preset_fills_only_what_was_not_given():
    cfg = study_preset("cpu", StudyConfig(out="s", width=16), {"width"})
    assert cfg.width == 16 and cfg.target == 0.45 and cfg.batch_sizes[0] == 16 and Path(cfg.out) == Path("s")


def test_a_best_lr_on_the_grids_edge_gets_a_trial_beyond_it(config):
    trials = [Trial(128, lr, 42, REACHED, steps) for lr, steps in ((0.05, 300), (0.1, 400), (0.2, 500))]
    trials += [Trial(256, lr, 42, REACHED if steps else MISSED, steps) for lr, steps in ((0.1, 300), (0.2, 200), (0.4, None))]
    trials += [Trial(512, lr, 42, REACHED, steps) for lr, steps in ((0.2, 300), (0.4, 200))]
    extra = {p.name: as_config(p.args) for p in edge_trials(config, trials)}
    assert set(extra) == {"curve/b128-lr0.025-s42", "curve/b512-lr0.8-s42"}
    assert extra["curve/b128-lr0.025-s42"].base_lr == pytest.approx(0.025)
