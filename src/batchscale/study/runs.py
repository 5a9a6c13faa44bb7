"""Run folders on disk, read and checked: the one reader of what a training leaves in its --log-dir
(summary.json, diverged.json, metrics.jsonl, its lock), and of a sweep folder's finished runs. Sweep, study,
their reports and the plan all ask it where a run stands and what it recorded, so a rule such as "a summary
that records no ending is not a finished trial" is written once.

Why here and not in rundir.py: every reader of these records is in the study package, while the training
core only writes them (metrics.py) and clears them for a fresh start (training/resume.py).
rundir.py keeps what a training needs of its own folder (the lock, the checks before writing) and so stays
free of the readers' rules, which the trainer never needs."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..rundir import LOCK_NAME

SUMMARY, DIVERGED, METRICS = "summary.json", "diverged.json", "metrics.jsonl"  # what a training writes
ENDINGS = ("target", "budget", "epochs")  # how a finished trial or paper run ended (target.TargetWatch)


def positive(value: float | None, digits: int = 4) -> str:
    """A measure that only exists when positive and finite (a noise scale, a time): anything else is shown as "-",
    never as a value (an early B_simple estimate can come out negative; a missing time is nan)."""
    if value is None or not math.isfinite(value) or value <= 0:
        return "-"
    return f"{value:.{digits}f}"


def pyplot() -> Any:
    """matplotlib's pyplot, drawing to files; an optional extra, so its absence is one line saying what to install."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the report's plots need matplotlib: pip install 'batchscale[plots]' (or pip install "
                          "matplotlib), then rerun batchscale report") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class RunResult:
    name: str
    summary: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def global_batch(self) -> int:
        return int(self.summary["global_batch"])

    @property
    def workers(self) -> int:
        return int(self.summary["world_size"])

    @property
    def target(self) -> dict[str, Any] | None:
        return self.summary.get("target")

    @property
    def mean_last(self) -> float:
        """Mean test accuracy over the last MEAN_LAST epochs (or all, if fewer): less noisy than the final one."""
        return statistics.fmean(r["val_acc"] for r in self.records[-MEAN_LAST:])


MEAN_LAST = 5
SUMMARY_KEYS = ("config", "global_batch", "world_size", "final_val_acc", "best_val_acc", "train_seconds",
                "images_per_sec", "epochs_completed")


