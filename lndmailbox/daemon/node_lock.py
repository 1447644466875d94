"""One leader per lnd node: a lock in Redis with a short lease, renewed several times a lease.

Every daemon of a node (on one host or on several) reads lnd and journals; the one that
holds this lock is the leader, which decides, stores, delivers and answers
(``daemon/roles.py``). Rules that hold:

- A daemon leads only while it holds the node's lock. The others wait for the leader to
  stop or for its lease (:data:`LOCK_LEASE` seconds) to run out, looking every
  :data:`POLL` seconds.
- The leader renews the lease every :data:`RENEW_INTERVAL` seconds and writes a heartbeat
  beside it (pid, host, version, start time) every :data:`HEARTBEAT_INTERVAL` seconds
  for ``mailboxctl status``.
- The figures are chosen for a takeover within 2 s: a leader that dies (SIGKILL, its host
  gone) leaves a lease of at most :data:`LOCK_LEASE` (it was renewed at most
  :data:`RENEW_INTERVAL` before), which a standby sees run out within :data:`POLL`, and
  a lock whose owner's process is gone is taken over at the next look, without waiting
  out the lease, when the owner shared this daemon's host, boot and pid namespace
  (:func:`_died_on_this_host`). A leader misses its lease only when no renewal gets
  through for ``LOCK_LEASE - RENEW_INTERVAL`` seconds.
- The lock has a connection of its own (:meth:`Control.on_own_connection`, with a socket
  timeout of :data:`LOCK_SOCKET_TIMEOUT`), so a full store pool never delays a renewal,
  and each renewal is bounded by :data:`RENEW_TIMEOUT`: a renewal lost on a dead TCP
  connection fails in time and the next one goes out on a fresh connection.
- A leader acts only within a lease it knows it holds: :attr:`Term.in_lease` is set
  while the last confirmed renewal (counted from when it was sent) is less than
  :data:`LOCK_LEASE` old. Once no renewal was confirmed within the lease a standby may
  hold the lock, so the leader stops acting as one: it hands nothing to lnd (no
  delivery, no direct send, no answer to peers; :class:`LeaseGatedSender`) and says so
  once. A renewal that gets through again decides: the lock still ours, or free and
  taken again (a Redis outage, nobody else held it), and the leader goes on with what
  it held (nothing lost, the buffered messages stored as usual); another daemon's, and
  it steps down (below). So a Redis outage still does not cost a lone daemon its node
  (it keeps what it reads and takes the lock again when Redis answers), but it no
  longer delivers while the lease is unconfirmed: with the lease expired, a standby
  that reaches Redis may lead.
  The renewal, the release and the take (a standby's too) work while Redis refuses writes
  for memory (their scripts may).
- A leader that finds the lock held by another daemon (its lease ran out and a standby
  took over) steps down: its term ends (:attr:`Term.ended`, :attr:`Term.lost`) and the
  daemon stands by again. Two daemons never hand messages to lnd for one node at once
  beyond a send already under way when the lease ran out; both may decide the same
  messages, which may cost duplicates, never a loss (both journal).
- A term's end releases the lock: at a stop (SIGTERM), as soon as what the leader read
  is decided (:meth:`Term.hand_over`), so a rolling restart hands over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator

from lndmailbox import __version__
from lndmailbox.daemon.owner_token import OwnerToken, ProcessPlace, new_owner
from lndmailbox.daemon.supervisor import cancel_for_good
from lndmailbox.errors import MailboxError, NodeLockLostError, StoreUnavailableError
from lndmailbox.retry import Outage, Retry, wait_or_stop
from lndmailbox.store import Control, LockRenewal

log = logging.getLogger(__name__)

LOCK_LEASE = 1.0
"""Seconds a leader's lock outlives its last renewal."""
RENEW_INTERVAL = 0.25
"""Seconds between renewals: four tries a lease."""
HEARTBEAT_INTERVAL = 1.0
"""Seconds between writes of the leader's heartbeat (it lives three of them)."""
POLL = 0.15
"""Seconds between a standby's looks at the lock another daemon holds."""
RELEASE_WITHIN = 0.5
"""Seconds the lock's release may take at the stop before it is left to its lease."""
RENEW_TIMEOUT = 0.5
"""Seconds one renewal may take: below ``LOCK_LEASE - RENEW_INTERVAL``, so that a renewal
that hangs fails while the lease still holds, and the next one may get through."""
LOCK_SOCKET_TIMEOUT = 0.5
"""The socket timeout of the lock's own connection (see :data:`RENEW_TIMEOUT`)."""
"""Seconds the lock's release may take at the stop before it is left to its lease."""


