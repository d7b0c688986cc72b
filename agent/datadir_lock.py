"""One agent process per data dir: an exclusive ``flock`` on ``DATA_DIR/agent.lock``, held for
the life of the process (``slmops-agent run`` or ``install-bundle``). Two processes writing
one blob cache, one deploy.json and one slots.json would undo each other's work.

The kernel drops the lock when the process dies, even by SIGKILL, so a crash never leaves a
stale lock behind; the pid written into the file is only there for the error message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "agent.lock"


class DataDirLocked(Exception):
    """Another process holds the data dir; the message names it and what to do."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, what: str = "this command") -> None:
        """Take the lock or raise DataDirLocked naming the data dir and the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(
                f"data dir {self.path.parent} is in use by another slmops-agent process (pid "
                f"{holder}); stop that agent before running {what}, or give another --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the pid is only for the message; the lock itself holds
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
