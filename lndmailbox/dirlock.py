"""One daemon per data directory: an exclusive advisory lock (flock) on a file in it.

The kernel drops the lock when the process that holds it ends, however it ends (SIGKILL
included), so a crashed daemon never leaves its directory locked. The Redis server the
daemon starts does not inherit it: Python opens files non-inheritable.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DirectoryLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Takes the lock if no other holder has it; writes our pid into the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)  # drops the lock too, if it was taken
            raise
        self._fd = fd
        return True

    def holder(self) -> str:
        """What the holder wrote (its pid); empty if the file cannot be read."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the file drops the lock
