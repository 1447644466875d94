"""One daemon's life beside its lnd: standby until it holds the node's lock, leader while
it does, standby again if it loses it.

Two or more daemons may run per node, on one host or on several, all on the same Redis.
Every one reads lnd's onion stream and journals what it reads
(:class:`~lndmailbox.daemon.standby.Standby`, then the leader's own reader): lnd keeps
nothing for a subscriber that is not there, and a standby that is there makes a leader's
death cost nothing. The holder of the node lock (:mod:`~lndmailbox.daemon.node_lock`) is
the leader and runs the whole pipeline (:class:`~lndmailbox.daemon.mailbox.Mailbox`):
it decides, stores, delivers and answers, and it also decides what only a standby
journaled (:mod:`~lndmailbox.daemon.inbox_look`). Rules that hold:

- A daemon is on lnd's stream in every role: it tries for the lead only once its
  standby is subscribed (at most :data:`SUBSCRIBED_WITHIN` later), and on taking the
  lead its standby's stream goes on :data:`OVERLAP` seconds after the leader's own is up
  (:attr:`Mailbox.ready`), so the two overlap and nothing lnd publishes falls between
  them (what both read is one journal entry).
- Only the leader decides, stores, delivers and answers peers (and ``mailboxctl
  deliver``); a standby only journals.
- While a daemon of the release before the node's hash tag runs (it leads by a lock of
  its own), a daemon stands by; the first to lead after it moves the old key layout's
  mailbox before anything else (:mod:`~lndmailbox.daemon.old_layout`).
- A leader whose lock another daemon took (its lease ran out while it stalled, or while
  Redis could not be reached from it) steps down: its pipeline stops as at SIGTERM (what
  it read is decided, nothing is lost) and it stands by again; the daemon does not exit.
- At SIGTERM the leader hands the lock over as soon as its decisions are written (before
  the rest of its shutdown), so a standby takes over at once; a standby just stops.
- A fault of the leader's pipeline (a task that died, lnd refusing the macaroon) still
  stops the daemon non-zero, releasing the lock first, so a standby takes over.
- Each daemon writes its own heartbeat with its role (the ``daemons`` hash), which
  ``mailboxctl status`` shows, and its role is the health endpoint's answer
  (:meth:`Metrics.set_role`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from lndmailbox import __version__
from lndmailbox.clock import Clock, SystemClock, wait_either
from lndmailbox.daemon.inbox_look import GRACE
from lndmailbox.daemon.mailbox import Mailbox, MailboxOptions, choose_transport
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.node_lock import NodeLock, Term
from lndmailbox.daemon.old_layout import UpgradeJournal, old_release_gone
from lndmailbox.daemon.standby import Standby
from lndmailbox.daemon.supervisor import cancel_for_good, spawn
from lndmailbox.daemon.webhook import Notifier
from lndmailbox.errors import MailboxError
from lndmailbox.lnd import LndClient, NodeInfo, Transport
from lndmailbox.retry import Outage
from lndmailbox.store import Control, Store

log = logging.getLogger(__name__)

BEAT_EVERY = 1.0
"""Seconds between a daemon's heartbeats in the ``daemons`` hash (and at every change)."""
BEAT_STALE = 5.0
"""Seconds after which a daemon's heartbeat is taken for a dead daemon's and removed."""
_STANDBY_STOPS_WITHIN = 2.0
"""Seconds the standby's stream and last journal write get to end."""
SUBSCRIBED_WITHIN = 5.0
"""Seconds a daemon waits for its standby to be on lnd's stream before it tries for the
lead anyway (lnd slow to accept: leading beats nobody leading)."""
OVERLAP = GRACE
"""Seconds the standby's stream goes on after the leader's own is up (Mailbox.ready):
the leader's subscription may take a moment to carry messages, and what both read is one
journal entry."""


