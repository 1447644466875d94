"""One daemon per lnd node: a lock in Redis with a lease, renewed with a heartbeat.

Rules that hold:

- A daemon serves a node only while it holds the node's lock. A second daemon waits for
  the first to stop or for its lease (``LOCK_LEASE`` seconds) to run out.
- The holder renews the lease every ``HEARTBEAT_INTERVAL`` seconds and writes a heartbeat
  beside it (pid, host, version, start time) for ``mailboxctl status``.
- A Redis outage does not cost the holder the node: it keeps serving while Redis is away,
  and a lock whose lease ran out meanwhile (nobody else holds it) it simply takes again.
  The renewal also works while Redis refuses writes for memory (its script may).
- A holder that finds the lock held by another daemon stops at once: two daemons must
  never serve one node. The stop is a fault (:class:`NodeLockLostError`, exit 1), so a
  supervisor restarts it, and the new one waits its turn for the lock.
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
from lndmailbox.errors import MailboxError, NodeLockLostError, StoreUnavailableError
from lndmailbox.retry import Outage, Retry, wait_or_stop
from lndmailbox.store import Control, LockRenewal

log = logging.getLogger(__name__)

LOCK_LEASE = 15.0
HEARTBEAT_INTERVAL = 5.0
RELEASE_WITHIN = 0.5
"""Seconds the lock's release may take at the stop before it is left to its lease."""
_POLL = 2.0
"""Seconds between looks at a lock another daemon holds."""


class NodeLock:
    def __init__(
        self,
        control: Control,
        *,
        lease: float = LOCK_LEASE,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self._control = control
        self._lease = lease
        self._heartbeat_interval = heartbeat_interval
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._redis = Retry(
            "taking the node lock in Redis",
            log,
            retry_on=lambda e: isinstance(e, StoreUnavailableError),
        )
        self._renewals = Outage("renewing the node lock", log)
        self._heartbeats = Outage("writing the daemon's heartbeat", log)
        self._lost: NodeLockLostError | None = None

    @contextlib.asynccontextmanager
    async def held(self, stop: asyncio.Event) -> AsyncIterator[None]:
        """Holds the lock (renewed, with a heartbeat) for as long as the block runs.

        The block runs at once, without the lock, if ``stop`` is set while waiting for it.
        Another daemon taking the lock sets ``stop``, and the block's end then raises
        :class:`NodeLockLostError`; a failing lease task, its error."""
        if not await self._acquire(stop):
            yield
            return
        with background(self._keep_lease(stop, time.time()), stop):
            try:
                yield
            finally:
                if self._lost is None:
                    await self._release()
        if self._lost is not None:
            raise self._lost

    async def _release(self) -> None:
        """Gives the lock back, within :data:`RELEASE_WITHIN`: a Redis that hangs must not
        hold up the stop (the lease then runs out by itself)."""
        try:
            async with asyncio.timeout(RELEASE_WITHIN):
                await self._control.release_lock(self.owner)
        except (MailboxError, TimeoutError) as e:
            log.warning("could not release the node lock (%s); its lease will run out", e)

    async def _acquire(self, stop: asyncio.Event) -> bool:
        """Waits for the lock; False if stopped first."""
        said = False
        while not stop.is_set():
            if await self._try(stop):
                if said:
                    log.info("took the node lock")
                return True
            try:
                holder = await self._control.lock_owner()
                if holder is not None and _died_on_this_host(holder):
                    log.warning(
                        "taking over the node lock from %s, which is no longer running", holder
                    )
                    await self._control.release_lock(holder)
                    continue
                if not said:
                    await self._say_who_holds_it(holder)
                    said = True
            except StoreUnavailableError:
                pass  # Redis went away after the try: the next try waits for it
            await wait_or_stop(stop, _POLL)
        return False

    async def _say_who_holds_it(self, holder: str | None) -> None:
        heartbeat = await self._control.read_heartbeat()
        log.warning(
            "another lndmailbox (%s) holds this node's lock; waiting for it to stop "
            "or for its lease to run out (last heartbeat: %s)",
            holder,
            heartbeat or "none",
        )

    async def _try(self, stop: asyncio.Event) -> bool:
        """One try at the lock; while Redis cannot be reached, waits for it (saying so once)."""
        try:
            return await self._redis.call(
                lambda: self._control.acquire_lock(self.owner, self._lease), stop=stop
            )
        except StoreUnavailableError:
            if stop.is_set():
                return False
            raise

    async def _keep_lease(self, stop: asyncio.Event, started: float) -> None:
        """Renews the lease until ``stop``, or until another daemon is found holding it."""
        while not await wait_or_stop(stop, self._heartbeat_interval):
            try:
                renewal = await self._control.renew_lock(self.owner, self._lease)
            except MailboxError as e:
                self._renewals.failed(e)  # while Redis is away: keep serving, try again
                continue
            self._renewals.recovered()
            if renewal is LockRenewal.TAKEN:
                self._lost = NodeLockLostError(await self._holder())
                stop.set()
                return
            if renewal is LockRenewal.RETAKEN:
                log.warning(
                    "the node lock's lease ran out while it could not be renewed; nobody "
                    "else held the lock, so this daemon took it again"
                )
            await self._write_heartbeat(started)

    async def _holder(self) -> str | None:
        with contextlib.suppress(MailboxError):
            return await self._control.lock_owner()
        return None

    async def _write_heartbeat(self, started: float) -> None:
        try:
            await self._control.write_heartbeat(
                {
                    "owner": self.owner,
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "version": __version__,
                    "started_at": started,
                    "at": time.time(),
                },
                ttl=self._lease,
            )
        except MailboxError as e:
            self._heartbeats.failed(e)  # under memory pressure the lease holds, this fails
            return
        self._heartbeats.recovered()


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
