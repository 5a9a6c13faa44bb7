"""Checkpoint files: written atomically, found with one directory scan, checked before use.

What a checkpoint holds is defined by `state.TrainState`; when one is written, kept and resumed, by
`training.checkpointer`; which changed flags a resume refuses or records, by `training.resume`.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

import torch

from .atomic import write_atomic
from .config import Config
from .errors import ConfigError
from .rundir import write_error
from .state import problem, upgraded
from . import faults


@dataclass(frozen=True)
class Files:
    """The part of the configuration that names, finds and keeps a run's checkpoint files."""

    checkpoint_format: str
    log_dir: str
    epochs: int
    resume: bool
    resume_from: str | None
    keep_checkpoints: int

    def checkpoint_path(self, epoch: int) -> str:
        return self.checkpoint_format.format(epoch=epoch, log_dir=self.log_dir)  # as Config.checkpoint_path

    @classmethod
    def of(cls, config: Config) -> "Files":
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


# A whole Config names the same files as its slice (tools and tests pass one).
Naming = Files | Config


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Atomic (temporary file, fsync, rename): a crash mid-save leaves the previous checkpoint intact."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path, err, "checkpoint", "--checkpoint-format") from None

    def write(f: IO[bytes]) -> None:
        torch.save(state, f)
        faults.point("during-save", int(state.get("step", -1)))

    write_atomic(path, write, "checkpoint", "--checkpoint-format")


def load(path: str | Path) -> dict[str, Any]:
    """weights_only=True: a checkpoint from elsewhere can hold tensors and plain data, never code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path} does not exist; check --checkpoint-format") from None
    except Exception as err:  # torch raises many types for truncated, corrupt or unsafe files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot load checkpoint {path}: {reason}") from None
    wrong = problem(state)
    if wrong:
        raise ConfigError(f"cannot use checkpoint {path}: {wrong}; move it away or use --no-resume")
    return upgraded(state)


def partial_path(config: Naming, epoch: int) -> Path:
    """Where a checkpoint taken inside epoch `epoch` (by --checkpoint-every-steps or a signal) lives until it ends."""
    return Path(config.checkpoint_path(epoch) + ".partial")


def _naming(config: Naming) -> tuple[str, Callable[[str], int | None]]:
    """A glob for this --checkpoint-format's files and a parser that gives a matching path's epoch."""
    marker = "\x00"
    parts = os.path.normpath(config.checkpoint_format.format(epoch=marker, log_dir=config.log_dir)).split(marker)
    pattern = "*".join(glob.escape(p) for p in parts)
    regex = re.compile(r"(\d+)".join(re.escape(p) for p in parts) + r"(\.partial)?")

    def epoch_of(name: str) -> int | None:
        name = os.path.normpath(name)
        match = regex.fullmatch(name)
        if not match or len(set(match.groups()[:-1])) != 1:
            return None
        epoch = int(match.group(1))
        return epoch if os.path.normpath(config.checkpoint_path(epoch) + (match.groups()[-1] or "")) == name else None

    return pattern, epoch_of


def existing(config: Naming) -> dict[Path, int]:
    """Every checkpoint file of this --checkpoint-format on disk (epoch and .partial ones) with its epoch.

    One glob, whatever --epochs is: the folder is scanned, not every possible epoch's name.
    """
    pattern, epoch_of = _naming(config)
    found = {}
    for name in glob.glob(pattern) + glob.glob(pattern + ".partial"):
        epoch = epoch_of(name)
        if epoch is not None:
            found[Path(name)] = epoch
    return found


def candidates(config: Naming) -> list[Path]:
    """This run's checkpoints up to --epochs, newest progress first: epoch e's, then the one inside e, then e-1's, ..."""
    found = [(epoch, not path.name.endswith(".partial"), path) for path, epoch in existing(config).items()
             if epoch <= config.epochs]
    return [path for _, _, path in sorted(found, reverse=True)]


def remove_stale_temporaries(config: Naming) -> None:
    """A save killed midway leaves `.NAME.RANDOM.tmp`; safe to remove only while this run holds the folder's lock."""
    _, epoch_of = _naming(config)
    folders = {Path(config.checkpoint_path(1)).parent, Path(config.checkpoint_path(2)).parent}
    for folder in folders:
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
            name = tmp.name[1 : -len(".tmp")].rsplit(".", 1)[0]
            if epoch_of(str(folder / name)) is not None:
                tmp.unlink(missing_ok=True)


def clear(config: Naming) -> int:
    """--no-resume: the checkpoints an earlier run left under this format go, so none is ever resumed by mistake."""
    files = list(existing(config))
    for path in files:
        path.unlink(missing_ok=True)
    return len(files)


def find_and_load(config: Naming, say: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """The newest usable checkpoint of this run (or --resume PATH), or None.

    A corrupt, truncated, malformed or non-finite one is reported and the one before it used;
    an explicit --resume PATH that cannot be used is an error.
    """
    if config.resume_from is not None:
        path = Path(config.resume_from)
        return path, load(path)
    if not config.resume:
        return None
    remove_stale_temporaries(config)
    for path in candidates(config):
        try:
            return path, load(path)
        except ConfigError as err:
            say(f"warning: {err}; trying the one before it")
    return None


def prune(config: Naming, epoch: int) -> None:
    """After epoch `epoch`'s checkpoint is safely written: drop its partial one and those past --keep-checkpoints."""
    partial_path(config, epoch).unlink(missing_ok=True)
    if config.keep_checkpoints:
        for path, saved in existing(config).items():
            if saved <= epoch - config.keep_checkpoints and not path.name.endswith(".partial"):
                path.unlink(missing_ok=True)