class DaemonBeat:
    """This daemon's own heartbeat in the ``daemons`` hash: its role, pid, host, version."""

    def __init__(self, control: Control, owner: str, metrics: Metrics) -> None:
        self._control = control
        self.owner = owner
        self._metrics = metrics
        self.role = "starting"
        self.ready = False
        self.since = time.time()
        self._started = self.since
        self._changed = asyncio.Event()
        self._outage = Outage("writing this daemon's heartbeat", log)

    def become(self, role: str, *, ready: bool = True) -> None:
        """This daemon is ``role`` now (``standby``, ``leader``): said at once."""
        if role != self.role or ready != self.ready:
            if role != self.role:
                self.since = time.time()
            self.role, self.ready = role, ready
            self._changed.set()
        self._metrics.set_role(role, ready=ready, owner=self.owner, since=round(self.since, 3))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._changed.clear()
            await self._write()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BEAT_EVERY):
                    await wait_either(self._changed, stop)

    async def _write(self) -> None:
        if self.role == "starting":
            return
        info: dict[str, str | int | float | None] = {
            "role": self.role,
            "ready": self.ready,
            "since": round(self.since, 3),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "version": __version__,
            "started_at": round(self._started, 3),
        }
        try:
            await self._control.write_daemon(self.owner, info, stale=BEAT_STALE, ttl=2 * BEAT_STALE)
        except MailboxError as e:
            self._outage.failed(e)
            return
        self._outage.recovered()

    async def remove(self) -> None:
        """At the stop: this daemon's heartbeat goes (within half a second)."""
        with contextlib.suppress(MailboxError, TimeoutError):
            async with asyncio.timeout(0.5):
                await self._control.remove_daemon(self.owner, stale=BEAT_STALE, ttl=2 * BEAT_STALE)


