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
from batchscale.study import study as study_module
from batchscale.study.study import StudyConfig, read_trial, study
from batchscale.study.protocol import REACHED, Trial
from batchscale.study.study_report import write_report
from batchscale.testing.nqm import run_study

BATCHES = (16, 32, 64)


def steps_to_target(batch: int, lr: float) -> int:
    """Fewer steps the smaller the LR: every batch's best LR is always the grid's smallest, so the study keeps
    extending below it for as long as it is allowed to."""
    return round(40 * (1 + 64 / batch) * (1 + math.log2(lr / 1e-6)))


def interior_optimum(batch: int, lr: float, seed: int = 0) -> int:
    """A best LR inside the grid that grows slower than the batch, with seed-to-seed scatter: the grids must
    follow it, and extend on either side when its centre lands off it."""
    return round(50 * (1 + 64 / batch) * (1 + math.log(lr / (1e-3 * batch**0.8)) ** 2)
                 * (1 + 0.05 * math.sin(7 * seed + 1e3 * lr)))


class Known:
    """A problem for testing/nqm.py's run_study whose trial takes the fake training's steps."""

    def __init__(self, steps) -> None:
        self.steps = steps

    def trial(self, batch: int, lr: float, seed: int, budget: int, measure_noise: bool = False) -> tuple[Trial, float]:
        return Trial(batch, lr, seed, REACHED, self.steps(batch, lr, seed)), 0.0


def tried(out: Path) -> list[tuple[int, float]]:
    return sorted((c["batch_size"] * c["batches_per_allreduce"], c["base_lr"])
                  for d in (out / "curve").iterdir() for c in [json.loads((d / "summary.json").read_text())["config"]])


def planned_by_run_study(steps, cfg: StudyConfig) -> list[tuple[int, float]]:
    trials = run_study(Known(steps), sorted(cfg.batch_sizes), list(cfg.seeds), cfg.lr_per_128 * min(cfg.batch_sizes)
                       / 128, cfg.lr_points, cfg.lr_spacing, cfg.extend_edges)
    return sorted((t.batch, t.lr) for t in trials)


def value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


class FakeTraining:
    """Stands in for `execute`: writes each pending trial's summary.json the way a trainer that reached its
    target writes it, and records what it was asked to train."""

    def __init__(self, steps=lambda batch, lr, seed: steps_to_target(batch, lr)) -> None:
        self.sent: list[list[str]] = []
        self.steps = steps

    def __call__(self, config, out, pending, progress, say) -> None:
        self.sent.append([job.name for job in pending])
        for job in pending:
            batch = int(value(job.command, "--batch-size")) * int(value(job.command, "--batches-per-allreduce"))
            lr, seed = float(value(job.command, "--base-lr")), int(value(job.command, "--seed"))
            steps = self.steps(batch, lr, seed)
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
    monkeypatch.setattr(study_module, "execute", training)
    return training


def config(out: Path, data: Path) -> StudyConfig:
    return StudyConfig(out=str(out), data=str(data), batch_sizes=BATCHES, lr_points=2, lr_spacing=2.0,
                       extend_edges=2, holdout=32, width=4, paper=False, seeds=(1,), rounds=1)  # the fixed grid


def quiet(*args, **kwargs) -> None:
    pass


def test_a_finished_study_rerun_trains_nothing_and_writes_the_same_results(tiny_cifar, tmp_path, fake):
    cfg = config(tmp_path, tiny_cifar)
    study(cfg, say=quiet)
    # Ground truth for "extend by 2": per batch its grid plus two LRs below its smallest, as run_study plans it.
    expected = planned_by_run_study(lambda batch, lr, seed: steps_to_target(batch, lr), cfg)
    assert len(expected) == 3 * (2 + 2)
    assert [b for b, _ in tried(tmp_path)] == [b for b, _ in expected]
    assert [lr for _, lr in tried(tmp_path)] == pytest.approx([lr for _, lr in expected], rel=1e-4)
    report = write_report(tmp_path, cfg)
    first = report.with_name("results.json").read_bytes()
    protocol = next(line for line in report.read_text().splitlines() if line.startswith("Protocol:"))
    assert "neighbour's best" in protocol and "micro-batches of 16" in protocol and "over 24,576 images" in protocol
    before = len(fake.sent)
    study(cfg, say=quiet)
    assert sum(len(names) for names in fake.sent[before:]) == 0  # nothing sent to train again
    assert write_report(tmp_path, cfg).with_name("results.json").read_bytes() == first


