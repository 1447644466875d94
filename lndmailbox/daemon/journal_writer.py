"""The journal writer: a write-ahead journal of messages read from lnd and not yet decided.

lnd's streams carry no acknowledgement, so a message the daemon has read is the daemon's
alone: were the process to die before the message is stored, forwarded or dropped, it
would be gone. Each message is journaled in Redis (:class:`lndmailbox.store.Journal`) as
soon as it is read, and forgotten once it is decided; a daemon starting up decides again
whatever its predecessor left (:meth:`JournalWriter.left_over`, read before this daemon
journals anything of its own).

Writes are batched, a few milliseconds at a time, in one round trip with the entries to
forget: the decider never waits for the journal. A message decided before its batch went
out is never written at all. A crash may leave a decided message journaled, and deciding
it again gives at worst a duplicate (the store keeps one copy of a queued message).

While Redis is unreachable the journal is skipped: after a failure no journaling is tried
for a while (the :class:`~lndmailbox.retry.Backoff` of the outage, which is logged once),
and the decider runs on the store writer's memory buffer.
"""

from __future__ import annotations

import asyncio
import logging
import os

from lndmailbox.clock import Clock, wait_either
from lndmailbox.daemon.decision_queue import Arrival
from lndmailbox.errors import StoreError, StoreUnavailableError
from lndmailbox.lnd import IncomingOnionMessage
from lndmailbox.retry import Backoff, Outage, wait_or_stop
from lndmailbox.store import Journal

log = logging.getLogger(__name__)

_WRITE_INTERVAL = 0.002


class JournalWriter:
    def __init__(self, journal: Journal, clock: Clock) -> None:
        self._journal = journal
        self._clock = clock
        self._to_write: dict[str, tuple[bytes, bytes, bytes, float]] = {}
        self._decided: list[str] = []
        self._paused_until = 0.0
        self._outage = Outage("journaling messages in Redis", log)
        self._backoff = Backoff()
        self._wakeup = asyncio.Event()

    def add(self, message: IncomingOnionMessage, now: float) -> str | None:
        """Journals ``message`` (in the next batch); None while journaling is paused."""
        if self._clock.monotonic() < self._paused_until:
            return None
        entry = os.urandom(8).hex()
        self._to_write[entry] = (message.peer, message.path_key, message.onion, now)
        self._wakeup.set()
        return entry

    def decided(self, entry: str | None) -> None:
        if entry is None:
            return
        if self._to_write.pop(entry, None) is None:
            self._decided.append(entry)
            self._wakeup.set()

    async def left_over(self, *, ttl: float) -> list[Arrival]:
        """What a previous daemon read from lnd and did not decide, still within ``ttl``."""
        try:
            pending = await self._journal.pending()
        except StoreError as e:
            log.warning("could not read the journal left by a previous daemon: %s", e)
            return []
        now = self._clock.now()
        arrivals = []
        for item in pending:
            if item.received_at + ttl <= now:
                self.decided(item.entry)  # expired while nobody held it
                continue
            message = IncomingOnionMessage(
                peer=item.sender, path_key=item.path_key, onion=item.onion
            )
            arrivals.append(
                Arrival(message, item.entry, replayed=True, received_at=item.received_at)
            )
        return arrivals

    async def flush(self) -> None:
        written, self._to_write = self._to_write, {}
        decided, self._decided = self._decided, []
        try:
            await self._journal.write(
                [(entry, *fields) for entry, fields in written.items()], decided
            )
        except StoreError as e:
            self._decided[:0] = decided
            self._outage.failed(e)
            if isinstance(e, StoreUnavailableError):
                # The batch is not journaled: its messages go on, held in memory only.
                pause = self._backoff.delay(self._outage.failures)
                self._paused_until = self._clock.monotonic() + pause
            raise
        self._outage.recovered()

    async def run(self, stop: asyncio.Event) -> None:
        """Writes batches until ``stop`` is set, then once more."""
        while not stop.is_set():
            await wait_either(self._wakeup, stop)
            self._wakeup.clear()
            await wait_or_stop(stop, _WRITE_INTERVAL)  # gather a batch
            try:
                await self.flush()
            except StoreError:
                await wait_or_stop(stop, self._backoff.delay(self._outage.failures))
        try:
            await self.flush()
        except StoreError:
            log.warning("could not clear the journal at shutdown; it is decided again at start")
