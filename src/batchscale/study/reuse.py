"""Whether a study folder's finished runs may be reused by this command: only where each is the run this command
would start, in everything that defines its result. A rerun with another --target, budget or subset over a
finished study would otherwise report its trials (reached, missed, steps to target) under the new label, trained
nothing, and said nothing. A mismatch is refused in one line naming the flag, the two values and what to do.

Two checks: the study's own record (study.json), which names the study's flags and catches trials still
running or stopped, and each finished run's recorded training config against the one this command plans for it
(the ground truth, also for a folder whose study.json is missing or was written by another version)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..flags import shown
from .planned import Planned
from .runs import damaged, read_json, trial_record

# Training settings that do not change what a run measures: where it writes, what it keeps, how it is watched,
# how fast it goes. Every other recorded setting must be what this command would run the trial with.
NOT_DEFINING = frozenset({
    "log_dir", "checkpoint_format", "resume", "resume_from", "progress", "checkpoint_every_steps", "keep_checkpoints",
    "tracker", "download", "finite_check_every", "collective_timeout", "backend", "compile", "compile_mode",
    "deterministic", "no_cuda", "val_batch_size",
})

# The study flags that define a curve trial's result (the rest choose which trials run, or where): study.json's
# field -> the flag. "micro" is the micro-batch in effect (--micro-batch 0 is the smallest batch size).
STUDY_DEFINES = {"target": "--target", "budget_steps": "--budget-steps", "budget_epochs": "--budget-epochs",
                 "train_subset": "--train-subset", "holdout": "--holdout", "width": "--width",
                 "warmup_images": "--warmup-images", "schedule": "--schedule", "micro": "--micro-batch",
                 "eval_growth": "--eval-growth"}

# A training setting of a run -> the study flag that sets it (where a setting is the same for the study's runs).
SET_BY = {"train_dir": "--data", "val_dir": "--data", "width": "--width", "holdout": "--holdout",
          "target_accuracy": "--target", "train_subset": "--train-subset",
          "max_steps": "--budget-steps or --budget-epochs", "warmup_steps": "--warmup-images",
          "lr_schedule": "--schedule", "batch_size": "--micro-batch", "batches_per_allreduce": "--micro-batch",
          "eval_growth": "--eval-growth", "seed": "--seeds"}
PAPER_SET_BY = {"epochs": "--paper-epochs", "lr_decay_epochs": "--paper-epochs", "warmup_epochs": "--paper-epochs",
                "lr_schedule": "--paper-epochs", "batch_size": "the paper's grid"}


def normal(value: Any) -> Any:
    """A value as JSON reads it back (tuples as lists), so a recorded setting and a planned one compare alike."""
    return json.loads(json.dumps(value))


def recorded_study(saved: dict[str, Any]) -> dict[str, Any]:
    """study.json's result-defining fields, the micro-batch in effect among them; fields an older study did not
    record are left out."""
    values = {k: saved[k] for k in STUDY_DEFINES if k in saved}
    if "micro_batch" in saved and saved.get("batch_sizes"):
        values["micro"] = saved["micro_batch"] or min(saved["batch_sizes"])
    return values


def check_study(out: Path, current: dict[str, Any]) -> None:
    """Refuses a command whose result-defining study flags differ from those study.json records, once the folder
    holds any trial (finished, running or stopped: one would resume under the new settings)."""
    path = out / "study.json"
    if not path.is_file() or not any((out / "curve").glob("b*-lr*-s*")):
        return
    before = recorded_study(read_json(path))
    now = recorded_study(current)
    changed = [k for k in STUDY_DEFINES if k in before and k in now and normal(before[k]) != normal(now[k])]
    if not changed:
        return
    given = " ".join(f"{STUDY_DEFINES[k]} {shown(now[k])}" for k in changed)
    old = " ".join(f"{STUDY_DEFINES[k]} {shown(before[k])}" for k in changed)
    raise ConfigError(f"{given}: the study in {out} ran its trials with {old}, and reusing them would report them "
                      f"as run with yours; give {old} to go on with that study, or a new --out for this one")


def planned_settings(args: tuple[str, ...]) -> dict[str, Any]:
    """The training config `batchscale train ARGS` runs with, as summary.json records it."""
    from ..command import train_config  # the trainer's own parser: what the run would be given, read as it reads it

    return normal(train_config([*args, "--log-dir", "unused"]).to_dict())


def differences(planned: Planned, run_dir: Path) -> list[tuple[str, Any, Any]]:
    """(setting, as recorded, as this command plans it) for every result-defining training setting in which the
    finished run in `run_dir` differs from `planned`; empty where it matches or has no sound record."""
    if damaged(run_dir) is not None:
        return []  # run again anyway (study.run_stage)
    record = trial_record(run_dir)
    if record is None:
        return []
    saved = record[0].get("config") or {}
    wanted = planned_settings(planned.args)
    return [(k, saved[k], v) for k, v in wanted.items()
            if k in saved and k not in NOT_DEFINING and normal(saved[k]) != v]


def check_runs(out: Path, planned: list[Planned]) -> None:
    """Refuses to reuse a finished run of `planned` that ran with other result-defining settings than planned."""
    for p in planned:
        diffs = differences(p, out / p.name)
        if not diffs:
            continue
        table = PAPER_SET_BY if p.name.startswith("paper/") else {}
        said = "; ".join(f"--{k.replace('_', '-')} {shown(old)} where this command gives {shown(new)} "
                         f"({table.get(k) or SET_BY.get(k) or 'a training flag after --'})" for k, old, new in diffs)
        raise ConfigError(f"{out / p.name} ran with {said}: reusing it would report its result as run with these "
                          "settings; give the settings that study ran with to go on with it, or a new --out")
