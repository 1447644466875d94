"""The data directory's embedded Redis, shared by the daemons of one host (a leader and its
standbys): advisory locks (flock) on files in the directory.

Rules that hold:

- Every daemon using the directory's embedded server holds a shared lock on
  ``lndmailbox.lock`` for as long as it runs: several daemons of one host (a pair) share
  the server, and none waits for another before it subscribes to lnd. A daemon of a
  release before this one holds that lock exclusively: a daemon of this release then waits
  for it to stop, as it did then.
- Starting the server (or adopting the one already serving the socket) is done under an
  exclusive lock on ``redis-start.lock``, held only meanwhile, so two daemons never start
  two servers on one directory.
- The server runs in a session of its own: it outlives the daemon that started it,
  killed or not. A daemon that stops shuts the server down only when no other daemon
  uses it (its lock on ``lndmailbox.lock`` can be made exclusive); else it leaves it to
  them.
- While it runs, each daemon looks every :data:`GUARD_EVERY` seconds whether the server
  still runs (the server process holds a lock of its own, ``redis/server.lock``, for its
  whole life: a server too busy to answer is not taken for a dead one), and starts it
  again (from its append-only file) when it does not: a
  supervisor that killed the server with the daemon that started it (systemd's default
  ``KillMode=control-group``) costs the other daemon a second of Redis, not its store.

The kernel drops a lock when the process that holds it ends, however it ends (SIGKILL
included), so a crashed daemon never leaves the directory locked. The server does not
inherit the locks: Python opens files non-inheritable.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path

from lndmailbox.errors import ConfigError, MailboxError
from lndmailbox.retry import wait_or_stop
from lndmailbox.store import RedisServer

log = logging.getLogger(__name__)

_POLL = 1.0
"""Seconds between looks at a lock another daemon holds (the kernel does not tell)."""
GUARD_EVERY = 1.0
"""Seconds between a daemon's looks at whether the shared server still answers."""


class DirectoryLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self, *, shared: bool = False) -> bool:
        """Takes the lock (``shared``: beside other shared holders) if it is free enough;
        writes our pid into the file when exclusive."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            if not shared:
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

    def try_exclusive(self) -> bool:
        """Makes a shared lock exclusive if nobody else holds it now. flock converts by
        letting go first: when this fails, the lock is no longer held at all."""
        if self._fd is None:
            return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
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


class SharedServer:
    """The embedded server of one data directory, as one of the daemons using it."""

    def __init__(self, datadir: Path, server: RedisServer) -> None:
        self.datadir = datadir
        self.server = server
        self._users = DirectoryLock(datadir / "lndmailbox.lock")
        self._starting = DirectoryLock(datadir / "redis-start.lock")

    async def join(self, stop: asyncio.Event) -> bool:
        """Uses the directory: waits for a daemon of an older release to stop, then starts
        the server or adopts the running one. False if stopped first. Raises ConfigError
        when the directory cannot be locked, ServerStartError when the server does not
        start."""
        logged = False
        while not _try(self._users, shared=True):
            if not logged:
                log.warning(
                    "another lndmailbox (pid %s) uses %s alone; waiting for it to stop",
                    self._users.holder() or "unknown",
                    self.datadir,
                )
                logged = True
            if await wait_or_stop(stop, _POLL):
                return False
        if logged:
            log.info("%s is free now; going on", self.datadir)
        try:
            return await self._start(stop)
        except BaseException:
            self._users.release()
            raise

    async def _start(self, stop: asyncio.Event) -> bool:
        """Starts the server, or adopts the one serving the socket, under the start lock."""
        while not _try(self._starting, shared=False):
            if await wait_or_stop(stop, 0.05):
                return False
        try:
            adopted = await asyncio.to_thread(self._running)
            await asyncio.to_thread(self.server.start)
        finally:
            self._starting.release()
        if adopted:
            log.info("using the embedded Redis another lndmailbox started in %s", self.datadir)
        else:
            log.info("embedded Redis at %s (data in %s)", self.server.url, self.server.data_dir)
        return True

    async def guard(self, stop: asyncio.Event) -> None:
        """Until ``stop``: starts the server again whenever it is gone."""
        while not await wait_or_stop(stop, GUARD_EVERY):
            if await asyncio.to_thread(self._running):
                continue
            log.warning("the embedded Redis in %s is gone; starting it again", self.datadir)
            try:
                await self._start(stop)
            except MailboxError as e:
                log.error("could not start the embedded Redis again: %s", e)

    def _running(self) -> bool:
        """Whether the server process runs (its lock is held), or answers (a server of
        the release before, which holds no lock): a slow server is not a dead one."""
        return self.server.alive() or self.server.answers_ping()

    def leave(self) -> None:
        """At the stop: shuts the server down if no other daemon uses it, else leaves it
        running for them; lets go of the directory."""
        try:
            if self._users.try_exclusive():
                self.server.stop()
            else:
                self.server.forget()
                log.info(
                    "leaving the embedded Redis to the other lndmailbox using %s", self.datadir
                )
        finally:
            self._users.release()


def _try(lock: DirectoryLock, *, shared: bool) -> bool:
    try:
        return lock.try_acquire(shared=shared)
    except OSError as e:  # a read-only or lock-less file system, say
        raise ConfigError(f"cannot lock the data directory ({lock.path}): {e}") from e


async def use_datadir(
    datadir: Path, server: RedisServer, stack: contextlib.AsyncExitStack, stop: asyncio.Event
) -> SharedServer | None:
    """Joins the daemons using ``datadir``'s embedded server (starting it if none runs)
    until the stack unwinds; None if stopped first."""
    shared = SharedServer(datadir, server)
    if not await shared.join(stop):
        return None
    stack.callback(shared.leave)
    return shared
