"""Where every outcome of every message is told: metrics, the log, Redis and the webhook.

The daemon calls one :class:`Reporter` method per outcome. Each call updates the
Prometheus metrics and writes one decision line at once. The Redis side (the counters
``mailboxctl status`` shows and the event stream integrators read) of an outcome that
changes the mailbox (stored, duplicate, evicted, delivered) is written by the store in the
same atomic step as the change, so a crash can lose neither; the other outcomes are queued
here and written by :meth:`Reporter.run` in batches, so that a slow or unreachable Redis
never holds up deciding or delivery. Notifications (stored, delivered) go to the webhook,
which never blocks either.

While Redis is unreachable the pending events wait (up to ``_PENDING_EVENTS_LIMIT``, then
the newest are counted as not published) and the writes back off; the outage is logged
once when it starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter, deque
from dataclasses import dataclass

from lndmailbox.clock import wait_either
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.webhook import Notifier, delivered_event, stored_event
from lndmailbox.errors import StoreError
from lndmailbox.logs import decision
from lndmailbox.retry import Backoff, Outage, wait_or_stop
from lndmailbox.store import Events

log = logging.getLogger(__name__)

_PENDING_EVENTS_LIMIT = 100_000

MAILBOX_DROPS = frozenset(
    {"not_allowed", "mailbox_full", "rejected_by_lnd", "internal_error", "signer_unavailable"}
)
"""Drops about the mailbox's own keeping, published as events; others are only counted."""
_FLUSH_INTERVAL = 0.05
_EVENTS_PER_FLUSH = 1000


@dataclass(frozen=True)
class _Event:
    kind: str
    peer: bytes
    message_id: str
    size: int
    reason: str


