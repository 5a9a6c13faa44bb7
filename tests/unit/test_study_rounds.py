"""The sequential study (issue 28) as `batchscale study` runs it, with each trial's training stood in for by the
noisy quadratic (testing/nqm.py): steps to target with seed noise and a known knee, written as the trainer writes
its summary, while a spy records what was sent to train. The study must plan exactly what nqm.sequential_study
plans with the same planner, and a kill between rounds or in the middle of a trial, then a rerun, must end in
the same rounds, trials and answer as an unbroken run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launch import cli, one_line

from batchscale.study import study as study_module
from batchscale.study.sequential import Settings
from batchscale.study.study import StudyConfig, read_rounds, study
from batchscale.study.study_report import write_report
from batchscale.testing.nqm import NoisyQuadratic, sequential_study

PROBLEM = NoisyQuadratic(eval_noise=0.02)
BATCHES = (8, 16, 32, 64, 128, 256)  # the knee (about 140) near the top: later rounds must go past it


def value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


class Killed(Exception):
    """Stands in for a kill: the study process ends where it is raised."""


class NqmTraining:
    """Stands in for `execute`: each pending trial is a run of the noisy quadratic at its batch, LR, seed and step
    budget, its outcome written as the trainer writes it (summary.json, or diverged.json). `kill_at(label,
    after)` makes the call for that stage run `after` trials, leave the next one half done (a folder with no
    record, as a killed training leaves it) and raise."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []
        self.kill: tuple[str, int] | None = None

    def __call__(self, config, out, pending, progress, say) -> None:
        self.sent.append([job.name for job in pending])
        for i, job in enumerate(pending):
            if self.kill and progress.label == self.kill[0] and i == self.kill[1]:
                self.kill = None
                job.run_dir.mkdir(parents=True, exist_ok=True)
                (job.run_dir / "metrics.jsonl").write_text('{"images": 64}\n')
                raise Killed(job.name)
            self.write(job)

    @staticmethod
    def write(job) -> None:
        micro, accumulate = int(value(job.command, "--batch-size")), int(value(job.command, "--batches-per-allreduce"))
        lr, seed, budget = float(value(job.command, "--base-lr")), int(value(job.command, "--seed")), int(
            value(job.command, "--max-steps"))
        trial, _ = PROBLEM.trial(micro * accumulate, lr, seed, budget, measure_noise=False)
        config = {"batch_size": micro, "batches_per_allreduce": accumulate, "base_lr": lr, "seed": seed}
        job.run_dir.mkdir(parents=True, exist_ok=True)
        if trial.status == "diverged":
            (job.run_dir / "diverged.json").write_text(json.dumps({"config": config, "trial": {"evals": []}}))
            return
        hit = {"step": trial.steps, "previous_eval": trial.previous_eval, "train_seconds": 1.0} if trial.steps else None
        (job.run_dir / "summary.json").write_text(json.dumps({"config": config, "trial": {
            "ended": "target" if hit else "budget", "reached": hit, "max_steps": budget, "best_acc": trial.best_acc,
            "evals": []}}))


def config(out: Path, data: Path, **changes) -> StudyConfig:
    cfg = StudyConfig(out=str(out), data=str(data), batch_sizes=BATCHES, micro_batch=8, lr_points=3,
                      lr_spacing=2**0.5, extend_edges=3, lr_per_128=0.05 * 128 / 8, seeds=(1, 2), holdout=32, width=4,
                      paper=False, budget_steps=5000, budget_epochs=1e6, **changes)
    cfg._images = 10**6  # the quadratic's data set is as large as it needs: B is limited by the budget, not it
    return cfg


@pytest.fixture
def nqm(monkeypatch) -> NqmTraining:
    training = NqmTraining()
    monkeypatch.setattr(study_module, "execute", training)
    return training


def quiet(*args, **kwargs) -> None:
    pass