class Term:
    """One daemon's time as leader, from taking the lock to giving it up or losing it."""

    def __init__(self, lock: NodeLock) -> None:
        self._lock = lock
        self.ended = asyncio.Event()
        """Set when the daemon is told to stop, or when the lock is found taken."""
        self.lost: NodeLockLostError | None = None
        """Set when another daemon took the lock: the daemon steps down."""
        self.started = time.time()
        self.in_lease = asyncio.Event()
        """Set while the lease is known to be ours (the last confirmed renewal, counted
        from when it was sent, is less than a lease old): only then does the leader act."""
        self.in_lease.set()
        self._keeper: asyncio.Task[None] | None = None
        self._released = False
        self._lapse: asyncio.TimerHandle | None = None

    def leads(self) -> bool:
        """Whether this daemon still acts as the node's leader: its lease confirmed, and the
        lock neither handed over nor lost."""
        return self.in_lease.is_set() and not self._released and self.lost is None

    def confirmed(self, sent_at: float, lease: float) -> None:
        """A renewal (or the take) sent at ``sent_at`` (the loop's clock) got through: the
        lease holds until ``sent_at + lease``."""
        loop = asyncio.get_running_loop()
        if self._lapse is not None:
            self._lapse.cancel()
        if not self.in_lease.is_set():
            log.warning("the node lock's lease is confirmed again: leading again")
        self.in_lease.set()
        self._lapse = loop.call_at(sent_at + lease, self._lapsed)

    def _lapsed(self) -> None:
        self._lapse = None
        if self.in_lease.is_set() and not self.ended.is_set():
            log.warning(
                "no renewal of the node lock was confirmed within its lease: another daemon "
                "may lead now, so this one hands nothing to lnd until a renewal gets through"
            )
        self.in_lease.clear()

    def close(self) -> None:
        if self._lapse is not None:
            self._lapse.cancel()
            self._lapse = None

    async def hand_over(self) -> None:
        """Stops renewing and releases the lock now (idempotent): what this leader read is
        decided, and a standby may take over at once. Nothing if the lock was lost."""
        if self._released or self.lost is not None:
            return
        self._released = True
        self.ended.set()
        if self._keeper is not None:
            await cancel_for_good(self._keeper)
        await self._lock.release()


