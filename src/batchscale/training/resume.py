"""The resume rules, in one place: which checkpoint a run continues from, what a fresh start clears, which changed
flags a resume refuses (they would change what the run is) and which it applies and records (summary.json
lists them from the step they took effect).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import checkpoint
from ..config import Config, global_batch
from ..errors import ConfigError
from ..rundir import RunLock, check_space

# Change what the saved weights are, which images come next, or how the LR is scaled: refused.
MUST_MATCH = ("model", "width", "seed", "lr_scaling", "lr_schedule", "use_adasum", "holdout", "train_subset")
# What a checkpoint written before a setting existed ran with.
BEFORE_IT_EXISTED = {"train_subset": 0}
# Where outputs go and how often they are checked or kept: never part of what trained.
NOT_RECORDED = ("train_dir", "val_dir", "download", "log_dir", "checkpoint_format", "resume", "resume_from", "progress",
                "checkpoint_every_steps", "keep_checkpoints", "finite_check_every", "collective_timeout",
                "target_accuracy", "backend", "no_cuda", "tracker")


@dataclass
class Opened:
    """The checkpoint a run resumes from, as rank 0 found and checked it."""

    path: Path
    state: dict[str, Any]
    changes: list[dict[str, Any]]


def open_run(config: Config, workers: int, epoch_bound: bool, room: int,
             resources: contextlib.ExitStack) -> Opened | None:
    """Rank 0: lock the run's folders (released with `resources`), check there is `room` for checkpoints, clear
    what a fresh start replaces, find the checkpoint to resume. `epoch_bound`: the LR schedule depends on --epochs."""
    ckpt_dir = Path(config.checkpoint_path(1)).parent
    lock = RunLock([Path(config.log_dir), ckpt_dir]).acquire()
    resources.callback(lock.release)
    check_space(ckpt_dir, room, "a checkpoint of this model")
    found = checkpoint.find_and_load(config, lambda text: print(text, flush=True))
    opened = None
    if found is not None:
        path, state = found
        opened = Opened(path, state, settings_changes(state, config, workers, path, epoch_bound))
    # Nothing is removed before every check has passed.
    (Path(config.log_dir) / "summary.json").unlink(missing_ok=True)  # a run in progress has no summary
    (Path(config.log_dir) / "diverged.json").unlink(missing_ok=True)
    if not config.resume:
        removed = checkpoint.clear(config)
        for old in Path(config.log_dir).glob("events.out.tfevents.*"):
            old.unlink()
        if removed:
            print(f"--no-resume: removed {removed} checkpoint(s) of an earlier run under {ckpt_dir}", flush=True)
    return opened


def settings_in_force(current: Config, saved: dict[str, Any], finished: bool) -> dict[str, Any]:
    """The settings a resumed run records: the current ones, which train from here on; a run that was already
    finished trains nothing, so no flag changes what it ran and the saved ones stand."""
    settings = current.to_dict()
    if finished:
        settings.update({k: v for k, v in saved.items() if k not in NOT_RECORDED and k in settings})
    return settings


def settings_changes(state: dict[str, Any], config: Config, workers: int, path: Path,
                     epoch_bound: bool) -> list[dict[str, Any]]:
    """Refuses a resume that would change what the run is; returns the other changed settings, which apply
    from the resumed step on and are recorded (summary.json lists them). `epoch_bound`: the LR schedule
    depends on --epochs (`LRSchedule.depends_on_epochs`)."""
    saved, current = state["config"], config.to_dict()
    for key in MUST_MATCH:
        if saved.get(key, BEFORE_IT_EXISTED.get(key)) != current[key]:
            raise ConfigError(
                f"{path} was written with --{_flag(key)} {saved.get(key)!r}, this run has {current[key]!r}; "
                "use the same value, another --log-dir, or --no-resume"
            )
    old = (saved["batch_size"], saved["batches_per_allreduce"], state["world_size"])
    new = (config.batch_size, config.batches_per_allreduce, workers)
    if old != new:
        same = global_batch(*old) == global_batch(*new)
        raise ConfigError(
            f"{path} was trained with {_shape(*old)}, this run has {_shape(*new)}"
            + ("; the same global batch, but the peak LR and the batch-norm batches depend on how it is split"
               if same else "") + f"; launch {old[2]} worker(s) (real or --simulate-workers) with --batch-size {old[0]} "
            f"--batches-per-allreduce {old[1]}, use another --log-dir, or --no-resume"
        )
    if saved.get("epochs") != current["epochs"] and epoch_bound:
        raise ConfigError(
            f"{path} was written with --epochs {saved.get('epochs')}, this run has {current['epochs']}, and the "
            f"{current['lr_schedule']} schedule's LR depends on the epoch count; keep --epochs {saved.get('epochs')}, "
            "use --lr-schedule step (whose LR does not) from the start, another --log-dir, or --no-resume"
        )
    step = int(state["step"])
    return [
        {"step": step, "epoch": int(state["epoch"]), "setting": f"--{_flag(key)}", "from": saved.get(key), "to": value}
        for key, value in current.items()
        if key not in NOT_RECORDED and key not in MUST_MATCH and saved.get(key) != value
    ]


def _shape(batch: int, micro: int, workers: int) -> str:
    return (f"{workers} worker(s) x --batch-size {batch} x --batches-per-allreduce {micro} "
            f"(global batch {global_batch(batch, micro, workers)})")


def _flag(name: str) -> str:
    return name.replace("_", "-")