def tried(out: Path) -> list[tuple[int, float, int]]:
    found = []
    for d in sorted((out / "curve").iterdir()):
        record = d / ("diverged.json" if (d / "diverged.json").is_file() else "summary.json")
        if record.is_file():
            c = json.loads(record.read_text())["config"]
            found.append((c["batch_size"] * c["batches_per_allreduce"], c["base_lr"], c["seed"]))
    return sorted(found)


def test_the_study_plans_its_rounds_as_the_known_answer_check_plans_them(tiny_cifar, tmp_path, nqm):
    lines: list[str] = []
    cfg = config(tmp_path, tiny_cifar)
    study(cfg, say=lambda text, **kw: lines.append(text))
    trials, plans = sequential_study(PROBLEM, list(BATCHES), 0.05, Settings(
        seeds=(1, 2), lr_points=3, lr_spacing=2**0.5, extend_edges=3, precision=1.5, rounds=10, smallest=8,
        largest=10**6, multiple=8, budget_steps=5000, budget_epoch_images=1e12))
    expected = sorted((t.batch, t.lr, t.seed) for t in trials)
    got = tried(tmp_path)
    assert [(b, s) for b, _, s in got] == [(b, s) for b, _, s in expected]
    assert [lr for _, lr, _ in got] == pytest.approx([lr for _, lr, _ in expected], rel=1e-4)
    assert max(b for b, _, _ in got) > max(BATCHES)  # it went past the coarse range, as the rule says it must
    rounds = read_rounds(tmp_path)
    assert [r["round"] for r in rounds] == list(range(1, len(plans) + 1))  # round 1, then each plan that ran
    assert all(a["reason"] for r in rounds[1:] for a in r["trials"])
    assert plans[-1].decided and any(line.startswith("curve: decided") for line in lines)
    report = write_report(tmp_path, cfg).read_text()
    top = next(line for line in report.splitlines() if line.startswith("**B_crit ="))
    assert f"after {len(trials)} trials" in top and "decided at x1.5" in top


def test_a_finished_study_rerun_trains_nothing(tiny_cifar, tmp_path, nqm):
    cfg = config(tmp_path, tiny_cifar)
    study(cfg, say=quiet)
    first = (tmp_path / "rounds.jsonl").read_bytes()
    results = write_report(tmp_path, cfg).with_name("results.json").read_bytes()
    before = len(nqm.sent)
    study(config(tmp_path, tiny_cifar), say=quiet)
    assert sum(len(names) for names in nqm.sent[before:]) == 0
    assert (tmp_path / "rounds.jsonl").read_bytes() == first
    assert write_report(tmp_path, cfg).with_name("results.json").read_bytes() == results


def test_a_study_killed_between_rounds_and_in_a_trial_ends_as_an_unbroken_one(tiny_cifar, tmp_path, nqm,
                                                                              monkeypatch):
    study(config(tmp_path / "whole", tiny_cifar), say=quiet)
    whole = read_rounds(tmp_path / "whole")
    assert len(whole) >= 3  # rounds 2 and 3 exist to be killed in
    broken = tmp_path / "broken"

    # Killed once round 2's trials had all finished, before round 3 was planned.
    real = study_module.plan_round

    def plan_then_die(trials, settings, number):
        if number == 3 and not (broken / "killed-once").exists():
            (broken / "killed-once").write_text("")
            raise Killed("between rounds 2 and 3")
        return real(trials, settings, number)

    monkeypatch.setattr(study_module, "plan_round", plan_then_die)
    with pytest.raises(Killed):
        study(config(broken, tiny_cifar), say=quiet)
    assert [r["round"] for r in read_rounds(broken)] == [1, 2]
    # Killed again in the middle of round 3's second trial, after its plan was written.
    nqm.kill = ("round 3", 1)
    with pytest.raises(Killed):
        study(config(broken, tiny_cifar), say=quiet)
    assert [r["round"] for r in read_rounds(broken)] == [1, 2, 3]
    before = len(nqm.sent)
    study(config(broken, tiny_cifar), say=quiet)
    resumed = [n for names in nqm.sent[before:] for n in names]
    assert resumed and resumed[0] == nqm.sent[before - 1][1]  # the half-done trial is run again first
    (broken / "killed-once").unlink()
    assert (broken / "rounds.jsonl").read_bytes() == (tmp_path / "whole" / "rounds.jsonl").read_bytes()
    assert tried(broken) == tried(tmp_path / "whole")
    answer = [json.loads(write_report(d, config(d, tiny_cifar)).with_name("results.json").read_text())["fit"]
              for d in (broken, tmp_path / "whole")]
    assert answer[0] == answer[1]


