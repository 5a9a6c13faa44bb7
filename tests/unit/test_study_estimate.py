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
    assert line.startswith("expected at most 0:10:15 to 0:15:23 on 2 CPU cores")
    assert "650 img/s, from benchmarks/results/cpu-bench-b128-w16.json" in line and "micro-batch" not in line
    # Stopping as early as the committed CPU study's trials did, at 18.4% of their budgets' images: 73,671 and
    # 110,506 images, 113.3 s and 170.0 s.
    assert line.endswith("about 0:01:53 to 0:02:50 if trials stop as early as in benchmarks/results/cpu-study (18% "
                         "of their budgets' images)")


def test_the_paper_grid_counts_and_another_micro_batch_is_named():
    # The same curve at micro-batch 64 (still the width-16 figure at 128, named), with the paper grid at most: one
    # seed x (6 batches x (the paper's LR + 3 tuned) + the control) = 25 runs x 1 epoch x 10,000 images = 250,000
    # more. 650,384 / 650 = 1000.6 s, 850,576 / 650 = 1308.6 s.
    config = planned(width=16, batch_sizes=(128, 256), lr_points=2, extend_edges=1, seeds=(1,), budget_steps=1000,
                     budget_epochs=10.0, micro_batch=64, paper_epochs=1)
    line = first_lines(config, "cpu")[1]
    assert line.startswith("expected at most 0:16:40 to 0:21:48 on 2 CPU cores")
    assert "measured at micro-batch 128, this study's is 64" in line


def test_no_figure_for_the_width_or_micro_batch_is_said_not_invented():
    line = first_lines(planned(width=12, batch_sizes=(128,)), "cpu")[1]
    assert line.startswith("expected time: no committed throughput figure for width 12 at micro-batch 128 on cpu")
    # The GPU preset's micro-batch 64 was never timed on a GPU (only 512 was): no estimate there, unlike on a CPU.
    gpu = study_preset("gpu", planned())
    assert first_lines(gpu, "cuda")[1].startswith("expected time: no committed throughput figure for width 64 at "
                                                  "micro-batch 64 on cuda")
    assert "from benchmarks/results/cpu-bench-b64.json" in first_lines(gpu, "cpu")[1]
