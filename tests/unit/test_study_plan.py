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
from batchscale.study import paper
from batchscale.study.study import StudyConfig, batch_trials, dry_run, paper_plan, read_study, study_preset


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
            schedule = LRSchedule.from_config(c, c.batches_per_allreduce, 48_000 // batch * batch, batch)
            # The cpu preset: no warmup, and a constant LR, no decay tied to the budget.
            assert schedule(0) == schedule((c.max_steps - 1) * batch) == c.base_lr


@pytest.mark.parametrize("batch", [32, 64, 1024])
def test_the_warmup_is_the_same_number_of_images_at_every_batch_size(config, batch):
    config.warmup_images = 4000
    c = as_config(batch_trials(config, batch, (0.05,))[0].args)
    schedule = LRSchedule.from_config(c, c.batches_per_allreduce, 48_000 // batch * batch, batch)
    ramp = schedule.warmup_images
    assert schedule(0) == 0 and schedule(ramp) == schedule((c.max_steps - 1) * batch) == pytest.approx(0.05)
    assert schedule(ramp - batch) < 0.05
    assert 4000 <= ramp < 4000 + batch and ramp % batch == 0  # whole steps covering 4,000 images, however large B


def test_a_micro_batch_larger_than_the_smallest_batch_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="--micro-batch 32 is larger than the smallest batch size 16; give "
                                          "--micro-batch 16 or less"):
        StudyConfig(out="s", batch_sizes=(16, 64), micro_batch=32).validate()
    with pytest.raises(ConfigError, match="multiple of the micro-batch 16"):
        StudyConfig(out="s", batch_sizes=(16, 40)).validate()
    assert StudyConfig(out="s", batch_sizes=(64, 32, 256)).micro == 32


def peak_and_ramp(c: Config, steps_per_epoch: int = 100) -> list[float]:
    """The LR of every step of a run, as the trainer builds it (one process: its simulated workers' batches and
    its accumulated ones are what one update averages)."""
    batch = c.batch_size * c.batches_per_allreduce * c.simulate_workers
    schedule = LRSchedule.from_config(c, c.simulate_workers * c.batches_per_allreduce, steps_per_epoch * batch, batch)
    return [schedule(step * batch) for step in range(schedule.total_images // batch)]


def test_the_paper_grid_runs_as_the_paper_ran_it_at_a_tuned_grid_and_with_a_batch_norm_control(config):
    config.paper, config.paper_epochs = True, 2
    runs = {r.name: as_config(r.args) for r in paper.runs(paper_plan(config), {64: 0.05, 1024: 1.2})}
    # Every seed of: the paper's LR and the tuned grid's 3 LRs for each of the 6 batches, and the control; where a
    # grid is centred on the paper's LR (no stage-1 best for its global batch), its middle point is the paper's run.
    assert len(runs) == 2 * (6 + 3 + 3 + 4 * 2 + 1) and paper.budget(paper_plan(config)) == 2 * (6 * 4 + 1)
    assert not any(name.startswith("paper/b8-lr0.4-") for name in runs)
    for name, c in runs.items():
        assert c.epochs == 2 and not c.stop_at_target and c.holdout == 2000 and c.seed in (1, 2)
        assert c.simulate_workers == (1 if "-control-" in name else 4)
    for seed in (1, 2):
        # The paper's LR: 0.1 per worker on 4 workers, whatever the batch.
        assert all(max(peak_and_ramp(runs[f"paper/b{b}-paper-lr-s{seed}"])) == pytest.approx(0.4)
                   for b in paper.BATCHES)
        # The tuned grid, x2 apart around stage 1's best LR for the global batch, or around 0.4 without one.
        for b, lrs in ((16, (0.025, 0.05, 0.1)), (256, (0.6, 1.2, 2.4)), (8, (0.2, 0.8))):
            for lr in lrs:
                ramp = peak_and_ramp(runs[f"paper/b{b}-lr{lr:.4g}-s{seed}"])
                assert max(ramp) == pytest.approx(lr) and ramp[0] == pytest.approx(lr / 4)
        # The control differs from per-worker batch 8 on 4 workers only in batch norm's batch: one worker with all
        # 32 images, the same LR at every step, the same epochs.
        four, one = runs[f"paper/b8-paper-lr-s{seed}"], runs[f"paper/b8-control-s{seed}"]
        assert four.batch_size * four.simulate_workers == one.batch_size == 32
        assert peak_and_ramp(four) == pytest.approx(peak_and_ramp(one))


def test_the_tuned_lr_is_picked_on_the_held_out_split_never_on_the_test_set(tmp_path):
    plan = paper.PaperPlan(1, (1, 2), 3, 48_000, 8, 0, ())
    # Held-out and test accuracy disagree on purpose: 0.2 is best held out, 0.8 best on the test set; at 0.4 one
    # seed diverged, so it is not eligible however good the other seed was.
    made = {0.2: [(0.50, 0.40), (0.52, 0.42)], 0.4: [(0.90, 0.90), None], 0.8: [(0.30, 0.60), (0.32, 0.62)]}
    for lr, seeds in made.items():
        for seed, accs in zip((1, 2), seeds):
            # The grid is centred on the paper's LR (no stage-1 best here): its middle point is the paper's run.
            folder = tmp_path / (f"paper/b8-lr{lr:.4g}-s{seed}" if lr != 0.4 else f"paper/b8-paper-lr-s{seed}")
            folder.mkdir(parents=True)
            if accs is None:
                (folder / "diverged.json").write_text("{}")
                continue
            (folder / "summary.json").write_text(json.dumps({"final_val_acc": accs[1]}))
            (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": accs[1], "holdout_acc": accs[0]}))
    row = paper.paper_results(tmp_path, plan, {})[0]
    assert row["tuned"]["peak_lr"] == pytest.approx(0.2) and row["tuned"]["at_edge"]
    assert row["tuned"]["final_test_acc"] == pytest.approx(0.41) and row["tuned"]["seeds"] == 2
    assert row["tuned"]["final_test_sd"] == pytest.approx(0.02 / 2**0.5)
    assert [c["diverged"] for c in row["grid"]] == [0, 1, 0] and row["paper"]["diverged"] == 1


def test_the_report_says_how_much_of_the_papers_drop_survives():
    published = (23.9, 81.0, 86.0, 87.8, 88.2, 80.5)
    at_paper_lr = (0.20, 0.70, 0.80, 0.85, 0.86, 0.75)
    tuned = (0.80, 0.84, 0.85, 0.86, 0.86, 0.84)
    rows = [{"published": p, "paper": {"final_test_acc": a}, "tuned": {"final_test_acc": t}}
            for p, a, t in zip(published, at_paper_lr, tuned)]
    text = paper.drop_statement(rows)
    assert "the smallest batch 64.3 points and the largest 7.7 points below its best" in text
    assert "at the paper's LR, the smallest batch is 66.0 points and the largest 11.0 points" in text
    assert "with a tuned LR, the smallest batch is 6.0 points and the largest 2.0 points" in text
    assert text.startswith("In the paper")
    # At another scale the paper's figures are there, named as another scale, not as what ours are set against.
    assert paper.drop_statement(rows, comparable=False).startswith("Here, at the paper's LR")
    assert "another scale" in paper.drop_statement(rows, comparable=False)


def test_a_batch_that_diverged_at_every_seed_is_named_not_skipped():
    rows = [{"per_worker_batch": b, "published": p, "paper": {"final_test_acc": a}}
            for b, p, a in zip(paper.BATCHES, (23.9, 81.0, 86.0, 87.8, 88.2, 80.5), (None, .7, .8, .85, .86, .75))]
    text = paper.drop_statement(rows)
    assert "at the paper's LR, no figure yet for per-worker batch 8 (diverged at every seed" in text
    assert "has not finished" not in text


def test_the_control_is_judged_against_the_standard_error_of_the_difference():
    # Two seeds each, sd 2 points: the difference of the means has standard error sqrt(2 x 0.02^2 / 2) = 2 points.
    arm = {"seeds": 2, "diverged": 0, "unfinished": 0, "final_test_sd": 0.02}
    for control, verdict in ((0.56, "more than twice it"), (0.53, "within twice it")):
        rows = [{"per_worker_batch": 8, "paper": {**arm, "final_test_acc": 0.50},
                 "control": {**arm, "final_test_acc": control}}]
        text = paper.control_statement(rows)
        assert f"standard error 2.0 points: {verdict}" in text and f"{100 * (control - 0.5):+.1f} points" in text


def test_results_at_another_width_or_epoch_count_are_labelled_not_comparable(config):
    config.paper = True
    for width, epochs, comparable in ((64, 90, True), (8, 90, False), (64, 1, False)):
        config.width, config.paper_epochs = width, epochs
        lines = "\n".join(paper.paper_section([], paper_plan(config)))
        assert ("Not comparable with the paper's column" in lines) is not comparable
        assert ("published (90 epochs, width 64; not comparable)" in lines) is not comparable


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


def test_an_lr_judged_on_fewer_seeds_is_not_picked_and_a_disagreeing_mean_is_named():
    run = lambda final, mean: {"final_test_acc": final, "mean_test_acc": mean, "final_holdout_acc": final,  # noqa: E731
                               "mean_holdout_acc": mean}
    lucky = paper.over_seeds([run(0.9, 0.9), None], 0.8)  # one seed still running
    steady = paper.over_seeds([run(0.6, 0.3), run(0.6, 0.3)], 0.4)
    early = paper.over_seeds([run(0.5, 0.5), run(0.5, 0.5)], 0.2)  # worse at the end, better on average
    best = paper.pick([early, steady, lucky])
    assert best["peak_lr"] == 0.4 and best["by_mean"] == 0.2 and not best["at_edge"]
    assert paper.cell(lucky) == "90.0 / 90.0 (1 of 2 seeds)"
