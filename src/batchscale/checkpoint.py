"""Checkpoints: written atomically by rank 0, found and loaded at start, broadcast to every rank."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import faults
from .config import Config, ConfigError

FORMAT_VERSION = 1
# Settings that change what the saved weights mean or which images come next; resuming across them is refused.
MUST_MATCH = ("model", "width", "seed", "epochs", "lr_schedule", "lr_scaling", "base_lr")


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Temporary file, fsync, rename: a crash mid-save leaves the previous checkpoint intact."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            faults.point("during-save", int(state.get("step", -1)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load(path: str | Path) -> dict[str, Any]:
    """weights_only=True: a checkpoint from elsewhere can hold tensors and plain data, never code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path} does not exist; check --checkpoint-format") from None
    except Exception as err:  # torch raises many types for truncated, corrupt or unsafe files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot load checkpoint {path}: {reason}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path} is not a batchscale checkpoint (format {FORMAT_VERSION}); move it away or use --no-resume")
    return state


def partial_path(config: Config, epoch: int) -> Path:
    """Where a checkpoint taken inside epoch `epoch` (by --checkpoint-every-steps) lives until the epoch ends."""
    return Path(config.checkpoint_path(epoch) + ".partial")


def candidates(config: Config) -> list[Path]:
    """This run's checkpoints, newest progress first: epoch e's, then the one inside e, then e-1's, ..."""
    found = []
    for epoch in range(config.epochs, 0, -1):
        for path in (Path(config.checkpoint_path(epoch)), partial_path(config, epoch)):
            if path.is_file():
                found.append(path)
    return found


def remove_stale_temporaries(config: Config) -> None:
    """A save killed midway leaves its temporary file; the renamed checkpoints are never touched."""
    for epoch in range(1, config.epochs + 1):
        for path in (Path(config.checkpoint_path(epoch)), partial_path(config, epoch)):
            for tmp in path.parent.glob(f".{path.name}.*.tmp") if path.parent.is_dir() else ():
                tmp.unlink(missing_ok=True)


def find_and_load(config: Config, world_size: int, say: Any) -> tuple[Path, dict[str, Any]] | None:
    """The newest loadable checkpoint of this run (or --resume PATH), or None.

    A corrupt or truncated one is reported and the one before it used; an explicit
    --resume PATH that cannot be loaded is an error.
    """
    if config.resume_from is not None:
        path = Path(config.resume_from)
        state = load(path)
        check_compatible(state, config, world_size, path)
        return path, state
    if not config.resume:
        return None
    remove_stale_temporaries(config)
    for path in candidates(config):
        try:
            state = load(path)
        except ConfigError as err:
            say(f"warning: {err}; trying the one before it")
            continue
        check_compatible(state, config, world_size, path)
        return path, state
    return None


def prune(config: Config, epoch: int) -> None:
    """After epoch `epoch`'s checkpoint is safely written: drop its partial one and those past --keep-checkpoints."""
    partial_path(config, epoch).unlink(missing_ok=True)
    if config.keep_checkpoints:
        for old in range(1, epoch - config.keep_checkpoints + 1):
            Path(config.checkpoint_path(old)).unlink(missing_ok=True)


def check_compatible(state: dict[str, Any], config: Config, world_size: int, path: Path) -> None:
    saved = state["config"]
    current = config.to_dict()
    for key in MUST_MATCH:
        if saved.get(key) != current[key]:
            raise ConfigError(
                f"{path} was written with --{key.replace('_', '-')} {saved.get(key)!r}, this run has {current[key]!r}; "
                "use the same value, another --log-dir, or --no-resume"
            )
    old_batch = saved["batch_size"] * saved["batches_per_allreduce"] * state["world_size"]
    new_batch = config.batch_size * config.batches_per_allreduce * world_size
    if old_batch != new_batch:
        raise ConfigError(
            f"{path} was trained with global batch {old_batch}, this run has {new_batch} "
            "(batch size x batches-per-allreduce x workers); match it, use another --log-dir, or --no-resume"
        )
