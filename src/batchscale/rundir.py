"""A run's output folders: one run per folder (an advisory lock held for the life of the training process,
rank 0), checked writable and roomy before training, and one line when a write fails.

flock, not a pid file: the kernel drops the lock when its process dies however it dies,
so a stale lock from a killed run never blocks the rerun.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
from pathlib import Path

from .errors import ConfigError, OutputError

LOCK_NAME = ".batchscale.lock"
STOPPED = "stopped.json"  # in the run folder: how the last run there was stopped, until the next start says it


class RunLock:
    def __init__(self, folders: list[Path], flag: str = "--log-dir") -> None:
        self.folders = list(dict.fromkeys(Path(f).absolute() for f in folders))
        self.flag = flag
        self.held: list[tuple[Path, int]] = []
        self.created: list[Path] = []

    def acquire(self) -> "RunLock":
        for folder in self.folders:
            self._lock(folder)
        return self

    def _lock(self, folder: Path) -> None:
        if not folder.exists():
            folder.mkdir(parents=True)
            self.created.append(folder)
        path = folder / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                self.release()
                raise ConfigError(
                    f"another run ({holder}) is training in {folder}; wait for it to end or stop it, "
                    f"or choose another {self.flag}"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its holder removed the file as it left: lock the one that is there now
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self.held.append((path, fd))

    def release(self) -> None:
        """Removes the lock files (while still holding them, so no one can lock a removed file) and the folders
        this lock created if nothing else was written there."""
        for path, fd in self.held:
            with contextlib.suppress(OSError):  # a folder gone read-only keeps the file; flock is released anyway
                path.unlink(missing_ok=True)
            os.close(fd)
        self.held = []
        for folder in reversed(self.created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self.created = []


def check_path(path: str | Path, flag: str) -> Path:
    """The folder `path` names, followed through symlinks, or one line saying why no folder can be there: a
    name or path too long for the file system, a symlink to nothing, a file in the way."""
    text = os.fsencode(str(Path(path).absolute()))
    name_max, path_max = 255, 4096  # Linux's NAME_MAX and PATH_MAX, what ext4, xfs and tmpfs allow
    if len(text) >= path_max:
        raise ConfigError(f"{flag} is {len(text)} bytes long; paths stop at {path_max - 1}: choose a shorter one")
    long_name = next((part for part in text.split(b"/") if len(part) > name_max), None)
    if long_name is not None:
        raise ConfigError(f"{flag} has a folder name of {len(long_name)} bytes ({os.fsdecode(long_name[:40])}...); "
                          f"names stop at {name_max}: choose a shorter one")
    target = Path(path).absolute()
    link = next((p for p in (target, *target.parents) if p.is_symlink() and not p.exists()), None)
    if link is not None:
        raise ConfigError(f"{flag} {path}: {link} is a symlink to {os.readlink(link)}, which does not exist; "
                          f"create that folder, or choose another {flag}")
    return target.resolve()


def check_writable(path: str | Path, flag: str) -> None:
    """Fails before training, not after the first epoch, when an output folder cannot be written.

    It writes and syncs real bytes: on a full disk creating an empty file still succeeds.
    """
    target = check_path(path, flag)
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, not a folder; choose another {flag}")
    probe = existing / f".batchscale-write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OutputError(f"{flag} {path}: no space left on {existing}'s disk; free some space or write elsewhere") from None
        why = "a read-only file system" if err.errno == errno.EROFS else err.strerror
        raise ConfigError(f"{flag} {path} is not writable ({why}); choose a folder you can write to") from None
    finally:
        # A read-only file system answers EROFS, not ENOENT, for the probe it never created: never a second error.
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def check_space(folder: Path, needed: int, what: str) -> None:
    """Fails before training when `folder` cannot hold `needed` more bytes (a checkpoint, say)."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise OutputError(
            f"{existing} has {free / 2**20:.1f} MiB free but {what} needs about {needed / 2**20:.1f} MiB; "
            "free some space or write elsewhere"
        )


def write_error(path: Path, err: BaseException, what: str, flag: str) -> OutputError:
    """One line for an output that could not be written; says so when the disk is full."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    folder = path.parent
    try:
        free = shutil.disk_usage(folder).free
        space = f"; {folder} has {free / 2**20:.1f} MiB free" if free < 64 * 2**20 else ""
    except OSError:
        space = ""
    named = f"{what} {path}" if what else str(path)
    code = err.errno if isinstance(err, OSError) else None
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        refused = {errno.EROFS: "read-only file system"}.get(code, "permission denied")
        return OutputError(f"could not write {named} ({refused} in {folder}); make {folder} writable or choose "
                           f"another {flag} and rerun: what was saved before is intact")
    full = "no space left on the disk" if code == errno.ENOSPC or space else reason
    return OutputError(f"could not write {named} ({full}){space}; free some space or choose another {flag} "
                       "and rerun: what was saved before is intact")

