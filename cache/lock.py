"""An exclusive lock on an output folder, held while one process writes it.

    with FolderLock(run_dir):          # a second writer gets FolderBusyError at once
        ...write run_dir...
    lock_output(args.out)              # a CLI: `.out.lock` beside it, held until its main returns

The lock is a flock(2) on `<folder>/<name>` (default `write.lock`) that records the holder's pid.
The kernel releases a flock when its process dies, so a lock left by a process killed with
`kill -9` is stale: the file stays but the next writer takes it at once (no cleanup step, no
pid guessing). The file is left in place on release (deleting it would race with a new holder).
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .cli_errors import hold_until_return
from .errors import CacheBusyError, CacheInputError

LOCK_FILE = "write.lock"


class FolderBusyError(CacheBusyError):
    """Another live process holds the lock of this folder."""


class FolderLock:
    """Exclusive, non-blocking lock of `folder` (created if missing); a context manager."""

    def __init__(self, folder: str | os.PathLike, name: str = LOCK_FILE, *, what: str = "written",
                 subject: str | os.PathLike | None = None):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.what = what
        self.subject = self.folder if subject is None else Path(subject)  # what the messages call locked
        self.fd = -1

    def acquire(self) -> "FolderLock":
        if self.folder.exists() and not self.folder.is_dir():
            raise CacheInputError(f"{self.folder} is a file, not a folder; choose another output path")
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FolderBusyError(f"{self.subject} is being {self.what} by another live process (pid {holder}); "
                                  "wait for it to finish or stop it, or use another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def lock_output(path: str | os.PathLike, *, is_file: bool = False, what: str = "written") -> FolderLock:
    """Lock a command's output (folder or file) until the command (`cli_main`) returns, or released.

    The lock file is `.<name>.lock` beside the output, so a command that then fails on its input
    leaves no output folder behind.
    """
    path = Path(path)
    if is_file and path.is_dir():
        raise CacheInputError(f"{path} is a folder; give the output file's name")
    if not is_file and path.exists() and not path.is_dir():
        raise CacheInputError(f"{path} is a file, not a folder; choose another output path")
    return hold_until_return(FolderLock(path.parent, f".{path.name}.lock", what=what, subject=path).acquire())


def lock_is_held(path: Path) -> str | None:
    """The pid written in a lock file if a live process holds it, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