class Reporter:
    def __init__(
        self,
        *,
        node: bytes,
        metrics: Metrics,
        events: Events,
        notifier: Notifier | None = None,
    ) -> None:
        self._node = node
        self._metrics = metrics
        self._events = events
        self._notifier = notifier
        self._counters: Counter[str] = Counter()
        self._pending_events: deque[_Event] = deque()
        self._events_lost = 0
        self._wakeup = asyncio.Event()
        self._outage = Outage("writing counters and events to Redis", log)
        self._backoff = Backoff()

    # Outcomes, one method each.

    def received(self, sender: bytes, size: int) -> None:
        self._metrics.received.inc()
        self._count("received")
        decision(log, "received", sender=sender, size=size, level=logging.DEBUG)

    def forwarded(self, sender: bytes, peer: bytes, size: int) -> None:
        # Every relayed message: at INFO this would write who talks to whom to disk.
        self._metrics.forwarded.inc()
        self._count("forwarded")
        decision(log, "forwarded", peer=peer, sender=sender, size=size, level=logging.DEBUG)

    def left_to_lnd(self, sender: bytes, peer: bytes, size: int) -> None:
        self._count("left_to_lnd")
        decision(log, "left_to_lnd", peer=peer, sender=sender, size=size, level=logging.DEBUG)

    def stored(
        self, peer: bytes, message_id: str, size: int, sender: bytes, expires_at: float, at: float
    ) -> None:
        self._metrics.stored.inc()  # counted and published by the store's put
        decision(log, "stored", peer=peer, sender=sender, id=message_id, size=size)
        self._notify(
            stored_event(
                node=self._node,
                peer=peer,
                message_id=message_id,
                size=size,
                at=at,
                expires_at=expires_at,
            )
        )

    def rescued(self, peer: bytes, size: int) -> None:
        """A message left to lnd is kept after all: its next hop went offline meanwhile."""
        self._count("rescued")
        decision(log, "rescued", peer=peer, size=size)

    def duplicate(self, peer: bytes, message_id: str, size: int) -> None:
        self._metrics.duplicate.inc()  # counted and published by the store's put
        decision(log, "duplicate", peer=peer, id=message_id, size=size)

    def evicted(self, peer: bytes, message_id: str) -> None:
        self._metrics.evicted.inc()  # counted and published by the store's put
        decision(log, "evicted", peer=peer, id=message_id, reason="peer_cap")

    def delivered(self, peer: bytes, message_id: str, size: int, delay: float, at: float) -> None:
        self._metrics.delivered.inc()
        self._metrics.delivery_delay_seconds.observe(max(delay, 0.0))
        # Counted and published by the store's remove_delivered. The deliverer logs one line
        # per drain at INFO, so the line per message is DEBUG.
        decision(
            log,
            "delivered",
            peer=peer,
            id=message_id,
            size=size,
            delay=round(delay, 3),
            level=logging.DEBUG,
        )
        self._notify(
            delivered_event(node=self._node, peer=peer, message_id=message_id, size=size, at=at)
        )

    def expired(self, peer: bytes, message_id: str, size: int) -> None:
        self._metrics.expired.inc()
        self._queue_event("expired", peer, message_id, size, "ttl")
        decision(log, "expired", peer=peer, id=message_id, size=size)

    def dropped(
        self,
        reason: str,
        *,
        sender: bytes | None,
        peer: bytes | None = None,
        size: int = 0,
        message_id: str = "",
    ) -> None:
        self._metrics.dropped.labels(reason=reason).inc()
        if reason in MAILBOX_DROPS:
            self._queue_event("dropped", peer or b"", message_id, size, reason)
            level = logging.INFO
        else:
            # What a peer sent wrong: counted, but neither a log line at INFO nor an event
            # each, or one misbehaving peer could fill the disk and push real events out.
            self._count(f"dropped:{reason}")
            level = logging.DEBUG
        decision(
            log,
            "dropped",
            peer=peer,
            sender=sender,
            id=message_id or None,
            reason=reason,
            level=level,
        )

    def lost(self, peer: bytes, size: int, reason: str) -> None:
        """A message we meant to keep and could not: the one outcome that must stay at zero."""
        self._metrics.lost.inc()
        self._queue_event("lost", peer, "", size, reason)
        decision(log, "lost", peer=peer, size=size, reason=reason, level=logging.ERROR)

    # The Redis side, written in batches.

    def _count(self, name: str) -> None:
        self._counters[name] += 1
        self._wakeup.set()

    def _queue_event(
        self,
        kind: str,
        peer: bytes,
        message_id: str,
        size: int,
        reason: str,
    ) -> None:
        self._counters[f"{kind}:{reason}" if kind == "dropped" else kind] += 1
        if len(self._pending_events) >= _PENDING_EVENTS_LIMIT:
            self._events_lost += 1
        else:
            self._pending_events.append(_Event(kind, peer, message_id, size, reason))
        self._wakeup.set()

    def _notify(self, event: dict[str, object]) -> None:
        if self._notifier is not None:
            self._notifier.submit(event)

    async def flush(self) -> None:
        """Writes what is queued to Redis; keeps it queued when Redis is unreachable."""
        counters, self._counters = self._counters, Counter()
        events = list(itertools.islice(self._pending_events, _EVENTS_PER_FLUSH))
        try:
            await self._events.record(
                counters=dict(counters),
                events=[(e.kind, e.peer, e.message_id, e.size, e.reason) for e in events],
            )
        except StoreError:
            self._counters.update(counters)
            raise
        for _ in events:
            self._pending_events.popleft()
        if self._pending_events:
            self._wakeup.set()
        if self._events_lost:
            log.warning("event stream fell behind: %d events not published", self._events_lost)
            self._events_lost = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Flushes until ``stop`` is set, then once more: a batch at most every
        ``_FLUSH_INTERVAL`` seconds, and with backoff while Redis fails."""
        while not stop.is_set():
            await wait_either(self._wakeup, stop)
            self._wakeup.clear()
            pause = _FLUSH_INTERVAL
            try:
                await self.flush()
                self._outage.recovered()
            except StoreError as e:
                self._outage.failed(e)
                pause = self._backoff.delay(self._outage.failures)
            await wait_or_stop(stop, pause)
        try:
            await self.flush()
            while self._pending_events:
                await self.flush()
        except StoreError:
            log.warning("could not write the last counters and events to Redis at shutdown")
