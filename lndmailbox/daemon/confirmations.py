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
- Nothing is confirmed while lnd's peer events are away (from the moment the peer
  follower sees their stream break, :meth:`Confirmations.lost_sight`, to its resync,
  :meth:`Confirmations.regained_sight`): a peer may leave unseen then (an lnd restart
  drops every connection), and a deadline passing meanwhile proves nothing.
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
  drain handed lnd after its peer left goes back with the rest (the drain's
  :class:`Drain` says it left, and the drain stops). A return takes only what lnd took
  before the departure it is for (``requeue.lua``'s ``sent by``), and a drain starts
  sending only once no return is due: what goes out on the peer's next connection waits
  for its own confirmation, whatever order the departures and returns come in.
- What it holds in memory is bounded by the mail: deadlines of peers with unconfirmed
  mail, returns due, and one :class:`Drain` per drain running. A peer that leaves with no
  unconfirmed mail of this daemon's costs nothing (no script, no entry): any node can
  connect with fresh keys and go.
- At start nothing is known of the time no daemon watched, so all unconfirmed mail goes
  back to its queue, before any drain: a peer online at start may have dropped and come
  back meanwhile, which ListPeers does not tell. A duplicate rather than a loss.
- One peer's failing confirmations (its keys damaged) hold up no other peer's: each peer
  is tried again with its own backoff and its own outage line; Redis unreachable pauses
  them all.
- Everything is in Redis, one script per step (``store/lua/delivered.lua``,
  ``confirm.lua``, ``requeue.lua``): memory holds only the deadlines, and a crash costs a
  redelivery of what was unconfirmed, never a message. A message is confirmed by its
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
import functools
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

from lndmailbox.clock import Clock
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.peers import PeerTracker
from lndmailbox.daemon.supervisor import cancel_for_good, run_until_stopped
from lndmailbox.errors import StoreError, StoreUnavailableError
from lndmailbox.retry import Backoff, Outage, Retry
from lndmailbox.store import Queues, StoredMessage
from lndmailbox.store.records import ms

log = logging.getLogger(__name__)

_IDLE = 60.0
"""Seconds the task sleeps when no deadline is pending (a new one wakes it at once)."""
_UNWIND = 0.5
"""Seconds a return still under way at the stop gets to end once cancelled."""


def _unavailable(error: BaseException) -> bool:
    return isinstance(error, StoreUnavailableError)


def _later(a: int | None, b: int | None) -> int | None:
    """The later of two "sent by" cutoffs (Unix ms); None, everything, is the latest."""
    return None if a is None or b is None else max(a, b)


@dataclass
class _Delivery:
    """One message lnd took for a peer, as this daemon knows it."""

    sent_ms: int
    """When lnd took it, as its unconfirmed entry in Redis says (the key of its confirm)."""
    sent: float
    """Monotonic time it was handed over (at the latest)."""
    due: float
    """Monotonic time it is confirmed if its peer is still there."""


@dataclass
class _Failing:
    """A peer whose confirmations Redis refuses (its keys damaged, say)."""

    outage: Outage
    retry_at: float
    """Monotonic time its confirmations are tried again."""


class Drain:
    """One drain of a peer, from :meth:`Confirmations.delivering` to its end: what lnd took
    in it is told to :meth:`Confirmations.sent` with it."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = False
        """The peer left since the drain began (or may have: lnd's peer events were away).
        What the drain hands lnd from now on goes back to the queue: it should stop."""


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
        self._drains: dict[bytes, Drain] = {}
        self._failing: dict[bytes, _Failing] = {}
        self._returning: dict[bytes, int | None] = {}
        """Peers whose unconfirmed mail is due back: what lnd took by then (Unix ms; None,
        all of it, at start)."""
        self._blind = False
        """lnd's peer events are away: who left meanwhile is unknown, nothing is confirmed."""
        self._locks = _PeerLock()
        self._tasks: set[asyncio.Task[None]] = set()
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

    def peer_went_offline(self, peer: bytes) -> None:
        """``peer`` left: nothing of it is confirmed any more, and its unconfirmed mail goes
        back to its queue (now, or after the drain that holds it). Nothing to do for a
        peer this daemon has no unconfirmed mail of (a return already due takes
        everything; a drain under way returns what it hands lnd from now on)."""
        drain = self._drains.get(peer)
        if drain is not None:
            drain.left = True
        mine = self._drop_sent(peer)
        if mine is not None:
            self._return(peer, self._sent_by(mine.values()))

    def lost_sight(self) -> None:
        """lnd's peer events broke (the peer follower saw their stream end): until they are
        back (:meth:`regained_sight`) a peer can leave unseen, so no deadline confirms
        anything, and nor does hearing from a peer (it may be on a new connection)."""
        if not self._blind:
            log.info("lnd's peer events are away: nothing is confirmed until they are back")
        self._blind = True

    def regained_sight(self, stayed: Iterable[bytes]) -> list[bytes]:
        """lnd's peer events are back (a resync after a resubscription; the departures it
        found are told first) and ``stayed`` are online on both sides of the gap: whether
        their connections lasted is unknown (an lnd restart drops them all), so their
        unconfirmed mail goes back, a duplicate rather than a loss, and so does what a
        drain under way hands lnd from now on; then confirming resumes. Returns those
        peers, to be drained again."""
        unsure = [
            peer
            for peer in stayed
            if peer in self._sent or peer in self._returning or peer in self._drains
        ]
        for peer in unsure:
            self.peer_went_offline(peer)
        if self._blind:
            log.info(
                "lnd's peer events are back: the unconfirmed mail of %d peers online across "
                "the gap goes back to their queues",
                len(unsure),
            )
        self._blind = False
        self._wakeup.set()
        return unsure

    def sent(self, peer: bytes, deliveries: Sequence[tuple[str, int]], drain: Drain) -> None:
        """lnd took these (message id, sent_ms) for ``peer`` in ``drain``
        (:meth:`delivering`), and they are in its unconfirmed list now."""
        if not deliveries:
            return
        if drain.left or not self._peers.is_online(peer):
            # It left meanwhile: they go back with the rest, and get no deadline, which
            # could otherwise pass first while Redis is away for the return.
            earlier = (self._drop_sent(peer) or {}).values()
            self._return(peer, max(self._sent_by(earlier), *(sent_ms for _, sent_ms in deliveries)))
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
        if not mine or self._blind:
            return
        now = self._clock.monotonic()
        heard = now if at is None else at
        for delivery in mine.values():
            if delivery.sent < heard and delivery.due > now:
                delivery.due = now
                self._wakeup.set()

    @contextlib.asynccontextmanager
    async def delivering(self, peer: bytes) -> AsyncIterator[Drain]:
        """Held by a drain of ``peer`` for as long as it runs. First returns to the queue
        whatever unconfirmed mail of the peer is due back; keeps other returns of it from
        running meanwhile. Yields the drain, for :meth:`sent`."""
        await self._recovered.wait()
        async with self._locks.held(peer):
            await self._return_if_due(peer)
            drain = self._drains[peer] = Drain()
            try:
                yield drain
            finally:
                del self._drains[peer]

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
        """The start: what earlier daemons left unconfirmed goes back to its queue, a
        duplicate rather than a loss (no daemon saw whether the connections lasted). False
        if stopped first."""
        try:
            held = await self._read_retry.call(self._queues.unconfirmed_by_peer, stop=stop)
        except StoreUnavailableError:
            if stop.is_set():
                return False
            raise
        for peer in held:
            self._return(peer, None)  # also what a daemon on a clock ahead of ours took
        if held:
            log.info(
                "unconfirmed mail at start: %d messages of %d peers go back to their queues "
                "(no daemon saw whether their connections lasted)",
                sum(len(entries) for entries in held.values()),
                len(held),
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
        """Seconds until the next deadline (``_IDLE`` if none, or while blind)."""
        now = self._clock.monotonic()
        if self._blind:
            return _IDLE
        dues = []
        for peer, mine in self._sent.items():
            if peer in self._returning or not mine:
                continue
            due = min(d.due for d in mine.values())
            failing = self._failing.get(peer)
            dues.append(due if failing is None else max(due, failing.retry_at))
        return max(min(dues, default=now + _IDLE) - now, 0.0)

    async def _confirm_due(self) -> bool:
        """Confirms every delivery whose deadline has passed, one script per peer. False
        when Redis is unreachable (what was due stays due); a peer whose script Redis
        refuses is tried again after its own backoff, and the others go on. Nothing while
        blind."""
        if self._blind:
            return True
        now = self._clock.monotonic()
        for peer in list(self._sent):
            if peer in self._returning:
                continue  # it left: its mail goes back, nothing of it is confirmed
            failing = self._failing.get(peer)
            if failing is not None and failing.retry_at > now:
                continue
            mine = self._sent.get(peer, {})
            due = [(i, d.sent_ms) for i, d in mine.items() if d.due <= now]
            if not due:
                continue
            try:
                confirmed = await self._queues.confirm(peer, due)
            except StoreUnavailableError as e:
                self._outage.failed(e)
                return False
            except StoreError as e:
                self._outage.recovered()  # Redis answers: this peer's keys are the trouble
                if self._sent.get(peer) is mine:  # not forgotten meanwhile (it left)
                    self._peer_failed(peer, e)
                continue
            self._outage.recovered()
            if self._failing.pop(peer, None) is not None and failing is not None:
                failing.outage.recovered()
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

    def _peer_failed(self, peer: bytes, error: StoreError) -> None:
        failing = self._failing.get(peer)
        if failing is None:
            outage = Outage(f"confirming the mail delivered to {peer.hex()}", log)
            failing = self._failing[peer] = _Failing(outage, 0.0)
        failing.outage.failed(error)
        failing.retry_at = self._clock.monotonic() + self._backoff.delay(failing.outage.failures)

    def _drop_sent(self, peer: bytes) -> dict[str, _Delivery] | None:
        """Forgets the peer's deadlines (and their failures); returns them."""
        self._failing.pop(peer, None)
        return self._sent.pop(peer, None)

    # Returning a peer's unconfirmed mail to its queue.

    def _sent_by(self, deliveries: Iterable[_Delivery]) -> int:
        """The cutoff of a departure now: what lnd took until now, and at the latest every
        one of ``deliveries`` (the wall clock may have stepped back since their stamps)."""
        return max([ms(self._clock.now()), *(d.sent_ms for d in deliveries)])

    def _return(self, peer: bytes, sent_by: int | None) -> None:
        """What lnd took for the peer until ``sent_by`` (Unix ms; None: all of it) goes
        back: in the background now, or by the drain that holds the peer, before it reads
        the queue."""
        if peer in self._returning:
            sent_by = _later(self._returning[peer], sent_by)
        self._returning[peer] = sent_by
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
        """Runs the returns of ``peer``'s mail that are due, also one that falls due while
        another runs (a departure then), so that a drain starts only once none is (the
        caller holds the peer)."""
        while peer in self._returning:
            sent_by = self._returning.pop(peer)
            requeue = functools.partial(
                self._queues.requeue, peer, self._max_redeliveries, sent_by=sent_by
            )
            try:
                back, gone = await self._return_retry.call(requeue, stop=self._stop)
            except BaseException:
                self._returning[peer] = _later(self._returning.get(peer, sent_by), sent_by)
                raise
            self._forget_sent(peer, sent_by)
            self._tell_returned(peer, back, gone)

    def _forget_sent(self, peer: bytes, sent_by: int | None) -> None:
        """What lnd took for the peer until ``sent_by`` is back or gone: no deadline of it
        stands."""
        mine = self._sent.get(peer)
        if mine is None:
            return
        for message_id, delivery in list(mine.items()):
            if sent_by is None or delivery.sent_ms <= sent_by:
                del mine[message_id]
        if not mine:
            self._drop_sent(peer)

    def _tell_returned(
        self, peer: bytes, back: Sequence[StoredMessage], gone: Sequence[StoredMessage]
    ) -> None:
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
