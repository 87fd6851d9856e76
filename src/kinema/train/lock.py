"""One trainer per run folder: an exclusive lock on `RUN/.lock`, held while training runs.

The lock is an `flock` on the file, which the kernel releases when its process ends however it ends (SIGKILL,
a crash, a lost machine's process on a shared filesystem that supports locks), so a lock left by a dead trainer is
simply taken over. The file records the holder's host, pid and start time, for the message a second trainer prints.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import warnings
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = ["RunLock", "RunLocked"]


class RunLocked(FileExistsError):
    """Another trainer holds the run folder's lock; the message names its host and pid."""


class RunLock:
    """`with RunLock(run_dir) as lock:` — refuse (RunLocked) if another process trains this run; `lock.previous` is
    the record left by an earlier holder that ended without releasing it (None if the lock was free)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self.fd: Optional[int] = None
        self.previous: Optional[dict] = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            warnings.warn("no file locking on this platform: nothing stops a second trainer on this run", stacklevel=2)
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _describe(_read(fd))
                os.close(fd)
                raise RunLocked(f"{self.run_dir} is being trained by {holder}; wait for it to finish, or stop it "
                                "(it checkpoints on SIGTERM) before starting another trainer on this run") from None
            if _same_file(fd, self.path):  # not unlinked by its last holder between our open and our lock
                break
            os.close(fd)
        self.previous = _read(fd) or None
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it, so no one locks a file about to vanish
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}


def _describe(record: dict) -> str:
    if not record:
        return "another process"
    return f"pid {record.get('pid')} on host {record.get('host')} (since {record.get('since')})"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
