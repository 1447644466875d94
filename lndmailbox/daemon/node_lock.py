"""One daemon per lnd node: a lock in Redis with a lease, renewed with a heartbeat.

Rules that hold:

- A daemon serves a node only while it holds the node's lock. A second daemon waits for
  the first to stop or for its lease (``LOCK_LEASE`` seconds) to run out.
- The holder renews the lease every ``HEARTBEAT_INTERVAL`` seconds and writes a heartbeat
  beside it (pid, host, version, start time) for ``mailboxctl status``.
- A holder that finds the lock taken by another daemon stops at once: two daemons must
  never serve one node.
- A lock left by a process of this host that no longer runs (a crash) is taken over at
  once, instead of waiting out the whole lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator

from lndmailbox import __version__
from lndmailbox.daemon.supervisor import background
from lndmailbox.errors import MailboxError, StoreUnavailableError
from lndmailbox.retry import Outage, Retry, wait_or_stop
from lndmailbox.store import Control

log = logging.getLogger(__name__)

LOCK_LEASE = 15.0
HEARTBEAT_INTERVAL = 5.0
_POLL = 2.0
"""Seconds between looks at a lock another daemon holds."""


class NodeLock:
    def __init__(self, control: Control) -> None:
        self._control = control
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._redis = Retry(
            "taking the node lock in Redis",
            log,
            retry_on=lambda e: isinstance(e, StoreUnavailableError),
        )
        self._renewals = Outage("renewing the node lock", log)
        self._lost = False

    @contextlib.asynccontextmanager
    async def held(self, stop: asyncio.Event) -> AsyncIterator[None]:
        """Holds the lock (renewed, with a heartbeat) for as long as the block runs.

        The block runs at once, without the lock, if ``stop`` is set while waiting for it;
        losing the lock sets ``stop``."""
        if not await self._acquire(stop):
            yield
            return
        with background(self._keep_lease(stop, time.time()), stop):
            try:
                yield
            finally:
                if not self._lost:
                    with contextlib.suppress(MailboxError):
                        await self._control.release_lock(self.owner)

    async def _acquire(self, stop: asyncio.Event) -> bool:
        """Waits for the lock; False if stopped first."""
        said = False
        while not stop.is_set():
            if await self._try(stop):
                if said:
                    log.info("took the node lock")
                return True
            holder = await self._control.lock_owner()
            if holder is not None and _died_on_this_host(holder):
                log.warning("taking over the node lock from %s, which is no longer running", holder)
                await self._control.release_lock(holder)
                continue
            if not said:
                heartbeat = await self._control.read_heartbeat()
                log.warning(
                    "another lndmailbox (%s) holds this node's lock; waiting for it to stop "
                    "or for its lease to run out (last heartbeat: %s)",
                    holder,
                    heartbeat or "none",
                )
                said = True
            await wait_or_stop(stop, _POLL)
        return False

    async def _try(self, stop: asyncio.Event) -> bool:
        """One try at the lock; while Redis cannot be reached, waits for it (saying so once)."""
        try:
            return await self._redis.call(
                lambda: self._control.acquire_lock(self.owner, LOCK_LEASE), stop=stop
            )
        except StoreUnavailableError:
            if stop.is_set():
                return False
            raise

    async def _keep_lease(self, stop: asyncio.Event, started: float) -> None:
        while not await wait_or_stop(stop, HEARTBEAT_INTERVAL):
            try:
                if not await self._control.renew_lock(self.owner, LOCK_LEASE):
                    log.error("lost the node lock to another daemon; stopping")
                    self._lost = True
                    stop.set()
                    return
                await self._control.write_heartbeat(
                    {
                        "owner": self.owner,
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "version": __version__,
                        "started_at": started,
                        "at": time.time(),
                    },
                    ttl=LOCK_LEASE,
                )
            except MailboxError as e:
                self._renewals.failed(e)
                continue
            self._renewals.recovered()


def _died_on_this_host(owner: str) -> bool:
    """Whether the lock's owner ("host:pid:nonce") was a process of this host that is gone."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