class NodeLock:
    def __init__(
        self,
        control: Control,
        *,
        owner: str | None = None,
        lease: float = LOCK_LEASE,
        heartbeat_interval: float = RENEW_INTERVAL,
        poll: float = POLL,
        renew_timeout: float = RENEW_TIMEOUT,
    ) -> None:
        self._control = control
        self._lease = lease
        self._renew_interval = heartbeat_interval
        self._renew_timeout = renew_timeout
        self._taken_at: float | None = None
        """When the try that took the lock was sent (the loop's clock)."""
        self._poll = poll
        self.owner = owner or new_owner()
        self.started = time.time()
        """When this daemon started (its heartbeat's ``started_at``)."""
        self._redis = Retry(
            "taking the node lock in Redis",
            log,
            retry_on=lambda e: isinstance(e, StoreUnavailableError),
        )
        self._renewals = Outage("renewing the node lock", log)
        self._heartbeats = Outage("writing the daemon's heartbeat", log)
        self._said: str | None = None

    @contextlib.asynccontextmanager
    async def held(self, stop: asyncio.Event) -> AsyncIterator[None]:
        """Waits for the lock and holds it (renewed, with a heartbeat) while the block runs.

        The block runs at once, without the lock, if ``stop`` is set while waiting for it.
        Another daemon taking the lock sets ``stop``, and the block's end then raises
        :class:`NodeLockLostError`."""
        if not await self.acquire(stop):
            yield
            return
        async with self.leading(stop) as term:

            def lost() -> None:
                if term.lost is not None:
                    stop.set()

            watcher = asyncio.ensure_future(term.ended.wait())
            watcher.add_done_callback(lambda _: lost())
            try:
                yield
            finally:
                watcher.cancel()
        if term.lost is not None:
            raise term.lost

    @contextlib.asynccontextmanager
    async def leading(self, stop: asyncio.Event) -> AsyncIterator[Term]:
        """After :meth:`acquire`: keeps the lease while the block runs, and releases the
        lock at its end (unless lost, or handed over already). The term ends (``ended``)
        when ``stop`` is set or another daemon is found holding the lock (``lost``); a
        failing lease task stops the daemon."""
        term = Term(self)
        stopper = asyncio.ensure_future(_set_when(stop, term.ended))
        keeper = asyncio.ensure_future(self._keep_lease(term))
        term._keeper = keeper

        def died(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.error("the node lock's lease task failed; stopping", exc_info=done.exception())
                stop.set()

        keeper.add_done_callback(died)
        try:
            yield term
        finally:
            stopper.cancel()
            term.close()
            keeper.remove_done_callback(died)
            # The term is over: the lease task ends by itself at its next look, should a
            # cancellation be lost in a renewal (see cancel_for_good).
            term.ended.set()
            await cancel_for_good(keeper)
            await term.hand_over()
        error = keeper.exception() if keeper.done() and not keeper.cancelled() else None
        if error is not None:
            raise MailboxError(f"a background task failed: {error!r}") from error

    async def release(self) -> None:
        """Gives the lock back, within :data:`RELEASE_WITHIN`: a Redis that hangs must not
        hold up the stop (the lease then runs out by itself)."""
        try:
            async with asyncio.timeout(RELEASE_WITHIN):
                await self._control.release_lock(self.owner)
        except (MailboxError, TimeoutError) as e:
            log.warning("could not release the node lock (%s); its lease will run out", e)

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Waits for the lock; False if stopped first."""
        waited = False
        while not stop.is_set():
            sent_at = asyncio.get_running_loop().time()
            holder = await self._try(stop)
            if holder == self.owner:
                self._taken_at = sent_at
                if waited:
                    log.info("took the node lock")
                self._said = None
                return True
            if holder is None:  # stopped while Redis was away
                return False
            waited = True
            if _died_on_this_host(holder):
                log.warning(
                    "taking over the node lock from %s, whose process is gone (same host, "
                    "boot and pid namespace as this daemon)",
                    holder,
                )
                with contextlib.suppress(StoreUnavailableError):
                    await self._control.release_lock(holder)
                continue
            if holder != self._said:
                await self._say_who_holds_it(holder)
            await wait_or_stop(stop, self._poll)
        return False

    async def _say_who_holds_it(self, holder: str) -> None:
        self._said = holder
        try:
            heartbeat = await self._control.read_heartbeat()
        except StoreUnavailableError:
            heartbeat = None
        log.info(
            "another lndmailbox (%s) leads this node; standing by until it stops or its "
            "lease runs out (last heartbeat: %s)",
            holder,
            heartbeat or "none",
        )

    async def _try(self, stop: asyncio.Event) -> str | None:
        """One try at the lock: who holds it then; while Redis cannot be reached, waits
        for it (saying so once); None if stopped meanwhile."""
        try:
            return await self._redis.call(
                lambda: self._control.take_lock(self.owner, self._lease), stop=stop
            )
        except StoreUnavailableError:
            if stop.is_set():
                return None
            raise

    async def _keep_lease(self, term: Term) -> None:
        """Renews the lease until the term ends, or until another daemon is found holding
        it (then the term is lost). Each renewal is bounded (:data:`RENEW_TIMEOUT`); one
        that is confirmed extends :attr:`Term.in_lease`."""
        loop = asyncio.get_running_loop()
        taken_at, self._taken_at = self._taken_at, None
        term.confirmed(taken_at if taken_at is not None else loop.time(), self._lease)
        await self._write_heartbeat(term)
        beat_at = time.monotonic()
        while not await wait_or_stop(term.ended, self._renew_interval):
            sent_at = loop.time()
            try:
                async with asyncio.timeout(self._renew_timeout):
                    renewal = await self._control.renew_lock(self.owner, self._lease)
            except (MailboxError, TimeoutError) as e:
                # Redis away, or a connection that hangs: try again (on a fresh one); the
                # lease lapses by itself (Term.in_lease) if none gets through in time.
                self._renewals.failed(e if isinstance(e, MailboxError) else _timed_out())
                continue
            if term.ended.is_set():
                return  # over while the renewal was out (its cancellation lost in redis-py)
            self._renewals.recovered()
            if renewal is LockRenewal.TAKEN:
                term.in_lease.clear()
                term.lost = NodeLockLostError(await self._holder())
                term.ended.set()
                return
            term.confirmed(sent_at, self._lease)
            if renewal is LockRenewal.RETAKEN:
                log.warning(
                    "the node lock's lease ran out while it could not be renewed; nobody "
                    "else held the lock, so this daemon took it again"
                )
            if time.monotonic() - beat_at >= HEARTBEAT_INTERVAL:
                beat_at = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._renew_timeout):
                        await self._write_heartbeat(term)

    async def _holder(self) -> str | None:
        with contextlib.suppress(MailboxError):
            return await self._control.lock_owner()
        return None

    async def _write_heartbeat(self, term: Term) -> None:
        try:
            await self._control.write_heartbeat(
                {
                    "owner": self.owner,
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "version": __version__,
                    "started_at": self.started,
                    "leading_since": term.started,
                    "at": time.time(),
                },
                ttl=max(3 * HEARTBEAT_INTERVAL, self._lease),
            )
        except MailboxError as e:
            self._heartbeats.failed(e)  # under memory pressure the lease holds, this fails
            return
        self._heartbeats.recovered()


def _timed_out() -> StoreUnavailableError:
    return StoreUnavailableError(f"Redis did not answer within {RENEW_TIMEOUT}s")


async def _set_when(stop: asyncio.Event, ended: asyncio.Event) -> None:
    await stop.wait()
    ended.set()


def _died_on_this_host(owner: str) -> bool:
    """Whether the lock's owner was a process that is gone, judged by its pid only when its
    token (:class:`OwnerToken`) says it shared this process's host name, boot and pid
    namespace: only then does its pid name the same process here.

    Anything else is never judged dead, and the standby waits out the lease (1 s), which
    is always safe: a token of the release before (``host:pid:nonce``, a daemon not yet
    upgraded in a rolling upgrade), another container or pod of the same host name (its
    own pid namespace), a boot before this one, or a system that does not expose its boot
    id or pid namespace. A pid taken since by an unrelated process only makes the standby
    wait out the lease too. A pid namespace's number is reused only once all its
    processes are gone, so a reused one never makes a live holder look dead."""
    token = OwnerToken.parse(owner)
    if token is None or not token.shares_pids_with(ProcessPlace.current()):
        return False
    return not _pid_exists(token.pid)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
