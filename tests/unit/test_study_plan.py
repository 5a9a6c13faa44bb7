"""What the study asks of each training: its flags, read back by the trainer's own parser, are the protocol."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from batchscale.cli import train_parser
from batchscale.config import Config
from batchscale.flags import build
from batchscale.schedule import LRSchedule
from batchscale.errors import ConfigError
from batchscale.study import paper
from batchscale.study.protocol import MISSED, REACHED, Trial
from batchscale.study.study import (StudyConfig, batch_trials, dry_run, momentum_trials, paper_plan, read_study,
                                    study_preset)
from batchscale.study.study_report import calibration_line, momentum_lines


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
            assert c.batch_size == 32 and c.stop_at_target and c.holdout == 2000 and c.eval_growth == 1.2
            # B_simple averaged over the whole run before the target, not forgotten after 200,000 examples, and
            # the same fixed-weights probe at every B's end.
            assert c.noise_window >= 1e12 and c.noise_probe == 64
            # The budget: whichever of 6000 steps and 4 epochs of images comes first, and the epochs cover it.
            assert c.max_steps == trial.steps and c.max_steps <= 6000 and (c.max_steps - 1) * batch < 4 * 48_000
            assert c.max_steps == 6000 or c.max_steps * batch >= 4 * 48_000
            assert c.epochs * (48_000 // batch) >= c.max_steps
            schedule = LRSchedule.from_config(c, c.batches_per_allreduce, 48_000 // batch * batch, batch)
            # The cpu preset: no warmup, and a constant LR, no decay tied to the budget.
            assert schedule(0) == schedule((c.max_steps - 1) * batch) == c.base_lr


@pytest.mark.parametrize("batch", [32, 64, 1024])
def test_the_warmup_is_the_same_number_of_images_at_every_batch_size(config, batch):
    config.warmup_images = 4096
    c = as_config(batch_trials(config.validate(), batch, (0.05,))[0].args)
    schedule = LRSchedule.from_config(c, c.batches_per_allreduce, 48_000 // batch * batch, batch)
    ramp = schedule.warmup_images
    assert schedule(0) == 0 and schedule(ramp) == schedule((c.max_steps - 1) * batch) == pytest.approx(0.05)
    assert schedule(ramp - batch) < 0.05
    assert ramp == 4096  # exactly the same images ramped, however large B
    # The same images seen, the same LR at every B: 1,024 images into the ramp, a quarter of the peak.
    assert schedule(1024) == pytest.approx(0.05 * 1024 / 4096)


def test_a_warmup_that_is_not_whole_steps_at_every_batch_size_is_refused_in_one_line(config):
    # 4,000 images at B = 1024 would be 4 steps, 4,096 images: 2% more than at B = 32, a 1/B term in S(B).
    config.warmup_images = 4000
    with pytest.raises(ConfigError, match=r"--warmup-images 4000 is not a whole number of steps at B = 64, 128, 256, "
                                          r"512, 1024.*give a multiple of 1024 \(like 4096\) or 0"):
        config.validate()
    assert StudyConfig(out="s").validate().warmup_images % 8192 == 0  # the default fits every default B


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
    dead = {"final_test_acc": None, "diverged": 3, "seeds": 3, "unfinished": 0}
    rows = [{"per_worker_batch": b, "published": p, "paper": {"final_test_acc": a} if a else dead}
            for b, p, a in zip(paper.BATCHES, (23.9, 81.0, 86.0, 87.8, 88.2, 80.5), (None, .7, .8, .85, .86, .75))]
    text = paper.drop_statement(rows)
    assert "at the paper's LR, no figure for per-worker batch 8 (diverged at all 3 seeds)" in text
    assert "has not finished" not in text


def arm(values: list[float | None], seeds: tuple[int, ...] = (1, 2, 3)) -> dict:
    """One setting over its seeds, as paper.over_seeds makes it (None: that seed diverged)."""
    runs = [{"diverged": True} if v is None else {"final_test_acc": v, "mean_test_acc": v, "final_holdout_acc": v,
                                                  "mean_holdout_acc": v} for v in values]
    return paper.over_seeds(runs, 0.4, seeds)


def test_the_t_quantiles_are_students():
    # Independent of the table: the 0.975 quantile solves CDF(t) = 0.975 for Student's density, integrated here.
    def cdf(t: float, dof: int) -> float:
        norm = math.gamma((dof + 1) / 2) / (math.sqrt(dof * math.pi) * math.gamma(dof / 2))
        n = 20_000
        h = t / n
        return 0.5 + sum(norm * (1 + ((i + 0.5) * h) ** 2 / dof) ** (-(dof + 1) / 2) for i in range(n)) * h
    for dof in (1, 2, 3, 4, 10):
        assert cdf(paper.t_975(dof), dof) == pytest.approx(0.975, abs=2e-4)
    assert paper.t_975(11) == paper.t_975(10)  # between rows: the next lower dof's, which is wider


def test_the_control_is_a_paired_difference_with_a_t_interval():
    # The control is better by 2 points at every seed, while the seeds themselves differ by 10: unpaired, the two
    # means' standard error (5.8 points) would hide the gap; paired, the seeds' shared part cancels.
    workers, control = arm([0.50, 0.60, 0.70]), arm([0.52, 0.62, 0.72])
    text = paper.control_statement([{"per_worker_batch": 8, "paper": workers, "control": control}])
    assert "+2.0 ± 0.0 points (95%, 3 seeds paired): beyond chance" in text
    # A gap that is 0, 4 and 2 points by seed: mean 2, sd 2, 3 seeds: half-width 4.303 x 2 / sqrt(3) = 5.0 points.
    control = arm([0.50, 0.64, 0.72])
    text = paper.control_statement([{"per_worker_batch": 8, "paper": workers, "control": control}])
    assert "+2.0 ± 5.0 points (95%, 3 seeds paired): within chance" in text


def test_the_control_counts_its_diverged_seeds_and_has_its_row_in_the_table(config):
    workers, control = arm([0.50, 0.60, 0.70]), arm([None, 0.62, None])
    rows = [{"per_worker_batch": 8, "global_batch": 32, "published": 23.9, "paper": workers, "control": control}]
    text = paper.control_statement(rows)
    assert "(1 of 3 seeds, 2 diverged)" in text and "(3 of 3 seeds)" in text
    assert "one seed in common: no uncertainty measured" in text and "no verdict" in text
    config.paper = True
    table = "\n".join(paper.paper_section(rows, paper_plan(config)))
    assert "| 8: control, 1 worker, batch norm over 32 | 32 | - | 62.0 / 62.0 (1 of 3 seeds; 2 diverged) |" in table


def test_every_reported_drop_has_its_uncertainty():
    small, best, middle = arm([0.20, 0.25, 0.24]), arm([0.86, 0.87, 0.88]), arm([0.85, 0.85, 0.86])
    rows = [{"per_worker_batch": b, "published": 0, "paper": a} for b, a in zip(paper.BATCHES[:3], (small, best, middle))]
    text = paper.drop_statement(rows)
    # Paired per seed: 66, 62, 64 points: mean 64.0, sd 2, half-width 4.303 x 2 / sqrt(3) = 5.0; and 1, 2, 2 points:
    # mean 1.7, sd 0.58, half-width 1.4.
    assert "the smallest batch is 64.0 ± 5.0 points and the largest 1.7 ± 1.4 points below the best batch" in text
    assert "95% t interval" in text


def test_a_batch_never_run_says_why_in_the_report_and_results(tmp_path):
    plan = paper.PaperPlan(1, (1, 2), 3, 600, 8, 600, ())  # 600 training images: 256 x 4 do not fit
    rows = paper.paper_results(tmp_path, plan, {})
    assert rows[-1]["not_run"].startswith("never run: 4 workers x 256 is more than the 600 training images")
    text = paper.drop_statement(rows)
    assert "Per-worker batch 256 never run: 4 workers x 256 is more than the 600 training images" in text
    assert "8 (not finished)" in text and "diverged at every seed, or not finished" not in text


def test_the_edge_is_judged_on_the_contiguous_grid_not_on_the_papers_far_lr():
    def grid(values: tuple[float, ...]) -> list[dict]:
        cells = [arm([v] * 3) for v in values]
        for c, lr in zip(cells, (0.025, 0.05, 0.1)):
            c["peak_lr"] = lr
        return cells

    # The best is the grid's smallest LR; the paper's 0.4, 4x beyond the grid's top, is worse: still an edge.
    best = paper.pick(grid((0.80, 0.70, 0.60)), arm([0.30] * 3))
    assert best["peak_lr"] == 0.025 and best["at_edge"] and not best["off_grid"]
    # The paper's far LR wins: nothing was tried between it and the grid, so it is an edge too, and named.
    best = paper.pick(grid((0.80, 0.70, 0.60)), arm([0.90] * 3))
    assert best["peak_lr"] == 0.4 and best["at_edge"] and best["off_grid"] and "off the grid" in paper.lr_label(best)
    assert not paper.pick(grid((0.60, 0.80, 0.70)), arm([0.30] * 3))["at_edge"]


def test_one_paper_grid_the_originals_50_epochs_and_step_decay_in_the_study_and_the_sweep(config):
    from batchscale.study.sweep import Run, SweepConfig, command, preset

    # The original: 50 epochs, 5 warmup epochs from one worker's LR, then x0.1 at epoch 30 (60 and 80 lie beyond).
    assert StudyConfig(out="s").paper_epochs == paper.EPOCHS == 50
    config.paper, config.paper_epochs = True, 50
    study_run = as_config(next(r for r in paper.runs(paper_plan(config), {}) if r.name == "paper/b64-paper-lr-s1").args)
    lrs = peak_and_ramp(study_run, steps_per_epoch=10)
    assert len(lrs) == 500 and lrs[0] == pytest.approx(0.1) and lrs[50] == pytest.approx(0.4)
    assert lrs[299] == pytest.approx(0.4) and lrs[300] == lrs[499] == pytest.approx(0.04)
    # The sweep's paper preset runs the same schedule, not a cosine.
    sweep = preset("paper", SweepConfig(out="w"))
    args = command(sweep, Run(64, 4, "linear", 0.1, 1), Path("w/x"))
    sweep_run = build(Config, train_parser("t").parse_args(args[args.index("train") + 1:])).validate()
    assert peak_and_ramp(sweep_run, steps_per_epoch=10) == pytest.approx(lrs)
    # A shorter paper grid keeps the shape: 10% warmup, the decay at 60% of the run.
    short = as_config([*paper.schedule(10), "--epochs", "10", "--base-lr", "0.1", "--warmup-start-lr", "0"])
    ramp = peak_and_ramp(short, steps_per_epoch=10)
    assert ramp[9] < ramp[10] == ramp[59] and ramp[60] == pytest.approx(0.1 * ramp[59])


def test_results_at_another_width_or_epoch_count_are_labelled_not_comparable(config):
    config.paper = True
    for width, epochs, comparable in ((64, 50, True), (64, 90, False), (8, 50, False), (64, 1, False)):
        config.width, config.paper_epochs = width, epochs
        lines = "\n".join(paper.paper_section([], paper_plan(config)))
        assert ("Not comparable with the paper's column" in lines) is not comparable
        assert ("published (50 epochs, width 64; not comparable)" in lines) is not comparable


def test_the_cpu_preset_fills_only_what_was_not_given():
    cfg = study_preset("cpu", StudyConfig(out="s", width=16), {"width"})
    assert cfg.width == 16 and cfg.target == 0.45 and cfg.batch_sizes[0] == 32 and Path(cfg.out) == Path("s")


def test_the_dry_run_lists_only_the_first_batchs_lrs_and_a_range_of_trials(config):
    lines: list[str] = []
    dry_run(config, lines.append)
    # 6 batch sizes x 2 seeds x (3 LRs, or 3 + 3 extensions)
    assert lines[0].startswith("36 to 72 trials: 6 batch sizes x 3 LRs (up to 6 where the best is on the grid's "
                               "edge) x 2 seeds") and "neighbour's best" in lines[1]
    listed = [line.split(":")[0].strip() for line in lines[2:] if "-lr" in line]
    assert len(listed) == 6 and all(name.startswith("curve/b32-") for name in listed)
    assert [line.split(":")[0].strip() for line in lines[2 + 6:-1]] == [f"curve/b{b}" for b in config.batch_sizes[1:]]
    assert lines[-1].startswith("that is round 1 of at most")  # later rounds are planned from results


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


def trial(batch: int, lr: float, seed: int, steps: int | None, momentum: float = 0.9) -> Trial:
    return Trial(batch, lr, seed, REACHED if steps else MISSED, steps, extra={"momentum": momentum, "wd": 5e-4,
                                                                              "nesterov": True})


def test_the_momentum_check_reruns_the_two_largest_batches_at_the_same_effective_lr(config):
    # B = 1024 reached nothing: the two largest that reached are 256 and 512, best LRs 0.2 and 0.4.
    trials = [trial(b, lr, s, steps) for b, best in ((128, 0.1), (256, 0.2), (512, 0.4))
              for lr, steps in ((best / 2, 300), (best, 200), (best * 2, 300)) for s in (1, 2)]
    trials += [trial(1024, 0.8, s, None) for s in (1, 2)]
    planned = momentum_trials(config, trials)
    assert len(planned) == 2 * 3 * 2
    for p in planned:
        c = as_config(p.args)
        batch = c.batch_size * c.batches_per_allreduce
        assert batch in (256, 512) and c.momentum == 0.97 and c.stop_at_target and p.name.startswith("momentum/")
        # The same budget as the curve's trials of that batch size.
        assert c.max_steps == batch_trials(config, batch, (0.1,))[0].steps
    # Centred where LR / (1 - momentum) is the best one's: 0.4 x 0.03 / 0.1 = 0.12 at B = 512.
    lrs = sorted({float(as_config(p.args).base_lr) for p in planned if "b512-" in p.name})
    assert lrs == pytest.approx([0.12 / 2**0.5, 0.12, 0.12 * 2**0.5], rel=1e-5)


def test_the_momentum_check_says_whether_the_fixed_momentum_held_large_batches_back():
    # Seeds scatter by 10% (log steps +-0.1 about each cell's mean): two 2-seed optima differ by chance with an sd
    # of 0.1 (0.1 x sqrt(2 / 2)), so only a change beyond 0.2 in log steps counts.
    def cell(batch: float, lr: float, steps: float, momentum: float = 0.9) -> list[Trial]:
        return [trial(batch, lr, s, round(steps * math.exp(d)), momentum) for s, d in ((1, -0.1), (2, 0.1))]

    curve = [t for lr, steps in ((0.2, 300), (0.4, 200), (0.8, 300)) for t in cell(512, lr, steps)]
    for factor, verdict in ((0.6, "faster beyond twice the seeds' scatter"), (0.95, "within twice the seeds' scatter")):
        checked = [t for lr, steps in ((0.06, 300 * factor), (0.12, 200 * factor), (0.24, 300 * factor))
                   for t in cell(512, lr, steps, 0.97)]
        [line] = momentum_lines(curve, checked, 0.9, 2)
        assert verdict in line and f"x{factor:.2f}" in line


def test_the_interval_is_said_calibrated_only_for_the_design_that_was_measured():
    measured = StudyConfig(out="s", seeds=(1, 2), lr_points=3, precision=1.5, rounds=10)
    assert "held the truth in 28 of 32 studies" in calibration_line(measured)
    for other in (StudyConfig(out="s", seeds=(1, 2, 3), lr_points=3), StudyConfig(out="s", seeds=(1, 2), lr_points=3,
                                                                                    rounds=1)):
        line = calibration_line(other)
        assert "was not measured for this design" in line and "held the truth in" not in line
