"""Atomic file writes, one way for every output: a temporary file beside the target, fsync, rename, fsync of the
folder. A reader, or a rerun after a crash or a power cut, finds the old file or the new one, never half of one.

The temporary file is `.NAME.RANDOM.tmp`: two writers of one name never share it, and what a killed writer left is
recognisable (`checkpoint.remove_stale_temporaries`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .rundir import write_error


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None], what: str = "", flag: str = "--log-dir") -> None:
    """Calls `write` on a temporary file, then puts it in `path`'s place; a failure is one line naming `path`
    (`what` and the `flag` that chose it) and leaves whatever was there before."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise write_error(path, err, what, flag) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
        sync_folder(path.parent)  # and the rename itself survives a power cut
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError from its C++ writer
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, err, what, flag) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str, what: str = "", flag: str = "--log-dir") -> None:
    write_atomic(path, lambda f: f.write(text.encode()), what, flag)


def write_json_atomic(path: str | Path, data: Any, what: str = "", flag: str = "--log-dir") -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n", what, flag)


def sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
