"""A sweep folder on disk: its finished runs, read and checked. What report and plan read, defined once."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..rundir import folder_state


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


def _unreadable(path: Path, why: str) -> ConfigError:
    return ConfigError(f"{path} {why}; rerun that run (batchscale sweep resumes it) or move its folder out of the sweep")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise _unreadable(path, f"is truncated or not JSON ({err.msg} at line {err.lineno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise _unreadable(path, f"cannot be read ({err})") from None


def read_records(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl: one JSON object per epoch; a truncated last line (a run killed mid-write) is an error here."""
    if not path.is_file():
        raise _unreadable(path, "is missing")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise _unreadable(path, f"cannot be read ({err})") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise _unreadable(path, f"has a truncated or broken line {number}") from None
        if not isinstance(record, dict) or not {"epoch", "val_acc"} <= record.keys():
            raise _unreadable(path, f"line {number} is not an epoch record")
        records.append(record)
    if not records:
        raise _unreadable(path, "has no epochs")
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


def planned_runs(sweep_dir: Path) -> dict[str, tuple[int, int]]:
    """Run name -> (global batch, workers) for every run sweep.json lists (empty for a folder of loose runs)."""
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        return {}
    from .sweep import SweepConfig

    saved = read_json(path)
    try:
        recorded = SweepConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k != "runs"})
        return {r.name: (r.global_batch, r.workers) for r in recorded.runs()}
    except TypeError as err:
        raise _unreadable(path, f"is not a sweep's record ({err})") from None


def load_unfinished(sweep_dir: Path) -> list[Unfinished]:
    """Every run the sweep planned (or whose folder is here) that has no summary.json, with why."""
    from ..rundir import LOCK_NAME

    planned = planned_runs(sweep_dir)
    names = set(planned) | {p.parent.name for p in sweep_dir.glob("*/diverged.json")}
    out = []
    for name in sorted(names):
        folder = sweep_dir / name
        if (folder / "summary.json").is_file():
            continue
        batch, workers = planned.get(name, (None, None))
        state = folder_state(folder)
        if state == "diverged":
            saved = read_json(folder / "diverged.json")
            if not isinstance(saved, dict):
                raise _unreadable(folder / "diverged.json", "is not a divergence record")
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
    for summary_path in sorted(sweep_dir.glob("*/summary.json")):
        summary = read_json(summary_path)
        missing = [k for k in SUMMARY_KEYS if not isinstance(summary, dict) or k not in summary]
        if missing:
            raise _unreadable(summary_path, f"lacks {', '.join(missing)}")
        runs.append(RunResult(summary_path.parent.name, summary, read_records(summary_path.parent / "metrics.jsonl")))
    if not runs and not allow_empty:
        raise ConfigError(f"no finished runs (*/summary.json) in {sweep_dir}; run `batchscale sweep --out {sweep_dir}` first")
    return sorted(runs, key=lambda r: (r.global_batch, r.workers, r.name))