def unreadable(path: Path, why: str) -> ConfigError:
    return ConfigError(f"{path} {why}; rerun that run (batchscale sweep resumes it) or move its folder out of the sweep")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise unreadable(path, f"is truncated or not JSON ({err.msg} at line {err.lineno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise unreadable(path, f"cannot be read ({err})") from None


def read_records(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl: one JSON object per epoch; a truncated last line (a run killed mid-write) is an error here."""
    if not path.is_file():
        raise unreadable(path, "is missing")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise unreadable(path, f"cannot be read ({err})") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise unreadable(path, f"has a truncated or broken line {number}") from None
        if not isinstance(record, dict) or not {"epoch", "val_acc"} <= record.keys():
            raise unreadable(path, f"line {number} is not an epoch record")
        records.append(record)
    if not records:
        raise unreadable(path, "has no epochs")
    return records


@dataclass
class Unfinished:
    """A run of the sweep that has no summary: it diverged, failed, was stopped, or never started. The report
    lists it with its status; it is never left out."""

    name: str
    status: str  # "diverged", "running", "stopped or failed", "not started"
    why: str
    global_batch: int | None
    workers: int | None


def load_unfinished(sweep_dir: Path, planned: dict[str, tuple[int, int]]) -> list[Unfinished]:
    """Every run of `planned` (name -> (global batch, workers), sweep.planned_runs) or whose folder is here that
    has no summary.json, with why."""
    names = set(planned) | {p.parent.name for p in sweep_dir.glob(f"*/{DIVERGED}")}
    out = []
    for name in sorted(names):
        folder = sweep_dir / name
        if (folder / SUMMARY).is_file():
            continue
        batch, workers = planned.get(name, (None, None))
        state = folder_state(folder)
        if state == "diverged":
            saved = read_json(folder / DIVERGED)
            if not isinstance(saved, dict):
                raise unreadable(folder / DIVERGED, "is not a divergence record")
            batch = batch or saved.get("global_batch")
            workers = workers or saved.get("world_size")
            why = str(saved.get("message", "")).split(";")[0] or "diverged"
        else:
            why = {"running": f"training now ({folder / LOCK_NAME})", "not started": "rerun the sweep to train it",
                   "stopped or failed": f"ended without a summary; see {folder / 'train.log'} and rerun the sweep to "
                   "resume it"}[state]
        out.append(Unfinished(name, state, why, batch, workers))
    return out


def load_runs(sweep_dir: Path, allow_empty: bool = False) -> list[RunResult]:
    """The finished runs (those with a summary.json), each checked; `load_unfinished` has the others."""
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir} is not a folder; give the sweep's --out folder")
    runs = []
    for summary_path in sorted(sweep_dir.glob(f"*/{SUMMARY}")):
        run = read_run(summary_path.parent, SUMMARY_KEYS)
        assert run is not None  # its summary is there: the glob found it
        runs.append(run)
    if not runs and not allow_empty:
        raise ConfigError(f"no finished runs (*/summary.json) in {sweep_dir}; run `batchscale sweep --out {sweep_dir}` first")
    return sorted(runs, key=lambda r: (r.global_batch, r.workers, r.name))


def read_run(run_dir: Path, required: tuple[str, ...] = ()) -> RunResult | None:
    """A run's summary and epoch records, or None where it has no summary.json (not finished, or diverged). A
    summary without the `required` keys, or a damaged record, is an error naming the file."""
    path = run_dir / SUMMARY
    if not path.is_file():
        return None
    summary = read_json(path)
    missing = [k for k in required if not isinstance(summary, dict) or k not in summary]
    if missing:
        raise unreadable(path, f"lacks {', '.join(missing)}")
    return RunResult(run_dir.name, summary, read_records(run_dir / METRICS))


def has_diverged(run_dir: Path) -> bool:
    """The trainer stopped the run at a NaN or infinite value and left diverged.json: a result, not a failure."""
    return (run_dir / DIVERGED).is_file()


def diverged_why(run_dir: Path) -> str:
    try:
        saved = json.loads((run_dir / DIVERGED).read_text())
        # The message names the first non-finite step; `step` is where the check found it (the epoch's end, say).
        return str(saved["message"]).split(";")[0]
    except (OSError, ValueError, KeyError, TypeError):
        return "diverged.json unreadable"


def folder_state(folder: Path) -> str:
    """Where a run without a summary stands, from its folder alone (the one reading of it that `sweep --status`
    and the report share): "diverged" (the trainer's diverged.json), "running" (its lock file: the
    training holds it for its life), "stopped or failed" (it wrote a log or a checkpoint; a rerun resumes it),
    or "not started"."""
    if has_diverged(folder):
        return "diverged"
    if (folder / LOCK_NAME).is_file():
        return "running"
    if (folder / "train.log").is_file() or any(folder.glob("checkpoint-*")):
        return "stopped or failed"
    return "not started"


def is_done(run_dir: Path, epochs: int) -> bool:
    """Finished its epochs, or ended as a trial (at its target or its step budget), or diverged: a rerun
    would only repeat it."""
    if has_diverged(run_dir):
        return True
    summary = run_dir / SUMMARY
    if not summary.is_file():
        return False
    try:
        saved = json.loads(summary.read_text())
    except json.JSONDecodeError:
        return False
    return saved.get("epochs_completed") == epochs or saved.get("trial", {}).get("ended") in ("target", "budget")


def epochs_done(run_dir: Path) -> int:
    metrics = run_dir / METRICS
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def images_trained(run_dir: Path) -> float:
    metrics = run_dir / METRICS
    if not metrics.is_file():
        return 0.0
    total = 0.0
    for line in metrics.read_text().splitlines():
        try:
            total += json.loads(line)["images"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by a crash; the run's own resume rewrites it
    return total


def damaged(run_dir: Path) -> str | None:
    """Why the run's summary.json or diverged.json is not a finished trial's or paper run's record, or None (sound,
    or absent)."""
    for name in (DIVERGED, SUMMARY):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            saved = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"{name} cannot be read ({err})"
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            return f"{name} has no config"
        trial = saved.get("trial")
        if not isinstance(trial, dict) or (name == SUMMARY and trial.get("ended") not in ENDINGS):
            return f"{name} has no trial record of how it ended"
        if not isinstance(trial.get("evals") or [], list) or not isinstance(trial.get("reached") or {}, dict):
            return f"{name} has a malformed trial record"
        return None
    return None


def finished(run_dir: Path) -> bool:
    """A trial or paper run is over once it wrote a sound summary (a run in progress has none) or diverged."""
    present = (run_dir / SUMMARY).is_file() or has_diverged(run_dir)
    return present and damaged(run_dir) is None


def clear_record(run_dir: Path) -> None:
    """Removes a damaged record, so the run trains again (it resumes from its last checkpoint)."""
    for name in (SUMMARY, DIVERGED):
        (run_dir / name).unlink(missing_ok=True)


def trial_record(run_dir: Path) -> tuple[dict[str, Any], bool] | None:
    """A finished run's record and whether it diverged: diverged.json's where there is one, else summary.json's;
    None where there is neither. Check it with `damaged` first."""
    if has_diverged(run_dir):
        return read_json(run_dir / DIVERGED), True
    if (run_dir / SUMMARY).is_file():
        return read_json(run_dir / SUMMARY), False
    return None
