"""Reports and plots show no impossible value as a value, say what they were run with, draw no empty frame, and keep
epoch axes on whole epochs."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.figure
import pytest

from batchscale.study.plan import describe_plan
from batchscale.study.sweep_report import report


def fake_run(folder: Path, batch: int, noise: float | None, epochs: int = 2, reached: bool = False,
             holdout: int = 0) -> None:
    folder.mkdir(parents=True)
    records = [{"epoch": e, "step": 10 * e, "val_acc": 0.2 + 0.1 * e, "noise_scale": noise} for e in range(1, epochs + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"config": {"model": "resnet18", "width": 8, "batch_size": batch, "batches_per_allreduce": 1,
                          "lr_schedule": "cosine", "lr_scaling": "linear", "train_subset": 2000,
                          "holdout": holdout},
               "global_batch": batch, "world_size": 1, "final_val_acc": 0.4, "best_val_acc": 0.4,
               "train_seconds": 5.0, "images_per_sec": 100.0, "epochs_completed": epochs, "noise_scale": noise,
               "target_accuracy": 0.3, "target": {"step": 10, "train_seconds": 2.0} if reached else None}
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def figures(monkeypatch):
    """Every figure the report saves, kept for a look at its axes."""
    saved: list = []
    real = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    return saved


def test_a_negative_noise_scale_is_not_shown_as_a_value(tmp_path, figures):
    fake_run(tmp_path / "b32", 32, -0.4)
    fake_run(tmp_path / "b64", 64, 812.0)
    text = report(tmp_path).read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in text.splitlines() if line.startswith("| b")}
    assert rows == {"b32": "-", "b64": "812.0"} and "-0.4" not in text


def test_a_two_epoch_sweep_says_mean_of_the_last_two(tmp_path, figures):
    fake_run(tmp_path / "b32", 32, None)
    assert "mean acc (last 2)" in report(tmp_path).read_text()


def test_no_empty_target_or_noise_plot_and_no_stale_one(tmp_path, figures):
    fake_run(tmp_path / "b32", 32, None)
    (tmp_path / "time_to_target.png").write_bytes(b"an earlier report's")
    text = report(tmp_path).read_text()
    assert not (tmp_path / "time_to_target.png").exists() and not (tmp_path / "noise_scale.png").exists()
    assert "time_to_target.png" not in text and "No run reached the target accuracy 0.30" in text


def test_plots_are_titled_with_the_settings_and_epochs_are_whole(tmp_path, figures):
    fake_run(tmp_path / "b32", 32, 500.0, epochs=3, reached=True)
    fake_run(tmp_path / "b64", 64, 900.0, epochs=3, reached=True)
    report(tmp_path)
    assert (tmp_path / "time_to_target.png").exists() and (tmp_path / "noise_scale.png").exists()
    for fig in figures:
        assert "resnet18 width 8, 3 epoch(s), 2000 training images" in fig._suptitle.get_text()
        for ax in fig.axes:
            if ax.get_xlabel() == "epoch":
                ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
                assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_final_and_best_markers_share_a_colour_and_both_stay_visible(tmp_path, figures):
    fake_run(tmp_path / "b32", 32, None)
    report(tmp_path)
    accuracy = next(f for f in figures if f.axes[0].get_ylabel() == "test accuracy" and f.axes[0].get_xscale() == "log")
    best, final = accuracy.axes[0].get_lines()
    assert best.get_color() == final.get_color()
    assert best.get_markersize() > final.get_markersize() and best.get_markerfacecolor() == "none"


def test_plan_without_a_target_curve_shows_no_nan():
    row = {"workers": 2, "batch_per_worker": 32, "global_batch": 64, "step_s_no_overlap": 0.1, "step_s_overlap": 0.09,
           "images_per_sec_overlap": 700.0}
    text = describe_plan({"network": {"bandwidth_gbs": 25.0, "latency_us": 5.0}, "gradient_bytes": 4e6,
                          "steps_curve": None, "rows": [row], "best": None})
    assert "nan" not in text and "No time to target" in text


def test_study_report_leaves_out_a_negative_noise_scale_and_draws_no_empty_b_simple_plot(tmp_path, figures):
    from batchscale.study.protocol import REACHED, Trial, analyze
    from batchscale.study.study_report import write_plots

    trials = [Trial(32, 0.1, 42, REACHED, 100, 95, 1000, 0.5, b_simple=-3.0, b_simple_curve=((3200.0, -3.0),)),
              Trial(64, 0.1, 42, REACHED, 60, 57, 1000, 0.5, b_simple=None)]
    analysis = analyze(trials, replicates=0)
    assert analysis.b_simple == {} and analysis.predicted is None  # not a median of impossible values
    (tmp_path / "b_simple.png").write_bytes(b"an earlier report's")
    names = [name for name, _ in write_plots(tmp_path, trials, analysis, "ResNet-18 width 8, target 45%")]
    assert "b_simple.png" not in names and not (tmp_path / "b_simple.png").exists()
    assert all("width 8, target 45%" in fig._suptitle.get_text() for fig in figures)


@pytest.mark.parametrize("holdouts,header", [((0, 0), "best test acc"), ((500, 500), "test acc at best held-out epoch"),
                                             ((0, 500), "best test acc (*: at best held-out epoch)")])
def test_the_best_column_says_which_split_picked_the_epoch(tmp_path, figures, holdouts, header):
    for batch, holdout in zip((32, 64), holdouts):
        fake_run(tmp_path / f"b{batch}", batch, None, holdout=holdout)
    lines = report(tmp_path).read_text().splitlines()
    columns = [c.strip() for c in next(line for line in lines if line.startswith("| run")).split("|")]
    assert columns[6] == header
    cells = {line.split("|")[1].strip(): line.split("|")[6].strip() for line in lines if line.startswith("| b")}
    assert cells == {f"b{b}": "0.4000" + "*" * (h > 0 and len(set(holdouts)) > 1) for b, h in zip((32, 64), holdouts)}
