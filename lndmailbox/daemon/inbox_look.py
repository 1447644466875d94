"""The inbox look: the leader decides what only a standby journaled.

A standby journals every message it reads; the leader normally reads the same message
itself and decides its own copy (the two copies are one journal entry). Some it does not
read: those lnd published while the leader's stream was down (resubscribing, or not yet
up after a takeover), or lost in a leader's memory. Every :data:`LOOK_EVERY` seconds the
leader lists the inbox's entries (names only) and takes each that stayed there, not its
own, for :data:`GRACE` seconds. Rules that hold:

- An entry the leader holds (read by it, or taken from the journal, and its decision not
  written yet: :meth:`JournalWriter.holds`) is never taken.
- An entry is taken only when two looks at least :data:`GRACE` apart found it in the
  inbox and not the leader's: a message the leader's own stream brings a little later
  than the standby's is the leader's own, and one the leader just decided has left the
  inbox by the second look (its decided record keeps it out). The grace is measured on
  the leader's own clock, so no host's clock skew moves it.
- ... and only once the leader's own stream has been caught up since the first of those
  looks (``caught_up``: lnd's stream to the leader was found holding nothing, the
  reader's :class:`~lndmailbox.lnd.streams.QuietMark`). A leader behind lnd by more than
  the grace (its decider busy, lnd's messages waiting in its stream) still has to read
  what the standby read long ago: taking it would decide it twice, and send a duplicate
  of every message lnd forwarded. A leader whose stream is down takes what the standby
  journaled once its stream is back (the new subscription is a quiet point).
- What is taken is decided like what a dead daemon left: replayed, so sent at once when
  its next hop is online (lnd may not have forwarded it), kept otherwise, within the
  in-flight cap (what does not fit waits for the next look). A message taken is not
  decided again when the leader's stream brings it late
  (:meth:`JournalWriter.taken_before`, the reader's check).
- An entry read back and not decodable (of a version a newer release writes) is passed
  over while it stays in the inbox: it is the newer daemon's, and however many there are
  they never crowd out the entries this release can decide.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lndmailbox.clock import Clock, wait_either
from lndmailbox.daemon.decision_queue import DecisionQueue
from lndmailbox.daemon.journal_writer import JournalWriter
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.errors import StoreError
from lndmailbox.retry import Outage, wait_or_stop
from lndmailbox.store import Journal

log = logging.getLogger(__name__)

LOOK_EVERY = 0.5
"""Seconds between the leader's looks at the inbox."""
GRACE = 1.0
"""Seconds an entry must stay in the inbox, not the leader's, before the leader takes it:
well above the lag between two daemons' streams of one lnd, and short next to a phone's
wake-up."""
_TAKE_AT_ONCE = 256
"""Entries read back in one look at most."""


class InboxLook:
    def __init__(
        self,
        *,
        journal: Journal,
        writer: JournalWriter,
        queue: DecisionQueue,
        metrics: Metrics,
        clock: Clock,
        ttl: float,
        max_in_flight_bytes: int,
        ready: asyncio.Event,
        caught_up: Callable[[], float | None],
        interval: float = LOOK_EVERY,
        grace: float = GRACE,
    ) -> None:
        self._journal = journal
        self._writer = writer
        self._queue = queue
        self._metrics = metrics
        self._clock = clock
        self._ttl = ttl
        self._cap = max_in_flight_bytes
        self._interval = interval
        self._grace = grace
        self._caught_up = caught_up
        self._ready = ready
        self._seen: dict[str, float] = {}
        """Entries found in the inbox and not the leader's, with when first (monotonic)."""
        self._passed: set[str] = set()
        """Entries read back that this release cannot decode, while they stay."""
        self._outage = Outage("looking at the journal for what only a standby read", log)

    async def run(self, stop: asyncio.Event) -> None:
        """Looks every ``interval`` seconds until ``stop``, from the moment the leader
        knows who is online and is on lnd's stream (``ready``): every decision needs the
        first, and the second makes its own reads its own."""
        await wait_either(self._ready, stop)
        while not stop.is_set():
            try:
                taken = await self.look()
            except StoreError as e:
                self._outage.failed(e)
            else:
                self._outage.recovered()
                if taken:
                    log.info("deciding %d messages only a standby journaled", taken)
            await wait_or_stop(stop, self._interval)

    async def look(self) -> int:
        """One look; returns how many entries it took."""
        names = await self._journal.entries()
        now = self._clock.monotonic()
        caught_up = self._caught_up()
        self._passed.intersection_update(names)
        seen: dict[str, float] = {}
        due: list[str] = []
        for name in names:
            if self._writer.holds(name) or name in self._passed:
                continue
            first = self._seen.get(name, now)
            seen[name] = first
            if (
                now - first >= self._grace
                and caught_up is not None
                and caught_up >= first
                and len(due) < _TAKE_AT_ONCE
            ):
                due.append(name)
        self._seen = seen
        if not due:
            return 0
        found = await self._journal.read(due)
        self._passed.update(set(due).difference(item.entry for item in found))
        # Re-checked after the read: the leader's stream may have brought one meanwhile.
        fitting = []
        held = self._writer.bytes
        for item in found:
            if self._writer.holds(item.entry):
                continue
            size = len(item.path_key) + len(item.onion)
            if held + size > self._cap:
                break
            held += size
            fitting.append(item)
        arrivals = self._writer.arrivals(fitting, ttl=self._ttl)
        for item in fitting:
            self._seen.pop(item.entry, None)
        self._metrics.adopted.inc(len(fitting))
        for arrival in arrivals:
            await self._queue.put(arrival)
        return len(fitting)
