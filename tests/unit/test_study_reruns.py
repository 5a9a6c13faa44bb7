"""A study's reruns change nothing, and no trial is lost: the study driven with a stand-in for training that
writes each trial's summary as the trainer would (steps to target a known function of the LR), while a spy
records which trials were sent to train."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from launch import cli, one_line

from batchscale.errors import ConfigError
from batchscale.study import critical
from batchscale.study.critical import StudyConfig, read_trial, study
from batchscale.study.protocol import lr_grid
from batchscale.study.study_report import write_report

BATCHES = (16, 32, 64)


def steps_to_target(batch: int, lr: float) -> int:
    """Fewer steps the smaller the LR: every batch's best LR is always the grid's smallest, so the study keeps
    extending below it for as long as it is allowed to."""
    return round(40 * (1 + 64 / batch) * (1 + math.log2(lr / 1e-6)))


def value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


class FakeTraining:
    """Stands in for `execute`: writes each pending trial's summary.json the way a trainer that reached its
    target writes it, and records what it was asked to train."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    def __call__(self, config, out, pending, progress, say) -> None:
        self.sent.append([job.name for job in pending])
        for job in pending:
            batch = int(value(job.command, "--batch-size")) * int(value(job.command, "--batches-per-allreduce"))
            lr, seed = float(value(job.command, "--base-lr")), int(value(job.command, "--seed"))
            steps = steps_to_target(batch, lr)
            job.run_dir.mkdir(parents=True, exist_ok=True)
            evals = [{"step": steps, "acc": 0.5, "full": True, "examples": steps * batch, "b_simple": None}]
            (job.run_dir / "summary.json").write_text(json.dumps({
                "config": {"batch_size": int(value(job.command, "--batch-size")),
                           "batches_per_allreduce": int(value(job.command, "--batches-per-allreduce")),
                           "base_lr": lr, "seed": seed},
                "trial": {"ended": "target", "reached": {"step": steps, "previous_eval": steps - 1,
                                                         "train_seconds": 1.0},
                          "max_steps": int(value(job.command, "--max-steps")), "best_acc": 0.5, "evals": evals}}))


@pytest.fixture
def fake(monkeypatch) -> FakeTraining:
    training = FakeTraining()
    monkeypatch.setattr(critical, "execute", training)
    return training


def config(out: Path, data: Path) -> StudyConfig:
    return StudyConfig(out=str(out), data=str(data), batch_sizes=BATCHES, lr_points=2, lr_spacing=2.0,
                       extend_edges=2, holdout=32, width=4, paper=False, seeds=(1,))


def quiet(*args, **kwargs) -> None:
    pass


def test_a_finished_study_rerun_trains_nothing_and_writes_the_same_results(tiny_cifar, tmp_path, fake):
    cfg = config(tmp_path, tiny_cifar)
    study(cfg, say=quiet)
    # Ground truth for "extend by 2": exactly the base grid plus two LRs below its smallest, per batch.
    for batch in BATCHES:
        grid = lr_grid(0.1 * batch / 128, 2, 2.0)
        expected = sorted([grid[0] / 4, grid[0] / 2, *grid])
        tried = sorted(json.loads((d / "summary.json").read_text())["config"]["base_lr"]
                       for d in (tmp_path / "curve").glob(f"b{batch}-lr*"))
        assert tried == pytest.approx(expected, rel=1e-5)
    first = write_report(tmp_path, cfg).with_name("results.json").read_bytes()
    before = len(fake.sent)
    study(cfg, say=quiet)
    assert sum(len(names) for names in fake.sent[before:]) == 0  # nothing sent to train again
    assert write_report(tmp_path, cfg).with_name("results.json").read_bytes() == first


def test_a_damaged_trial_summary_is_named_and_run_again(tiny_cifar, tmp_path, fake):
    cfg = config(tmp_path, tiny_cifar)
    study(cfg, say=quiet)
    first = write_report(tmp_path, cfg).with_name("results.json").read_bytes()
    victim = sorted((tmp_path / "curve").iterdir())[0]
    (victim / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match=f"{victim.name}.*no config"):
        write_report(tmp_path, cfg)  # the report names it rather than leave it out
    lines: list[str] = []
    before = len(fake.sent)
    study(cfg, say=lambda text, **kw: lines.append(text))
    assert [n for names in fake.sent[before:] for n in names] == [f"curve/{victim.name}"]
    assert any(victim.name in line and "running it again" in line for line in lines)
    assert write_report(tmp_path, cfg).with_name("results.json").read_bytes() == first


def test_a_trial_without_evaluations_is_still_a_trial(tiny_cifar, tmp_path, fake):
    study(config(tmp_path, tiny_cifar), say=quiet)
    folder = sorted((tmp_path / "curve").iterdir())[0]
    saved = json.loads((folder / "summary.json").read_text())
    saved["trial"]["evals"] = None
    (folder / "summary.json").write_text(json.dumps(saved))
    trial = read_trial(folder)
    assert trial is not None and trial.steps == saved["trial"]["reached"]["step"] and trial.b_simple_curve == ()


@pytest.mark.parametrize("flags", [["--slots", "0"], ["--slots", "-1"], ["--cpus-per-run", "0"],
                                   ["--extend-edges", "-1"], ["--seeds", "-3"]])
def test_execution_flags_are_checked_before_anything_runs(tmp_path, capsys, flags):
    code, err = cli("study", "--out", str(tmp_path / "s"), "--data", str(tmp_path), *flags, capsys=capsys)
    assert code == 2 and flags[0] in one_line(err)
    assert not (tmp_path / "s").exists()


def test_a_trial_without_a_result_is_named_in_the_report(tiny_cifar, tmp_path, fake):
    cfg = config(tmp_path, tiny_cifar)
    study(cfg, say=quiet)
    stopped = sorted((tmp_path / "curve").iterdir())[-1]
    (stopped / "summary.json").unlink()  # as a trial stopped by a signal leaves its folder
    report = write_report(tmp_path, cfg)
    assert json.loads(report.with_name("results.json").read_text())["unfinished"] == [stopped.name]
    assert stopped.name in report.read_text()
