"""Confirmed delivery: when a delivered message may be deleted, and when it goes back.

lnd accepting a send (SendOnionMessage, SendCustomMessage) means lnd queued or wrote the
bytes, not that the peer read them: a phone whose connection drops right then never gets
the message, and lnd tells nobody. So what lnd accepted is not deleted. The deliverer
moves it from the peer's queue to its unconfirmed list (``delivered``: lnd took it), and
this task decides what becomes of it.

Rules that hold:

- A message is confirmed (removed, counted and published ``confirmed``: the "safe to
  delete" signal) once its peer stayed connected ``confirm_after`` seconds after lnd took
  it, or once an onion message from that peer was read after lnd took it
  (:meth:`Confirmations.heard_from`).
- A peer that leaves first (PEER_OFFLINE, or a resync that finds it gone; or one the
  peer events lost sight of, online on both sides of a resubscription) gets its
  unconfirmed messages back at the front of its queue, in the order lnd took them,
  counted and published ``redelivered``; they go out again when it is back. One that was
  redelivered ``max_redeliveries`` times already is removed instead, counted and
  published ``unconfirmed`` (lnd took it every time, it was never confirmed: not a silent
  loss).
- A peer's drain and the return of its unconfirmed mail never overlap
  (:meth:`Confirmations.delivering`). A drain first does any return that is due, so the
  returned messages go out before the rest of the queue and in their order; and what a
  drain handed lnd after its peer left goes back with the rest.
- At start nothing is known of the time no daemon watched: the unconfirmed mail of a peer
  that was offline when the first ListPeers answered goes back to its queue; that of a
  peer online then is confirmed once the peer has stayed connected a whole window from
  then.
- Everything is in Redis, one script per step (``store/lua/delivered.lua``,
  ``confirm.lua``, ``requeue.lua``): memory holds only the deadlines, and a crash costs at
  most one window after the next start, never a message. A message is confirmed by its
  id and the time it was sent, so a deadline left over from an earlier delivery of it
  never confirms a later one. Unconfirmed messages expire at their TTL like queued ones
  (the sweeper), and the caps count them.

The window trades duplicates for safety, in both directions. A peer that leaves within it
gets the message again although it may well have read it: a wallet that reads its mail
and sleeps again within ``confirm_after`` gets each message once more on its next wake
(``redelivered`` counts them). A window shorter than the time lnd takes to notice a
connection that broke silently (a failed ping) confirms messages that never arrived.
Hearing from the peer after the send (its ``release_held_htlc``, say) ends the wait early:
the peer was there after lnd wrote the message, although that alone does not prove it read
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

from lndmailbox.clock import Clock, wait_either
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.peers import PeerTracker
from lndmailbox.daemon.supervisor import cancel_for_good, run_until_stopped
from lndmailbox.errors import StoreError, StoreUnavailableError
from lndmailbox.retry import Backoff, Outage, Retry
from lndmailbox.store import Queues

log = logging.getLogger(__name__)

_IDLE = 60.0
"""Seconds the task sleeps when no deadline is pending (a new one wakes it at once)."""
_UNWIND = 0.5
"""Seconds a return still under way at the stop gets to end once cancelled."""


def _unavailable(error: BaseException) -> bool:
    return isinstance(error, StoreUnavailableError)


@dataclass
class _Delivery:
    """One message lnd took for a peer, as this daemon knows it."""

    sent_ms: int
    """When lnd took it, as its unconfirmed entry in Redis says (the key of its confirm)."""
    sent: float
    """Monotonic time it was handed over (at the latest)."""
    due: float
    """Monotonic time it is confirmed if its peer is still there."""


class _PeerLock:
    """A lock per peer, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[bytes, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def held(self, peer: bytes) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(peer, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[peer]


class Confirmations:
    def __init__(
        self,
        *,
        queues: Queues,
        peers: PeerTracker,
        reporter: Reporter,
        clock: Clock,
        confirm_after: float,
        max_redeliveries: int,
    ) -> None:
        self._queues = queues
        self._peers = peers
        self._reporter = reporter
        self._clock = clock
        self._confirm_after = confirm_after
        self._max_redeliveries = max_redeliveries
        self._sent: dict[bytes, dict[str, _Delivery]] = {}
        self._departures: dict[bytes, int] = {}
        self._returning: set[bytes] = set()
        self._locks = _PeerLock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._online_at_start: set[bytes] = set()
        self._started_at = 0.0
        self._known = asyncio.Event()
        self._recovered = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._stop = asyncio.Event()
        self._read_retry = Retry("reading unconfirmed mail at start", log, retry_on=_unavailable)
        self._return_retry = Retry(
            "returning unconfirmed mail to its queue", log, retry_on=_unavailable
        )
        self._outage = Outage("confirming delivered mail", log)
        self._backoff = Backoff()

    # What the other parts tell it.

    def started(self, online: frozenset[bytes]) -> None:
        """The first ListPeers answered with ``online`` (the peer follower says so before
        the daemon delivers anything)."""
        if self._known.is_set():
            return
        self._online_at_start = set(online)
        self._started_at = self._clock.monotonic()
        self._known.set()

    def peer_went_offline(self, peer: bytes) -> None:
        """``peer`` left: nothing of it is confirmed any more, and its unconfirmed mail goes
        back to its queue (now, or after the drain that holds it)."""
        self._departures[peer] = self._departures.get(peer, 0) + 1
        self._sent.pop(peer, None)
        self._online_at_start.discard(peer)
        self._return(peer)

    def lost_sight(self, peers: Iterable[bytes]) -> list[bytes]:
        """lnd's peer events were away (a resubscription) and ``peers`` are online on both
        sides of the gap: whether their connections lasted is unknown (an lnd restart
        drops them all), so their unconfirmed mail goes back, a duplicate rather than a
        loss. Returns those that had some, to be drained again."""
        unsure = [peer for peer in peers if self._sent.get(peer)]
        for peer in unsure:
            self.peer_went_offline(peer)
        return unsure

    def sent(self, peer: bytes, deliveries: Sequence[tuple[str, int]], connection: int) -> None:
        """lnd took these (message id, sent_ms) for ``peer`` in a drain that began on
        ``connection`` (:meth:`delivering`), and they are in its unconfirmed list now."""
        if not deliveries:
            return
        if connection != self._departures.get(peer, 0) or not self._peers.is_online(peer):
            # It left meanwhile: they go back with the rest, and get no deadline, which
            # could otherwise pass first while Redis is away for the return.
            self._return(peer)
            return
        now = self._clock.monotonic()
        mine = self._sent.setdefault(peer, {})
        for message_id, sent_ms in deliveries:
            mine[message_id] = _Delivery(sent_ms, now, now + self._confirm_after)
        self._wakeup.set()

    def heard_from(self, peer: bytes, at: float | None = None) -> None:
        """An onion message from ``peer`` was read at ``at`` (monotonic; default now): what
        lnd took for it before then is confirmed at once."""
        mine = self._sent.get(peer)
        if not mine:
            return
        now = self._clock.monotonic()
        heard = now if at is None else at
        for delivery in mine.values():
            if delivery.sent < heard and delivery.due > now:
                delivery.due = now
                self._wakeup.set()

    @contextlib.asynccontextmanager
    async def delivering(self, peer: bytes) -> AsyncIterator[int]:
        """Held by a drain of ``peer`` for as long as it runs. First returns to the queue
        whatever unconfirmed mail of the peer is due back; keeps other returns of it from
        running meanwhile. Yields the peer's connection, for :meth:`sent`."""
        await self._recovered.wait()
        async with self._locks.held(peer):
            await self._return_if_due(peer)
            yield self._departures.get(peer, 0)

    # The task.

    async def run(self, stop: asyncio.Event) -> None:
        """Confirms what is due until ``stop`` is set (after the start's look at Redis)."""
        try:
            await run_until_stopped(stop, self._work(stop))
        finally:
            self._stop.set()
            self._recovered.set()  # a drain at shutdown must not wait for a look never made
            await asyncio.gather(
                *(cancel_for_good(t, within=_UNWIND) for t in list(self._tasks)),
                return_exceptions=True,
            )

    async def _work(self, stop: asyncio.Event) -> None:
        if await self._recover(stop):
            await self._confirm_until(stop)

    async def _recover(self, stop: asyncio.Event) -> bool:
        """The start: what earlier daemons left unconfirmed. False if stopped first."""
        await wait_either(self._known, stop)
        if stop.is_set():
            return False
        try:
            held = await self._read_retry.call(self._queues.unconfirmed_by_peer, stop=stop)
        except StoreUnavailableError:
            if stop.is_set():
                return False
            raise
        waiting = 0
        due = self._started_at + self._confirm_after
        for peer, entries in held.items():
            if peer not in self._online_at_start:
                self._return(peer)
                continue
            mine = self._sent.setdefault(peer, {})
            for entry in entries:
                # What this daemon delivered since its start has a deadline of its own.
                if entry.message.id not in mine:
                    mine[entry.message.id] = _Delivery(entry.sent_ms, self._started_at, due)
                    waiting += 1
        if held:
            log.info(
                "unconfirmed mail at start: %d messages of %d online peers wait %.1fs, "
                "%d offline peers get theirs back in their queues",
                waiting,
                len(held) - len(held.keys() - self._online_at_start),
                self._confirm_after,
                len(held.keys() - self._online_at_start),
            )
        self._recovered.set()
        self._wakeup.set()
        return True

    async def _confirm_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wakeup.clear()
            if await self._confirm_due():
                pause = self._next_due()
            else:
                pause = self._backoff.delay(self._outage.failures)
            # asyncio.wait, not wait_for: Python 3.11's wait_for can swallow a cancellation.
            waiters = [
                asyncio.ensure_future(self._wakeup.wait()),
                asyncio.ensure_future(stop.wait()),
            ]
            try:
                await asyncio.wait(waiters, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    def _next_due(self) -> float:
        """Seconds until the next deadline (``_IDLE`` if none)."""
        now = self._clock.monotonic()
        dues = [
            d.due
            for peer, mine in self._sent.items()
            if peer not in self._returning
            for d in mine.values()
        ]
        return max(min(dues, default=now + _IDLE) - now, 0.0)

    async def _confirm_due(self) -> bool:
        """Confirms every delivery whose deadline has passed, one script per peer. False
        when Redis failed (what was due stays due)."""
        now = self._clock.monotonic()
        for peer in list(self._sent):
            if peer in self._returning:
                continue  # it left: its mail goes back, nothing of it is confirmed
            mine = self._sent.get(peer, {})
            due = [(i, d.sent_ms) for i, d in mine.items() if d.due <= now]
            if not due:
                continue
            try:
                confirmed = await self._queues.confirm(peer, due)
            except StoreError as e:
                self._outage.failed(e)
                return False
            self._outage.recovered()
            for message_id, sent_ms in due:
                delivery = mine.get(message_id)
                if delivery is not None and delivery.sent_ms == sent_ms:
                    del mine[message_id]
            if not mine and self._sent.get(peer) is mine:
                del self._sent[peer]
            at = self._clock.now()
            for message in confirmed:
                self._reporter.confirmed(peer, message.id, message.size, at)
            if confirmed:
                log.info("confirmed %d messages delivered to %s", len(confirmed), peer.hex())
        return True

    # Returning a peer's unconfirmed mail to its queue.

    def _return(self, peer: bytes) -> None:
        """The peer's unconfirmed mail goes back: in the background now, or by the drain
        that holds the peer, before it reads the queue."""
        self._returning.add(peer)
        if self._stop.is_set():
            return  # the next daemon's start returns it
        task = asyncio.create_task(self._return_in_background(peer), name=f"return-{peer.hex()}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _return_in_background(self, peer: bytes) -> None:
        try:
            async with self._locks.held(peer):
                await self._return_if_due(peer)
        except StoreError as e:
            # Still due: the peer's next drain returns it first, or the next daemon's start.
            if not self._stop.is_set():
                log.warning("could not return the unconfirmed mail of %s: %s", peer.hex(), e)

    async def _return_if_due(self, peer: bytes) -> None:
        """Runs the return of ``peer``'s mail if one is due (the caller holds the peer)."""
        if peer not in self._returning:
            return
        self._returning.discard(peer)
        try:
            back, gone = await self._return_retry.call(
                lambda: self._queues.requeue(peer, self._max_redeliveries), stop=self._stop
            )
        except BaseException:
            self._returning.add(peer)
            raise
        # Everything unconfirmed is back in the queue or gone: no deadline of it stands.
        self._sent.pop(peer, None)
        at = self._clock.now()
        for message in back:
            self._reporter.redelivered(peer, message.id, message.size, at)
        for message in gone:
            self._reporter.unconfirmed(peer, message.id, message.size, at)
        if back or gone:
            log.info(
                "%s left before %d delivered messages were confirmed: %d back in its "
                "queue, %d given up after %d redeliveries",
                peer.hex(),
                len(back) + len(gone),
                len(back),
                len(gone),
                self._max_redeliveries,
            )