def test_the_curve_is_planned_batch_by_batch_as_run_study_plans_it(tiny_cifar, tmp_path, monkeypatch):
    training = FakeTraining(interior_optimum)
    monkeypatch.setattr(study_module, "execute", training)
    cfg = StudyConfig(out=str(tmp_path), data=str(tiny_cifar), batch_sizes=(64, 16, 32, 128), lr_points=3,
                      lr_spacing=2**0.5, extend_edges=3, holdout=32, width=4, paper=False, seeds=(1, 2),
                      rounds=1)
    study(cfg, say=quiet)
    expected = planned_by_run_study(interior_optimum, cfg)
    assert [b for b, _ in tried(tmp_path)] == [b for b, _ in expected]
    assert [lr for _, lr in tried(tmp_path)] == pytest.approx([lr for _, lr in expected], rel=1e-4)
    # Ascending batch sizes, one at a time: each stage's trials are of one batch, every LR with both seeds.
    sent = [names for names in training.sent if names]
    batches = [{int(n.split("/b")[1].split("-")[0]) for n in names} for names in sent]
    assert all(len(b) == 1 for b in batches)
    order = [b.pop() for b in batches]
    assert order == sorted(order) and set(order) == {16, 32, 64, 128}
    assert all(len(names) % 2 == 0 for names in sent)


def test_no_wait_submits_one_batch_and_a_rerun_continues(tiny_cifar, tmp_path, fake):
    waited = config(tmp_path / "waited", tiny_cifar)
    study(waited, say=quiet)
    fake.sent.clear()
    cfg = config(tmp_path / "submitted", tiny_cifar)
    cfg.executor, cfg.wait = "slurm", False  # the training is faked: no SLURM is asked
    study(cfg, say=quiet)
    assert [len(names) for names in fake.sent] == [2]  # B = 16's grid, then back to the user
    study(cfg, say=quiet)  # B = 16 is done: its first extension
    assert [len(names) for names in fake.sent] == [2, 1]
    for _ in range(10):
        study(cfg, say=quiet)
    assert tried(tmp_path / "submitted") == tried(tmp_path / "waited")  # the same trials as a study waited on


def test_a_failed_trial_stops_the_curve_at_its_batch_and_a_rerun_carries_on(tiny_cifar, tmp_path, monkeypatch):
    from batchscale.study.executors import Outcome

    healthy = FakeTraining()

    def crash_once(config, out, pending, progress, say) -> None:
        victim, *rest = pending
        healthy(config, out, rest, progress, say)
        healthy.sent[-1].insert(0, victim.name)
        progress.outcomes = {victim.name: Outcome(exit_code=1)}  # ended without a summary, as a crashed trial

    monkeypatch.setattr(study_module, "execute", crash_once)
    lines: list[str] = []
    failed = study(config(tmp_path / "s", tiny_cifar), say=lambda text, **kw: lines.append(text))
    assert len(failed) == 1 and failed[0].startswith("curve/b16-")
    assert {d.name.split("-")[0] for d in (tmp_path / "s" / "curve").iterdir()} == {"b16"}  # no larger batch ran
    assert any("B = 16 failed" in line and "rerun" in line for line in lines)
    monkeypatch.setattr(study_module, "execute", healthy)
    assert study(config(tmp_path / "s", tiny_cifar), say=quiet) == []
    study(config(tmp_path / "clean", tiny_cifar), say=quiet)
    assert tried(tmp_path / "s") == tried(tmp_path / "clean")


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
