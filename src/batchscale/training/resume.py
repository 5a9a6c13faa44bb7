"""The resume rules, in one place: which checkpoint a run continues from, what a fresh start clears, which changed
flags a resume refuses (they would change what the run is) and which it applies and records (summary.json
lists them from the step they took effect).
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import checkpoint
from ..config import Config, global_batch
from ..errors import ConfigError
from ..rundir import STOPPED, RunLock, check_space

# Change what the saved weights are, which images come next, or how the LR is scaled: refused.
MUST_MATCH = ("model", "width", "seed", "lr_scaling", "lr_schedule", "use_adasum", "holdout", "train_subset")
# What a checkpoint written before a setting existed ran with.
BEFORE_IT_EXISTED = {"train_subset": 0}
# Where outputs go and how often they are checked or kept: never part of what trained.
NOT_RECORDED = ("train_dir", "val_dir", "download", "log_dir", "checkpoint_format", "resume", "resume_from", "progress",
                "checkpoint_every_steps", "keep_checkpoints", "finite_check_every", "collective_timeout",
                "target_accuracy", "backend", "no_cuda", "tracker")


@dataclass(frozen=True)
class Resuming:
    """The part of the configuration a resume reads: the checkpoint files, and every flag of the run, as a resume
    compares each with what the checkpoint was written with."""

    files: checkpoint.Files
    settings: dict[str, Any]  # Config.to_dict(): read, never changed

    @property
    def log_dir(self) -> Path:
        return Path(self.files.log_dir)

    @classmethod
    def of(cls, config: Config) -> "Resuming":
        return cls(checkpoint.Files.of(config), config.to_dict())


@dataclass
class Opened:
    """The checkpoint a run resumes from, as rank 0 found and checked it."""

    path: Path
    state: dict[str, Any]
    changes: list[dict[str, Any]]


def open_run(config: Resuming, workers: int, epoch_bound: bool, room: int,
             resources: contextlib.ExitStack) -> Opened | None:
    """Rank 0: lock the run's folders (released with `resources`), check there is `room` for checkpoints, clear
    what a fresh start replaces, find the checkpoint to resume. `epoch_bound`: the LR schedule depends on --epochs."""
    files, log_dir = config.files, config.log_dir
    ckpt_dir = Path(files.checkpoint_path(1)).parent
    lock = RunLock([log_dir, ckpt_dir]).acquire()
    resources.callback(lock.release)
    check_space(ckpt_dir, room, "a checkpoint of this model")
    found = checkpoint.find_and_load(files, lambda text: print(text, flush=True))
    opened = None
    if found is not None:
        path, state = found
        opened = Opened(path, state, settings_changes(state, config.settings, workers, path, epoch_bound))
    # Nothing is removed before every check has passed.
    last_stop(log_dir)
    (log_dir / "summary.json").unlink(missing_ok=True)  # a run in progress has no summary
    (log_dir / "diverged.json").unlink(missing_ok=True)
    if not files.resume:
        removed = checkpoint.clear(files)
        for old in log_dir.glob("events.out.tfevents.*"):
            old.unlink()
        if removed:
            print(f"--no-resume: removed {removed} checkpoint(s) of an earlier run under {ckpt_dir}", flush=True)
    return opened


def last_stop(log_dir: Path) -> None:
    """Says how the last run in `log_dir` was stopped, which its launcher may have kept from the user (horovodrun,
    ended by SIGUSR1, takes the ranks' output with it), and forgets it: each stop is said once more, here."""
    path = log_dir / STOPPED
    if not path.is_file():
        return
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        print(f"note: the last run in {log_dir} was {json.loads(path.read_text())['message']}", flush=True)
    with contextlib.suppress(OSError):
        path.unlink()


def settings_in_force(current: dict[str, Any], saved: dict[str, Any], finished: bool) -> dict[str, Any]:
    """The settings a resumed run records: the `current` ones (Config.to_dict()), which train from here on; a run
    that was already finished trains nothing, so no flag changes what it ran and the saved ones stand."""
    settings = copy.deepcopy(current)  # the record is the run's own, not a view of the configuration
    if finished:
        settings.update({k: v for k, v in saved.items() if k not in NOT_RECORDED and k in settings})
    return settings


def settings_changes(state: dict[str, Any], current: dict[str, Any], workers: int, path: Path,
                     epoch_bound: bool) -> list[dict[str, Any]]:
    """Refuses a resume that would change what the run is; returns the other changed settings (of `current`, the
    run's Config.to_dict()), which apply from the resumed step on and are recorded (summary.json lists them).
    `epoch_bound`: the LR schedule depends on --epochs (`LRSchedule.depends_on_epochs`)."""
    saved = state["config"]
    for key in MUST_MATCH:
        if saved.get(key, BEFORE_IT_EXISTED.get(key)) != current[key]:
            raise ConfigError(
                f"{path} was written with --{_flag(key)} {saved.get(key)!r}, this run has {current[key]!r}; "
                "use the same value, another --log-dir, or --no-resume"
            )
    old = (saved["batch_size"], saved["batches_per_allreduce"], state["world_size"])
    new = (current["batch_size"], current["batches_per_allreduce"], workers)
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