def test_rounds_1_is_the_fixed_grid(tiny_cifar, tmp_path, nqm):
    from batchscale.testing.nqm import run_study

    study(config(tmp_path, tiny_cifar, rounds=1), say=quiet)
    assert [r["round"] for r in read_rounds(tmp_path)] == [1]
    expected = sorted((t.batch, t.lr, t.seed) for t in run_study(PROBLEM, list(BATCHES), [1, 2], 0.05, 3, 2**0.5, 3,
                                                                  5000))
    assert [(b, s) for b, _, s in tried(tmp_path)] == [(b, s) for b, _, s in expected]
    assert [lr for _, lr, _ in tried(tmp_path)] == pytest.approx([lr for _, lr, _ in expected], rel=1e-4)
    report = write_report(tmp_path, config(tmp_path, tiny_cifar, rounds=1)).read_text()
    assert "--rounds 1" in next(line for line in report.splitlines() if line.startswith("**B_crit ="))


def test_a_budget_in_images_stops_the_rounds_and_says_what_more_would_take(tiny_cifar, tmp_path, nqm):
    lines: list[str] = []
    coarse = config(tmp_path / "coarse", tiny_cifar, rounds=1)
    study(coarse, say=quiet)
    images = 0  # what the coarse round trained: each trial to its target, or its whole step budget
    for d in (tmp_path / "coarse" / "curve").iterdir():
        if (d / "summary.json").is_file():
            trial = json.loads((d / "summary.json").read_text())["trial"]
            images += int(d.name.split("-")[0][1:]) * (trial["reached"]["step"] if trial["reached"] else
                                                         trial["max_steps"])
    study(config(tmp_path / "capped", tiny_cifar, budget=f"{images + 1000:.0f}"), say=lambda t, **kw: lines.append(t))
    said = next(line for line in lines if line.startswith("curve: not decided"))
    assert "spent" in said and "more trials" in said and "would reach x1.5" in said


@pytest.mark.parametrize("flags, message", [
    (["--precision", "0"], "--precision"), (["--precision", "-2"], "--precision"), (["--precision", "1"], "--precision"),
    (["--rounds", "0"], "--rounds"), (["--rounds", "-1"], "--rounds"),
    (["--budget", "0"], "--budget"), (["--budget=-5M"], "--budget"), (["--budget", "0m"], "--budget"),
    (["--budget", "ninety"], "--budget"),
])
def test_nonsense_precision_rounds_and_budget_are_refused_in_one_line(tmp_path, capsys, flags, message):
    code, err = cli("study", "--out", str(tmp_path / "s"), "--data", str(tmp_path), *flags, capsys=capsys)
    assert code == 2 and message in one_line(err)
    assert not (tmp_path / "s").exists()


def test_a_budget_below_one_trial_is_refused_in_one_line(tiny_cifar, tmp_path, capsys):
    code, err = cli("study", "--out", str(tmp_path / "s"), "--data", str(tiny_cifar), "--holdout", "32",
                    "--batch-sizes", "16,32", "--budget", "100", capsys=capsys)
    assert code == 2 and "--budget 100 is less than one trial" in one_line(err)
    assert not (tmp_path / "s").exists()