class Roles:
    """Runs one daemon of a node until ``stop``: standby, leader, standby again..."""

    def __init__(
        self,
        *,
        lnd: LndClient,
        store: Store,
        metrics: Metrics,
        options: MailboxOptions,
        info: NodeInfo,
        notifier: Notifier | None = None,
        lock: NodeLock | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._lnd = lnd
        self._store = store
        self._metrics = metrics
        self._options = options
        self._info = info
        self._notifier = notifier
        self._lock = lock or NodeLock(store.control)
        self._clock = clock or SystemClock()
        self.beat = DaemonBeat(store.control, self._lock.owner, metrics)
        self.mailbox: Mailbox | None = None
        """The pipeline while this daemon leads (for tests)."""
        self.overlap = OVERLAP
        """Seconds the standby's stream outlives the leader's own being up."""

    async def run(self, stop: asyncio.Event) -> None:
        """Stands by and leads in turn until ``stop``; a fault goes up."""
        transport = choose_transport(self._options.transport, self._info.version)
        beat_stop = asyncio.Event()
        beating = spawn(self.beat.run(beat_stop), "heartbeat")
        beating.add_done_callback(lambda _: stop.set())  # it only ends when it fails
        beat_ended = False
        try:
            while not stop.is_set():
                if not await self._one_turn(stop, transport) and not stop.is_set():
                    raise MailboxError("a turn as standby or leader ended without a stop")
        finally:
            beat_ended = beating.done()  # before it was told to stop: it failed
            self._metrics.leader.set(0)
            beat_stop.set()
            await asyncio.wait([beating], timeout=_STANDBY_STOPS_WITHIN)
            await cancel_for_good(beating)
            await self.beat.remove()
        if beat_ended:
            # A daemon exits 0 only when told to stop: an end the heartbeat task did not
            # explain (cancelled from within) must not pass for one.
            error = None if beating.cancelled() else beating.exception()
            why = (
                "it was cancelled"
                if beating.cancelled()
                else repr(error)
                if error
                else "it returned"
            )
            raise MailboxError(f"the heartbeat task ended on its own: {why}")

    async def _one_turn(self, stop: asyncio.Event, transport: Transport) -> bool:
        """Stands by, then leads once; True if the lead was lost (stand by again)."""
        standby_stop = asyncio.Event()
        journal = UpgradeJournal(self._store)
        await journal.look()  # before the standby's first write
        standby = Standby(
            lnd=self._lnd,
            transport=transport,
            journal=journal,
            clock=self._clock,
            metrics=self._metrics,
            max_bytes=self._options.max_in_flight_bytes,
        )
        standing = spawn(standby.run(standby_stop), "standby")
        said = asyncio.ensure_future(self._say_standby(standby))
        try:
            if not await self._wait_for_lead(stop, standing, standby, journal):
                return False
            said.cancel()
            return await self._lead(stop, standby_stop)
        finally:
            said.cancel()
            standby_stop.set()
            await asyncio.wait([standing], timeout=_STANDBY_STOPS_WITHIN)
            await cancel_for_good(standing)
            if standing.done() and not standing.cancelled() and standing.exception():
                # While leading, the leader's own stream stands in for it.
                log.warning("the standby's stream ended: %s", standing.exception())

    async def _say_standby(self, standby: Standby) -> None:
        await standby.subscribed.wait()
        if self.beat.role != "leader":
            self.beat.become("standby")
            self._metrics.leader.set(0)

    async def _wait_for_lead(
        self,
        stop: asyncio.Event,
        standing: asyncio.Task[None],
        standby: Standby,
        journal: UpgradeJournal,
    ) -> bool:
        """Waits for the node's lock while the standby journals; False if stopped first.
        The standby failing (lnd refusing the macaroon) goes up. The lock is tried for only
        once the standby is on lnd's stream (or after :data:`SUBSCRIBED_WITHIN`), so that
        a daemon never leads before it reads what lnd publishes."""
        subscribed = asyncio.ensure_future(self._standby_subscribed(stop, standby))
        try:
            await asyncio.wait([subscribed, standing], return_when=asyncio.FIRST_COMPLETED)
        finally:
            subscribed.cancel()
        if standing.done():
            standing.result()  # raises what the standby died of
            if stop.is_set():
                return False
            raise MailboxError("the standby task ended on its own")
        acquire = asyncio.ensure_future(self._acquire(stop, journal))
        try:
            await asyncio.wait([acquire, standing], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not acquire.done():
                await cancel_for_good(acquire)
        took = acquire.done() and not acquire.cancelled() and acquire.result()
        if standing.done():
            # Also when the lock came in the same turn: a standby that failed (lnd refused
            # the macaroon) must not be passed over for the lead.
            if took:
                await self._lock.release()
            standing.result()
        elif took:
            return True
        if stop.is_set():
            return False
        raise MailboxError("the standby task ended on its own")

    async def _acquire(self, stop: asyncio.Event, journal: UpgradeJournal) -> bool:
        """The node's lock, once no daemon of the old release runs (it leads by a lock of
        its own; the standby journals into its layout meanwhile): False if stopped first."""
        return await old_release_gone(journal, stop) and await self._lock.acquire(stop)

    @staticmethod
    async def _standby_subscribed(stop: asyncio.Event, standby: Standby) -> None:
        """Until the standby is on lnd's stream, ``stop``, or :data:`SUBSCRIBED_WITHIN`."""
        try:
            async with asyncio.timeout(SUBSCRIBED_WITHIN):
                await wait_either(standby.subscribed, stop)
        except TimeoutError:
            log.warning(
                "not on lnd's onion stream after %.0fs; trying for the lead anyway",
                SUBSCRIBED_WITHIN,
            )

    async def _lead(self, stop: asyncio.Event, standby_stop: asyncio.Event) -> bool:
        """Leads until the daemon stops (False) or the lock is lost (True)."""
        async with self._lock.leading(stop) as term:
            self._metrics.leader_changes.inc()
            self._metrics.leader.set(1)
            self._metrics.lease = term.leads
            self.beat.become("leader", ready=False)
            log.info("leading: this daemon decides, stores and delivers for the node")
            mailbox = Mailbox(
                lnd=self._lnd,
                store=self._store,
                metrics=self._metrics,
                options=self._options,
                notifier=self._notifier,
                clock=self._clock,
                on_decided=term.hand_over,
                in_lease=term.in_lease,
            )
            self.mailbox = mailbox
            overlap = asyncio.ensure_future(self._stop_when_ready(mailbox, term, standby_stop))
            try:
                await mailbox.run(term.ended)
            finally:
                overlap.cancel()
                self.mailbox = None
                self._metrics.leader.set(0)
        if term.lost is None:
            return False
        self.beat.become("standby")
        log.warning("stepping down: %s; standing by (what this daemon read is decided)", term.lost)
        return True

    async def _stop_when_ready(
        self, mailbox: Mailbox, term: Term, standby_stop: asyncio.Event
    ) -> None:
        """Ends the standby's stream :attr:`overlap` seconds after the leader's own is up
        (or when the term is over): ``ready`` says lnd accepted the leader's subscription,
        not that it carries messages yet, and the journal makes one entry of what both
        read."""
        await wait_either(mailbox.ready, term.ended)
        if mailbox.ready.is_set() and not term.ended.is_set():
            self.beat.become("leader", ready=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.overlap):
                    await term.ended.wait()
        standby_stop.set()
