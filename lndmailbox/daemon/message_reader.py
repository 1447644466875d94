"""The message reader: lnd's onion message stream -> the journal -> the decision queue.

Rules that hold:

- Nothing is read before the daemon knows who is online (the peer follower's first
  ListPeers): every decision needs it.
- lnd keeps nothing for a subscriber that is not there yet, so the reader is on the
  stream before it says the daemon is ready, and ready is said once.
- What a previous daemon left undecided in the journal is queued first, ahead of
  anything read now.
- Every message read is journaled before it is queued (while Redis takes the journal),
  so a daemon that dies before deciding it leaves it to the next one.
- A message lnd hands over malformed is counted as dropped, with lnd's reason.
- On the custom transport lnd's one custom message stream carries LSPS0 messages (type
  37913) as well: each is handed to ``on_lsps`` as it is read, in the stream's order, and
  never journaled, queued or counted against the in-flight cap; without ``on_lsps``
  (LSPS5 off) it is dropped without a word. (The native transport's LSPS0 messages come
  on a stream of their own, read elsewhere.)
- Every message read, malformed, LSPS0 or not, tells the confirmations that its sender was
  there after lnd published it (``Hearing.heard_from`` at ``not_before``): what lnd took
  for that peer before then is confirmed.
- Every message read is stamped, on ``clock.monotonic()``, with ``read_at`` and
  ``not_before``: the earliest moment lnd may have tried to forward it, which is when
  lnd's stream was last known to hold nothing for us (the start of the most recent read
  that had to wait for lnd, or of the subscription: :class:`~lndmailbox.lnd.streams.QuietMark`
  says how "had to wait" is told). Under a backlog (the decider behind, the queue full)
  that is seconds before ``read_at``; the difference is the ``stream_lag_seconds``
  histogram. The native transport's decision leaves a message to lnd only if its next
  hop was online well before ``not_before`` (:mod:`~lndmailbox.daemon.race_guard`).
- In-flight bytes are capped (``max_in_flight_bytes``, ``--max-in-flight-bytes``): a
  message that would take the journal's bytes (Redis's inbox) or the decision queue's
  (waiting, or in a decider's hands) past the cap is turned away before it is journaled,
  counted as dropped (``in_flight_full``), with one WARNING when the cap starts turning
  messages away and one, with the count, once half of it is free again. The count bound
  of the decision queue still holds reading up, as before: the byte cap binds when
  messages are large (a 65 KB garbage flood), not for standard 1.4 KB ones in normal
  running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lndmailbox.clock import Clock
from lndmailbox.daemon.decision_queue import Arrival, DecisionQueue
from lndmailbox.daemon.interfaces import Hearing
from lndmailbox.daemon.journal_writer import JournalWriter
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.supervisor import run_until_stopped
from lndmailbox.lnd import (
    IncomingLspsMessage,
    IncomingMalformed,
    IncomingOnionMessage,
    LndClient,
    Resubscribed,
    Subscription,
    Transport,
)

log = logging.getLogger(__name__)


class MessageReader:
    def __init__(
        self,
        *,
        lnd: LndClient,
        transport: Transport,
        journal: JournalWriter,
        queue: DecisionQueue,
        reporter: Reporter,
        hearing: Hearing,
        metrics: Metrics,
        clock: Clock,
        left_over: list[Arrival],
        peers_known: asyncio.Event,
        ready: asyncio.Event,
        max_in_flight_bytes: int,
        on_lsps: Callable[[IncomingLspsMessage], None] | None = None,
    ) -> None:
        self._lnd = lnd
        self._transport = transport
        self._journal = journal
        self._queue = queue
        self._reporter = reporter
        self._hearing = hearing
        self._metrics = metrics
        self._clock = clock
        self._left_over = left_over
        self._peers_known = peers_known
        self._ready = ready
        self._cap = max_in_flight_bytes
        self._on_lsps = on_lsps
        self._turned_away = 0
        """Messages turned away since the cap was reached (0 while messages fit)."""
        self._messages: (
            Subscription[IncomingOnionMessage | IncomingMalformed | IncomingLspsMessage] | None
        ) = None

    def caught_up_at(self) -> float | None:
        """``clock.monotonic()`` when lnd's stream was last known to hold nothing for this
        daemon: it had read everything lnd published to it before then. None before the
        stream is open."""
        quiet_for = None if self._messages is None else self._messages.quiet_for()
        return None if quiet_for is None else self._clock.monotonic() - quiet_for

    async def run(self, stop: asyncio.Event) -> None:
        """Reads lnd's stream until ``stop`` is set."""
        await run_until_stopped(stop, self._read())

    async def _read(self) -> None:
        await self._peers_known.wait()
        messages = self._lnd.onion_messages(self._transport)
        await messages.wait_subscribed()
        self._messages = messages
        await self._queue_left_over()
        self._ready.set()
        log.info("ready: following lnd's peer events and onion messages")
        async for item in messages:
            if isinstance(item, Resubscribed):
                log.info("onion message stream resubscribed")
                continue
            read_at = self._clock.monotonic()
            lag = messages.lag
            if lag is not None:
                self._metrics.stream_lag_seconds.observe(lag)
            not_before = None if lag is None else read_at - lag
            # The peer was there after lnd published this: what lnd took for it before
            # then is confirmed (a wallet answering its mail, say).
            self._hearing.heard_from(item.peer, read_at if not_before is None else not_before)
            if isinstance(item, IncomingLspsMessage):
                if self._on_lsps is not None:
                    self._on_lsps(item)
            elif isinstance(item, IncomingMalformed):
                self._reporter.dropped(item.reason, sender=item.peer)
            elif self._journal.taken_before(item):
                continue  # taken from the journal (a standby's copy): decided here already
            elif self._fits(item):
                now = self._clock.now()
                entry = self._journal.add(item, now)
                arrival = Arrival(
                    item, entry, received_at=now, read_at=read_at, not_before=not_before
                )
                await self._queue.put(arrival)

    def _fits(self, item: IncomingOnionMessage) -> bool:
        """Whether ``item`` stays within the in-flight cap; else it is turned away."""
        size = len(item.path_key) + len(item.onion)
        held = max(self._journal.bytes, self._queue.bytes)
        if held + size <= self._cap:
            # The episode ends once half the cap is free, not at the first message that
            # fits: a steady flood at the cap gives two lines, not two per decision.
            if self._turned_away and held + size <= self._cap // 2:
                log.warning(
                    "in-flight messages fit under the cap again; %d were turned away",
                    self._turned_away,
                )
                self._turned_away = 0
            return True
        if not self._turned_away:
            log.warning(
                "in-flight messages at the cap (%d of %d bytes, --max-in-flight-bytes): "
                "messages from lnd are turned away until the decider catches up",
                held,
                self._cap,
            )
        self._turned_away += 1
        self._reporter.dropped("in_flight_full", sender=item.peer, size=size)
        return False

    async def _queue_left_over(self) -> None:
        left_over, self._left_over = self._left_over, []
        if left_over:
            log.warning("deciding %d messages a previous daemon left undecided", len(left_over))
        for arrival in left_over:
            await self._queue.put(arrival)
