"""One daemon per data directory: an exclusive advisory lock (flock) on a file in it.

The embedded Redis in the data directory belongs to one daemon: a second one would take
the running server over and shut it down under the first when it stops.

The kernel drops the lock when the process that holds it ends, however it ends (SIGKILL
included), so a crashed daemon never leaves its directory locked. The Redis server the
daemon starts does not inherit it: Python opens files non-inheritable.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path

from lndmailbox.errors import ConfigError
from lndmailbox.retry import wait_or_stop

log = logging.getLogger(__name__)

_POLL = 1.0
"""Seconds between looks at a lock another daemon holds (the kernel does not tell)."""


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


async def hold_datadir(
    datadir: Path, stack: contextlib.AsyncExitStack, stop: asyncio.Event
) -> bool:
    """Waits until no other daemon uses ``datadir``, then holds it until the stack unwinds.
    False if stopped first. Raises ConfigError when the directory cannot be locked at all."""
    lock = DirectoryLock(datadir / "lndmailbox.lock")
    logged = False
    while not _try_acquire(lock):
        if not logged:
            log.warning(
                "another lndmailbox (pid %s) uses %s; waiting for it to stop",
                lock.holder() or "unknown",
                datadir,
            )
            logged = True
        if await wait_or_stop(stop, _POLL):
            return False
    if logged:
        log.info("%s is free now; going on", datadir)
    stack.callback(lock.release)
    return True


def _try_acquire(lock: DirectoryLock) -> bool:
    try:
        return lock.try_acquire()
    except OSError as e:  # a read-only or lock-less file system, say
        raise ConfigError(f"cannot lock the data directory ({lock.path}): {e}") from e
