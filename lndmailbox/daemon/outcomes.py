"""Where every outcome of every message is told: metrics, the log, Redis and the webhook.

The daemon calls one :class:`Reporter` method per outcome. Each call updates the
Prometheus metrics at once. The Redis side (the counters ``mailboxctl status`` shows and
the event stream integrators read) of an outcome that changes the mailbox (stored,
duplicate, evicted, delivered, redelivered, confirmed, unconfirmed) is written by the
store in the same atomic step as the change, so a crash can lose neither; the other outcomes are queued here and written by
:meth:`Reporter.run` in batches, so that a slow or unreachable Redis never holds up deciding
or delivery. Notifications go to the webhook, which never blocks either.

Sized for floods (docs/notifications.md): what a peer's traffic alone can cause is counted
exactly but not told one by one. In the event stream, drops of messages never stored,
duplicates, losses and a flooded peer's stores and evictions are summed per interval
(``summary_interval``) into one ``summary`` entry per kind and reason, with the peers or
senders that caused the most. In the log, the first of each kind and reason in an interval
gets its own line and, when more followed, one ``event=summary`` line at the interval's end
gives their count: at most two lines per reason per interval. A stored message gets its
INFO line and its webhook call unless the store summarized it (a flooded peer's stores but
its first each interval, which still wakes the peer: store/lua/put.lua).

While Redis is unreachable the pending events wait (up to ``_PENDING_EVENTS_LIMIT``, then
the newest are counted as not published) and the writes back off; the outage is logged
once when it starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter, deque
from dataclasses import dataclass

from lndmailbox.clock import wait_either
from lndmailbox.daemon.interfaces import MailWaker
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.webhook import (
    AfterDelivery,
    Notifier,
    after_delivery_event,
    delivered_event,
    stored_event,
)
from lndmailbox.errors import StoreError
from lndmailbox.logs import decision
from lndmailbox.retry import Backoff, Outage, wait_or_stop
from lndmailbox.store import Events
from lndmailbox.store.events import DEFAULT_SUMMARY_INTERVAL, SummaryAddition

log = logging.getLogger(__name__)

_PENDING_EVENTS_LIMIT = 100_000

MAILBOX_DROPS = frozenset(
    {"not_allowed", "mailbox_full", "rejected_by_lnd", "internal_error", "signer_unavailable"}
)
"""Drops about the mailbox's own keeping: their first line in an interval is at INFO (the
others, what a peer sent wrong, at DEBUG); every drop is summarized."""
_FLUSH_INTERVAL = 0.05
_EVENTS_PER_FLUSH = 1000
_LOG_TOP = 3


@dataclass(frozen=True)
class _Event:
    kind: str
    peer: bytes
    message_id: str
    size: int
    reason: str


class _LogDigest:
    """The log's side of the summaries: per (kind, reason), the first line of an interval
    is written, the rest only counted (by peer or sender) until :meth:`close`."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], Counter[bytes]] = {}

    def first(self, kind: str, reason: str, who: bytes | None) -> bool:
        """Counts one; True if it is the first of its kind and reason this interval."""
        key = (kind, reason)
        new = key not in self._counts
        self._counts.setdefault(key, Counter())[who or b""] += 1
        return new

    def close(self) -> None:
        """One line per kind and reason that had more than its first line."""
        counts, self._counts = self._counts, {}
        for (kind, reason), by in sorted(counts.items()):
            total = sum(by.values())
            if total < 2:
                continue
            top = ",".join(f"{w.hex()}:{n}" for w, n in by.most_common(_LOG_TOP) if w)
            level = logging.ERROR if kind == "lost" else logging.INFO
            decision(
                log,
                "summary",
                of=kind,
                reason=reason or None,
                count=total,
                peers=len(by.keys() - {b""}) or None,
                top=top or None,
                level=level,
            )


