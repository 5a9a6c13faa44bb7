"""The sweep report of a smoke run says what the runs can tell: a target they could reach (or that none fits), an
accuracy axis that does not turn a point into a cliff, one-epoch curves as points, the LR that was applied, and
that throughput depends on the machine."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.figure
import pytest

from batchscale.config import Config
from batchscale.schedule import LRSchedule
from batchscale.study.sweep_report import MIN_ACCURACY_SPAN, report

STEPS = 63  # steps per epoch of the fake runs


def fake_run(folder: Path, batch: int, accs: list[float], lrs: list[float] | None = None, seed: int = 42,
             **config: object) -> None:
    """A finished run as training writes it: one metrics.jsonl record per epoch, and its summary."""
    folder.mkdir(parents=True)
    lrs = lrs or [0.1] * len(accs)
    records = [{"epoch": e, "step": STEPS * e, "lr": lr, "val_acc": a, "train_seconds": 10.0 * e}
               for e, (a, lr) in enumerate(zip(accs, lrs), 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    settings = {"model": "resnet18", "width": 8, "batch_size": batch, "batches_per_allreduce": 1, "base_lr": 0.1,
                "lr_schedule": "cosine", "lr_scaling": "linear", "warmup_epochs": 5.0, "warmup_steps": 0,
                "warmup_start_lr": None, "use_adasum": False, "holdout": 0, "train_subset": 2000, "seed": seed,
                "epochs": len(accs), **config}
    summary = {"config": settings, "global_batch": batch, "world_size": 1, "final_val_acc": accs[-1],
               "best_val_acc": max(accs), "train_seconds": 10.0 * len(accs), "images_per_sec": 150.0,
               "epochs_completed": len(accs), "noise_scale": None, "target_accuracy": 0.94, "target": None}
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def figures(monkeypatch):
    saved: dict[str, matplotlib.figure.Figure] = {}
    real = matplotlib.figure.Figure.savefig

    def keep(fig, path, *args, **kwargs):
        saved[Path(path).name] = fig
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    return saved


def table_header(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("| run |"))


def test_a_one_epoch_smoke_sweep_gets_no_unreachable_target_and_says_why(tmp_path, figures):
    fake_run(tmp_path / "b32", 32, [0.213])
    fake_run(tmp_path / "b64", 64, [0.206])
    text = report(tmp_path).read_text()
    assert "steps to target" not in table_header(text)  # not a column of "-" in every row
    assert "No run reached the target accuracy 0.94" in text and "no other target fits" in text
    assert "at its first evaluation" in text and not (tmp_path / "time_to_target.png").exists()


def test_a_target_is_chosen_from_what_every_run_reached(tmp_path, figures):
    fake_run(tmp_path / "b32", 32, [0.25, 0.34, 0.36])
    fake_run(tmp_path / "b64", 64, [0.22, 0.28, 0.33])
    text = report(tmp_path).read_text()
    assert "target accuracy 0.33, chosen from what the runs reached" in text
    assert "steps to target" in table_header(text)
    steps = {line.split("|")[1].strip(): line.split("|")[10].strip() for line in text.splitlines()
             if line.startswith("| b")}
    assert steps == {"b32": str(2 * STEPS), "b64": str(3 * STEPS)}  # the first epochs at 0.33 or more: 2 and 3
    assert (tmp_path / "time_to_target.png").exists()


def test_the_accuracy_axes_span_at_least_five_points_and_hold_every_value(tmp_path, figures):
    fake_run(tmp_path / "b32", 32, [0.213])
    fake_run(tmp_path / "b64", 64, [0.206])
    report(tmp_path)
    for name in ("accuracy_vs_batch.png", "accuracy_curves.png"):
        low, high = figures[name].axes[0].get_ylim()
        assert high - low >= MIN_ACCURACY_SPAN - 1e-9 and low <= 0.206 and 0.213 <= high, (name, low, high)


def test_one_seed_is_said_and_several_are_drawn(tmp_path, figures):
    fake_run(tmp_path / "b32", 32, [0.213])
    fake_run(tmp_path / "b64", 64, [0.206])
    assert "seed-to-seed scatter is not measured" in report(tmp_path).read_text()
    fake_run(tmp_path / "b32-s2", 32, [0.223], seed=2)
    fake_run(tmp_path / "b64-s2", 64, [0.200], seed=2)
    figures.clear()
    text = report(tmp_path).read_text()
    ax = figures["accuracy_vs_batch.png"].axes[0]
    dots = [line for line in ax.get_lines() if line.get_linestyle() == "None" and len(line.get_xdata()) == 4]
    assert dots and sorted(dots[0].get_ydata()) == pytest.approx([0.2, 0.206, 0.213, 0.223])
    mean_line = next(line for line in ax.get_lines() if "final" in line.get_label() and "mean" in line.get_label())
    assert list(mean_line.get_ydata()) == pytest.approx([(0.213 + 0.223) / 2, (0.206 + 0.200) / 2])
    assert "dots: each run" in text


def test_a_one_epoch_curve_is_a_point_and_the_caption_says_so(tmp_path, figures):
    fake_run(tmp_path / "b32", 32, [0.213])
    fake_run(tmp_path / "b64", 64, [0.206, 0.25])
    text = report(tmp_path).read_text()
    lines = {line.get_label(): line for line in figures["accuracy_curves.png"].axes[0].get_lines()}
    assert lines["b32"].get_linestyle() == "None" and lines["b32"].get_marker() == "o"
    assert lines["b64"].get_linestyle() != "None"
    assert "1 run(s) of one epoch: one evaluation each, drawn as a point" in text


def test_titles_name_the_lr_that_was_applied_not_the_schedule_named(tmp_path, figures):
    # The smoke sweep's runs: cosine named, but the 5-epoch warmup outlasts the 1-epoch run, and one worker's warmup
    # ramps from 0.1 to 0.1. The trainer's own schedule, step by step, is the ground truth.
    schedule = LRSchedule.from_config(Config(epochs=1, warmup_epochs=5.0, lr_schedule="cosine"), 1, STEPS, 1)
    assert {round(schedule(step), 9) for step in range(STEPS)} == {0.1}
    fake_run(tmp_path / "b32", 32, [0.213])
    fake_run(tmp_path / "b64", 64, [0.206])
    text = report(tmp_path).read_text()
    assert all("constant LR 0.1" in fig._suptitle.get_text() and "cosine" not in fig._suptitle.get_text()
               for fig in figures.values())
    assert "constant LR 0.1" in text


def test_titles_say_a_decay_that_did_happen(tmp_path, figures):
    schedule = LRSchedule.from_config(Config(epochs=2, warmup_epochs=0.0, lr_schedule="cosine"), 1, STEPS, 1)
    lrs = [schedule(STEPS - 1), schedule(2 * STEPS - 1)]
    fake_run(tmp_path / "b32", 32, [0.2, 0.3], lrs=lrs, warmup_epochs=0.0)
    fake_run(tmp_path / "b64", 64, [0.2, 0.3], lrs=lrs, warmup_epochs=0.0)
    report(tmp_path)
    title = figures["accuracy_curves.png"]._suptitle.get_text()
    assert "LR 0.1 to 0 (cosine)" in title and "constant" not in title


def test_throughput_is_said_to_depend_on_the_machine_and_its_load(tmp_path, figures):
    fake_run(tmp_path / "b32", 32, [0.213])
    fake_run(tmp_path / "b64", 64, [0.206])
    text = report(tmp_path).read_text()
    assert "images/s and seconds are wall-clock on the machine" in text and "load" in text
    caption = next(line for line in text.splitlines() if "throughput_vs_batch.png" in line)
    assert "load" in caption
