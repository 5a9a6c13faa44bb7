"""What the study asks of each training: its flags, read back by the trainer's own parser, are the protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchscale.cli import train_parser
from batchscale.config import Config
from batchscale.flags import build
from batchscale.schedule import LRSchedule
from batchscale.errors import ConfigError
from batchscale.study.study import StudyConfig, batch_trials, dry_run, paper_runs, read_study, study_preset
from batchscale.study.study_report import drop_statement


def as_config(args: tuple[str, ...]) -> Config:
    return build(Config, train_parser("t").parse_args([*args, "--log-dir", "x"])).validate()


@pytest.fixture
def config() -> StudyConfig:
    cfg = study_preset("cpu", StudyConfig(out="s"))
    cfg._images = 48_000  # no data folder needed to plan
    return cfg


def test_a_curve_trial_stops_at_its_held_out_target_within_its_budget(config):
    for batch in config.batch_sizes:
        trials = batch_trials(config, batch, (0.01, 0.02))
        assert len(trials) == 2 * 2  # every LR with every one of the preset's 2 seeds
        for trial in trials:
            c = as_config(trial.args)
            assert c.batch_size * c.batches_per_allreduce == batch
            # One batch-norm batch for every B: the smallest batch size, every B accumulated from it.
            assert c.batch_size == 32 and c.stop_at_target and c.holdout == 2000 and c.eval_growth == 1.05
            # B_simple averaged over the whole run before the target, not forgotten after 200,000 examples.
            assert c.noise_window >= 1e12
            # The budget: whichever of 6000 steps and 4 epochs of images comes first, and the epochs cover it.
            assert c.max_steps == trial.steps and c.max_steps <= 6000 and (c.max_steps - 1) * batch < 4 * 48_000
            assert c.max_steps == 6000 or c.max_steps * batch >= 4 * 48_000
            assert c.epochs * (48_000 // batch) >= c.max_steps
            schedule = LRSchedule.from_config(c, c.batches_per_allreduce, 48_000 // batch)
            # The cpu preset: no warmup, and a constant LR, no decay tied to the budget.
            assert schedule(0) == schedule(c.max_steps - 1) == c.base_lr


@pytest.mark.parametrize("batch", [32, 64, 1024])
def test_the_warmup_is_the_same_number_of_images_at_every_batch_size(config, batch):
    config.warmup_images = 4000
    c = as_config(batch_trials(config, batch, (0.05,))[0].args)
    schedule = LRSchedule.from_config(c, c.batches_per_allreduce, 48_000 // batch)
    ramp = schedule.warmup_steps
    assert schedule(0) == 0 and schedule(ramp) == schedule(c.max_steps - 1) == pytest.approx(0.05)
    assert schedule(ramp - 1) < 0.05
    assert 4000 <= ramp * batch < 4000 + batch  # whole steps covering 4,000 images, however large B


def test_a_micro_batch_larger_than_the_smallest_batch_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="--micro-batch 32 is larger than the smallest batch size 16; give "
                                          "--micro-batch 16 or less"):
        StudyConfig(out="s", batch_sizes=(16, 64), micro_batch=32).validate()
    with pytest.raises(ConfigError, match="multiple of the micro-batch 16"):
        StudyConfig(out="s", batch_sizes=(16, 40)).validate()
    assert StudyConfig(out="s", batch_sizes=(64, 32, 256)).micro == 32


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
    assert cfg.width == 16 and cfg.target == 0.45 and cfg.batch_sizes[0] == 32 and Path(cfg.out) == Path("s")


def test_the_dry_run_lists_only_the_first_batchs_lrs_and_a_range_of_trials(config):
    lines: list[str] = []
    dry_run(config, lines.append)
    # 6 batch sizes x 2 seeds x (3 LRs, or 3 + 3 extensions)
    assert lines[0].startswith("36 to 72 trials") and "neighbour's best" in lines[1]
    listed = [line.split(":")[0].strip() for line in lines[2:] if "-lr" in line]
    assert len(listed) == 6 and all(name.startswith("curve/b32-") for name in listed)
    assert [line.split(":")[0].strip() for line in lines[2 + 6:]] == [f"curve/b{b}" for b in config.batch_sizes[1:]]


def test_an_older_study_folder_with_a_retired_flag_still_reads(tmp_path):
    saved = {"out": str(tmp_path), "batch_sizes": [16, 32], "warmup": 0.05, "micro_batch": 16, "seeds": [42]}
    (tmp_path / "study.json").write_text(json.dumps(saved))
    config = read_study(tmp_path)
    assert config.batch_sizes == (16, 32) and config.micro == 16
