"""The dry run's expected time: the planned images at a committed throughput figure, worked by hand here."""

from __future__ import annotations

from batchscale.study.study import StudyConfig, dry_run, study_preset


def planned(**values: object) -> StudyConfig:
    config = StudyConfig(out="s", **values)  # type: ignore[arg-type]
    config._images = 10_000  # no data folder needed to plan
    return config


def first_lines(config: StudyConfig, device: str) -> list[str]:
    lines: list[str] = []
    dry_run(config, lines.append, device=device)
    return lines[0].splitlines()


def test_the_expected_time_is_the_planned_images_at_the_committed_rate():
    # Width 16, micro-batch 128 on a CPU: cpu-bench-b128-w16.json's 650 img/s. B = 128 and 256, each capped at 1,000
    # steps (10 epochs of 10,000 images would be 782 and 391: the epochs cap them first). Per trial: 782 x 128 =
    # 100,096 and 391 x 256 = 100,096 images. 2 LRs x 1 seed, or 3 with the edge extension: 400,384 or 600,576
    # images, at 650 img/s 615.98 s and 923.96 s (whole seconds shown).
    config = planned(width=16, batch_sizes=(128, 256), lr_points=2, extend_edges=1, seeds=(1,), budget_steps=1000,
                     budget_epochs=10.0, paper=False)
    line = first_lines(config, "cpu")[1]
    assert line.startswith("estimated time on 2 CPU cores, free of other work: about 10 to 15 min if every trial "
                           "trains its whole budget")
    assert "650 img/s, from benchmarks/results/cpu-bench-b128-w16.json" in line and "micro-batch" not in line
    # Stopping as early as the committed CPU study's trials did, at 18.4% of their budgets' images: 73,671 and
    # 110,506 images, 113.3 s and 170.0 s.
    assert "about 2 to 3 min if trials stop as early as in benchmarks/results/cpu-study (18% of their budgets' " \
        "images)" in line
    # A figure that times training steps alone is not a bound, and none is called one.
    assert "evaluations and start-up come on top" in line and "an estimate, not a bound" in line
    assert "at most" not in line


def test_the_paper_grid_counts_and_another_micro_batch_is_named():
    # The same curve at micro-batch 64 (still the width-16 figure at 128, named), with the paper grid at most: one
    # seed x (6 batches x (the paper's LR + 3 tuned) + the control) = 25 runs x 1 epoch x 10,000 images = 250,000
    # more. 650,384 / 650 = 1000.6 s, 850,576 / 650 = 1308.6 s.
    config = planned(width=16, batch_sizes=(128, 256), lr_points=2, extend_edges=1, seeds=(1,), budget_steps=1000,
                     budget_epochs=10.0, micro_batch=64, paper_epochs=1)
    line = first_lines(config, "cpu")[1]
    assert line.startswith("estimated time on 2 CPU cores, free of other work: about 17 to 22 min if every trial")
    assert "measured at micro-batch 128, this study's is 64" in line


def test_no_figure_for_the_width_or_micro_batch_is_said_not_invented():
    line = first_lines(planned(width=12, batch_sizes=(128,)), "cpu")[1]
    assert line.startswith("expected time: no committed throughput figure for width 12 at micro-batch 128 on cpu")
    # The GPU preset's micro-batch 64 was never timed on a GPU (only 512 was): no estimate there, unlike on a CPU.
    gpu = study_preset("gpu", planned())
    assert first_lines(gpu, "cuda")[1].startswith("expected time: no committed throughput figure for width 64 at "
                                                  "micro-batch 64 on cuda")
    assert "from benchmarks/results/cpu-bench-b64.json" in first_lines(gpu, "cpu")[1]


def test_the_dry_run_reads_as_counted_words_not_a_template():
    # One LR, no extension, one seed, 4 batch sizes: 4 trials, said once; a budget under a million images in full.
    config = planned(width=8, batch_sizes=(32, 64, 128, 256), lr_points=1, extend_edges=0, seeds=(1,),
                     budget_steps=100, budget_epochs=1.0, paper=False)
    lines: list[str] = []
    dry_run(config, lines.append, device="cpu")
    head = lines[0].splitlines()[0]
    # Per trial min(100 steps, ceil(10,000 / B)): 100 x 32 + 100 x 64 + 79 x 128 + 40 x 256 = 29,952 images.
    assert head.startswith("4 trials: 4 batch sizes x 1 LR x 1 seed, at most 29,952 training images")
    text = "\n".join(lines)
    assert "4 to 4" not in text and "1 to 1" not in text and "0.0M" not in text and "1 seeds" not in text


def test_a_gpu_preset_on_a_cpu_says_so_with_its_gpu_hours_and_a_time_in_days():
    # The full preset at 10,000 images a split: 9 batch sizes, each to min(100,000 steps, ceil(200 x 10,000 / B)),
    # 7 LRs x 3 seeds at most; the paper grid 3 seeds x (6 x 4 + 1) runs x 50 epochs x 10,000 images.
    config = study_preset("full", planned())
    most = sum(21 * min(100_000, -(-2_000_000 // b)) * b for b in config.batch_sizes) + 75 * 50 * 10_000
    lines: list[str] = []
    dry_run(config, lines.append, device="cpu")
    said = next(line for line in lines if "meant for a GPU" in line)
    assert said.startswith("--preset full is meant for a GPU, and this machine has none")
    assert f"about {most / 37_000 / 3600:,.1f} GPU-hours" in said and "one H100" in said
    # 75 img/s on 2 CPU cores: days, in days, not 4-digit hours.
    estimate = lines[0].splitlines()[1]
    days = most / 75 / 86400
    assert f"to {days:,.0f} days if every trial trains its whole budget" in estimate
    assert not any(":" in word and word.replace(":", "").isdigit() for word in estimate.split())
    # A GPU machine, or a preset sized for a CPU, says nothing of it.
    lines.clear()
    dry_run(config, lines.append, device="cuda")
    assert not any("meant for a GPU" in line for line in lines)
    lines.clear()
    dry_run(study_preset("cpu", planned()), lines.append, device="cpu")
    assert not any("meant for a GPU" in line for line in lines)