class Reporter:
    def __init__(
        self,
        *,
        node: bytes,
        metrics: Metrics,
        events: Events,
        notifier: Notifier | None = None,
        summary_interval: float = DEFAULT_SUMMARY_INTERVAL,
    ) -> None:
        self._node = node
        self._metrics = metrics
        self._events = events
        self._notifier = notifier
        self._summary_interval = summary_interval
        self._counters: Counter[str] = Counter()
        self._summary: Counter[tuple[str, str, bytes | None]] = Counter()
        self._pending_events: deque[_Event] = deque()
        self._events_lost = 0
        self._close_due = False
        self._digest = _LogDigest()
        self._wakeup = asyncio.Event()
        self._outage = Outage("writing counters and events to Redis", log)
        self._backoff = Backoff()
        self._waker: MailWaker | None = None

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
        self,
        peer: bytes,
        message_id: str,
        size: int,
        sender: bytes,
        expires_at: float,
        at: float,
        *,
        flooded: bool = False,
    ) -> None:
        """Counted and published (or, ``flooded``, summarized) by the store's put. A flooded
        peer's summarized stores are neither logged one by one nor sent to the webhook: a
        flood must not fill the disk or the webhook's queue. Its first store each interval is
        not summarized (``flooded`` is False): logged and sent, so the peer is still woken."""
        self._metrics.stored.inc()
        if flooded:
            self._summarized_line("stored", "flooded", peer, logging.INFO, id=message_id)
            return
        decision(log, "stored", peer=peer, sender=sender, id=message_id, size=size)
        if self._waker is not None:
            self._waker.mail_stored(peer)
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

    def rescued(self, peer: bytes, size: int, *, why: str) -> None:
        """Native transport: a message for an online next hop is kept, in case lnd's own
        forward missed it. ``why``: ``came_online``, the hop came online too late for the
        daemon to be sure lnd found it there (kept at once, a duplicate if lnd's forward
        worked); ``went_offline``, a message left to lnd whose hop went offline just
        after. Counted ``rescued`` and ``rescued:<why>``; one message is rescued once."""
        self._metrics.rescued.labels(why=why).inc()
        self._count("rescued")
        self._count(f"rescued:{why}")
        decision(log, "rescued", peer=peer, size=size, why=why)

    def duplicate(self, peer: bytes, message_id: str, size: int) -> None:
        self._metrics.duplicate.inc()  # counted and summarized by the store's put
        self._summarized_line("duplicate", "", peer, logging.INFO, id=message_id, size=size)

    def evicted(self, peer: bytes, message_id: str) -> None:
        self._metrics.evicted.inc()  # counted and published (or summarized) by the put
        self._summarized_line("evicted", "peer_cap", peer, logging.INFO, id=message_id)

    def delivered(self, peer: bytes, message_id: str, size: int, delay: float, at: float) -> None:
        self._metrics.delivered.inc()
        self._metrics.delivery_delay_seconds.observe(max(delay, 0.0))
        # Counted and published by the store's move to unconfirmed. The deliverer logs one line
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

    def confirmed(self, peer: bytes, message_id: str, size: int, at: float) -> None:
        """Delivered and confirmed: deleted. Counted and published by the store's confirm
        in the same step; one line per message at DEBUG (the confirmations' line per
        batch is INFO)."""
        self._metrics.confirmed.inc()
        decision(log, "confirmed", peer=peer, id=message_id, size=size, level=logging.DEBUG)
        self._notify_after_delivery("confirmed", peer, message_id, size, at)

    def redelivered(self, peer: bytes, message_id: str, size: int, at: float) -> None:
        """Delivered, and back at the front of its queue unconfirmed: the peer left within
        the window (wake it again). Counted and published by the store's requeue; logged in
        sum (a flapping peer must not fill the log)."""
        self._metrics.redelivered.inc()
        self._summarized_line("redelivered", "", peer, logging.INFO, id=message_id, size=size)
        if self._waker is not None:
            self._waker.mail_stored(peer)
        self._notify_after_delivery("redelivered", peer, message_id, size, at)

    def unconfirmed(self, peer: bytes, message_id: str, size: int, at: float) -> None:
        """Delivered every time, never confirmed, and given up at the bound on redeliveries:
        removed. Counted and published by the store's requeue; logged in sum."""
        self._metrics.unconfirmed.inc()
        self._summarized_line("unconfirmed", "", peer, logging.INFO, id=message_id, size=size)
        self._notify_after_delivery("unconfirmed", peer, message_id, size, at)

    def _notify_after_delivery(
        self, event: AfterDelivery, peer: bytes, message_id: str, size: int, at: float
    ) -> None:
        self._notify(
            after_delivery_event(
                event, node=self._node, peer=peer, message_id=message_id, size=size, at=at
            )
        )

    def expired(self, peer: bytes, message_id: str, size: int) -> None:
        """Published one by one (each expired message was stored and told), logged in sum."""
        self._metrics.expired.inc()
        self._queue_event("expired", peer, message_id, size, "ttl")
        self._summarized_line("expired", "ttl", peer, logging.INFO, id=message_id, size=size)

    def dropped(
        self,
        reason: str,
        *,
        sender: bytes | None,
        peer: bytes | None = None,
        size: int = 0,
        message_id: str = "",
    ) -> None:
        """A message neither forwarded nor stored. One that was stored (it has an id: lnd
        refused its delivery for good) ends like its ``stored`` entry began, one by one;
        one never stored is summarized, by sender."""
        self._metrics.dropped.labels(reason=reason).inc()
        if message_id:
            self._queue_event("dropped", peer or b"", message_id, size, reason)
        else:
            self._summarize("dropped", reason, sender, counter=f"dropped:{reason}")
        # What a peer sent wrong: DEBUG even for the first, or a misbehaving peer's traffic
        # would be at INFO.
        level = logging.INFO if reason in MAILBOX_DROPS else logging.DEBUG
        self._summarized_line(
            "dropped", reason, sender, level, peer=peer, sender=sender, id=message_id or None
        )

    def lost(self, peer: bytes, size: int, reason: str) -> None:
        """A message we meant to keep and could not: the one outcome that must stay at zero.
        Summarized by peer (a Redis outage under load loses many)."""
        self._metrics.lost.labels(reason=reason).inc()
        self._summarize("lost", reason, peer, counter="lost")
        self._summarized_line("lost", reason, peer, logging.ERROR, peer=peer, size=size)

    # The log and the summaries.

    def _summarized_line(
        self, kind: str, reason: str, who: bytes | None, level: int, **fields: object
    ) -> None:
        """The decision line of the first of its kind and reason this interval; the rest at
        DEBUG, summed in the interval's summary line."""
        if not self._digest.first(kind, reason, who):
            level = logging.DEBUG
        if "peer" not in fields:
            fields["peer"] = who
        decision(log, kind, reason=reason or None, level=level, **fields)

    def _summarize(self, kind: str, reason: str, who: bytes | None, *, counter: str) -> None:
        self._counters[counter] += 1
        self._summary[(kind, reason, who)] += 1
        self._wakeup.set()

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

    def close_interval(self) -> None:
        """Ends the summary interval: the log's summary lines now, the stream's summary
        entries with the next flush that reaches Redis."""
        self._digest.close()
        self._close_due = True
        self._wakeup.set()

    async def flush(self) -> None:
        """Writes what is queued to Redis; keeps it queued when Redis is unreachable."""
        counters, self._counters = self._counters, Counter()
        summary, self._summary = self._summary, Counter()
        events = list(itertools.islice(self._pending_events, _EVENTS_PER_FLUSH))
        close = self._close_due and len(events) == len(self._pending_events)
        additions: list[SummaryAddition] = [(k, r, w, n) for (k, r, w), n in summary.items()]
        try:
            await self._events.record(
                counters=dict(counters),
                events=[(e.kind, e.peer, e.message_id, e.size, e.reason) for e in events],
                summary=additions,
                close=close,
            )
        except StoreError:
            self._counters.update(counters)
            self._summary.update(summary)
            raise
        if close:
            self._close_due = False
        for _ in events:
            self._pending_events.popleft()
        if self._pending_events:
            self._wakeup.set()
        if self._events_lost:
            log.warning("event stream fell behind: %d events not published", self._events_lost)
            self._events_lost = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Flushes until ``stop`` is set, then once more: a batch at most every
        ``_FLUSH_INTERVAL`` seconds, and with backoff while Redis fails; ends a summary
        interval every ``summary_interval`` seconds, and the last one at the stop."""
        loop = asyncio.get_running_loop()
        next_close = loop.time() + self._summary_interval
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                left = max(next_close - loop.time(), 0.001)
                await asyncio.wait_for(wait_either(self._wakeup, stop), left)
            self._wakeup.clear()
            if loop.time() >= next_close:
                self.close_interval()
                next_close = loop.time() + self._summary_interval
            pause = _FLUSH_INTERVAL
            try:
                await self.flush()
                self._outage.recovered()
            except StoreError as e:
                self._outage.failed(e)
                pause = self._backoff.delay(self._outage.failures)
                self._wakeup.set()  # what failed is still queued: try again after the pause
            await wait_or_stop(stop, pause)
        self.close_interval()
        try:
            await self.flush()
            while self._pending_events or self._close_due:
                await self.flush()
        except StoreError:
            log.warning("could not write the last counters and events to Redis at shutdown")

    # LSPS5: registrations and wake-ups. Peers cause them, so the event stream gets them
    # summed per interval (kind and reason, the peers with the most), as it gets drops. A
    # webhook is named by its label only: its URL holds a push token.

    def wake_with(self, waker: MailWaker) -> None:
        """With LSPS5 on: every message stored from now on (but a flooded peer's summed
        stores) also wakes its peer through ``waker``."""
        self._waker = waker

    def webhook_set(self, peer: bytes, webhook: str) -> None:
        """A client set a webhook, new or changed (its label: ``webhook``)."""
        self._summarize("webhook_set", "", peer, counter="webhook_set")
        self._summarized_line("webhook_set", "", peer, logging.INFO, webhook=webhook)

    def webhook_removed(self, peer: bytes, webhook: str) -> None:
        self._summarize("webhook_removed", "", peer, counter="webhook_removed")
        self._summarized_line("webhook_removed", "", peer, logging.INFO, webhook=webhook)

    def lsps5_counted(self, webhooks: int) -> None:
        self._metrics.lsps5_webhooks.set(webhooks)

    def wakeup_sent(self, peer: bytes, method: str, webhook: str, attempts: int) -> None:
        self._metrics.lsps5_notifications.labels(method=method, outcome="sent").inc()
        self._summarize("wakeup_sent", method, peer, counter="wakeup_sent")
        self._summarized_line(
            "wakeup_sent", method, peer, logging.INFO, webhook=webhook, attempts=attempts
        )

    def wakeup_failed(
        self, peer: bytes, method: str, reason: str, *, webhook: str | None, error: str
    ) -> None:
        """One webhook (None: all of the client's, unread) given up for ``reason``."""
        self._metrics.lsps5_notifications.labels(method=method, outcome="failed").inc()
        self._summarize("wakeup_failed", reason, peer, counter=f"wakeup_failed:{reason}")
        self._summarized_line(
            "wakeup_failed",
            reason,
            peer,
            logging.WARNING,
            method=method,
            webhook=webhook,
            error=error,
        )

    def wakeup_attempt_failed(self, reason: str) -> None:
        self._metrics.lsps5_notification_attempts_failed.labels(reason=reason).inc()

    def wakeup_dropped(self, peer: bytes, method: str) -> None:
        """Not queued: the queue of notifications was full."""
        self._metrics.lsps5_notifications.labels(method=method, outcome="dropped").inc()
        self._summarize("wakeup_dropped", "queue_full", peer, counter="wakeup_dropped")
        self._summarized_line("wakeup_dropped", "queue_full", peer, logging.WARNING, method=method)

    def wakeup_cooled_down(self, method: str) -> None:
        """Not sent: the client was notified less than the cooldown ago."""
        self._metrics.lsps5_notifications.labels(method=method, outcome="cooldown").inc()

    def lsps_answered(self, method: str, outcome: str) -> None:
        """An LSPS0 request answered: ``outcome`` ``ok`` or its error's code."""
        self._metrics.lsps_requests.labels(method=method, outcome=outcome).inc()

    def lsps_dropped(self, peer: bytes, reason: str) -> None:
        """An LSPS0 message read and not answered (docs/notifications.md has the reasons): what a
        peer sent wrong, so its first line each interval is at DEBUG but for the
        mailbox's own ``answer_failed`` and ``queue_full``."""
        self._metrics.lsps_dropped.labels(reason=reason).inc()
        self._summarize("lsps_dropped", reason, peer, counter=f"lsps_dropped:{reason}")
        level = logging.INFO if reason in ("answer_failed", "queue_full") else logging.DEBUG
        self._summarized_line("lsps_dropped", reason, peer, level)
