"""What a standby does: read lnd's onion stream and journal every message, nothing more.

lnd keeps nothing for a subscriber that is not there, so a leader that dies (or stops)
takes with it whatever lnd publishes until the next leader is on the stream. A standby is
on it all along: each message it reads goes into the node's journal (``inbox``), under
the same entry as the leader's copy (a digest of the message), and the leader, or the
standby once it leads, decides it. Rules that hold:

- A standby decides nothing, stores nothing, delivers nothing and answers nobody (no
  peer follower, no deliverer, no request server): only the leader does. The LSPS0
  messages the custom transport's stream also carries are left alone: the leader's own
  stream has them.
- Its writes skip messages decided in the last seconds (``store/lua/journal.lua``), so a
  copy it reads after the leader decided the message never comes back.
- It forgets what it wrote at once: deleting is the leader's part, with its decisions.
- Redis away: it holds at most ``max_bytes`` of messages to write (the oldest give way;
  the leader has them too, or they are lost with it), and tries again with the store's
  backoff, saying so once.
- On becoming leader, its stream goes on until the leader's own is up (the roles
  overlap): what lnd published meanwhile is journaled by one or both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from lndmailbox.clock import Clock, wait_either
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.supervisor import run_until_stopped
from lndmailbox.errors import StoreError
from lndmailbox.lnd import IncomingOnionMessage, LndClient, Resubscribed, Transport
from lndmailbox.retry import Backoff, Outage, wait_or_stop
from lndmailbox.store import NewEntry
from lndmailbox.store.journal import entry_for

log = logging.getLogger(__name__)

_WRITE_INTERVAL = 0.002
"""Seconds a batch gathers before it is written (as the leader's journal writer)."""
_WRITE_BYTES = 1024 * 1024
"""Message bytes written in one round trip, at most (one message more if it is larger)."""
_LAST_FLUSH = 0.5
"""Seconds the last write at the standby's stop may take."""


class JournalWrites(Protocol):
    """Where a standby journals: the store's :class:`~lndmailbox.store.Journal`, or the
    choice of journal during an upgrade (:class:`~lndmailbox.daemon.old_layout.UpgradeJournal`)."""

    async def write(self, added: Sequence[NewEntry] = ()) -> int: ...


class StandbyJournal:
    """Writes what a standby reads into the journal, in batches; keeps nothing after."""

    def __init__(
        self, journal: JournalWrites, clock: Clock, metrics: Metrics, max_bytes: int
    ) -> None:
        self._journal = journal
        self._clock = clock
        self._metrics = metrics
        self._max_bytes = max_bytes
        self._pending: dict[str, NewEntry] = {}
        self._in_flight: dict[str, NewEntry] = {}
        """The batch being written: out of ``_pending``, so that nothing gives way under it."""
        self._bytes = 0
        """Message bytes held, pending and in flight."""
        self._given_way = 0
        self._outage = Outage("journaling messages in Redis (standing by)", log)
        self._backoff = Backoff()
        self._wakeup = asyncio.Event()

    @property
    def bytes(self) -> int:
        """Message bytes held, pending and in flight."""
        return self._bytes

    def add(self, message: IncomingOnionMessage, now: float) -> None:
        entry = entry_for(message.path_key, message.onion)
        if entry in self._pending or entry in self._in_flight:
            return
        self._pending[entry] = NewEntry(
            entry,
            message.peer,
            message.path_key,
            message.onion,
            now,
            message.encrypted_recipient_data,
        )
        self._bytes += self._pending[entry].size
        # Only pending messages give way (the oldest first, never the one just read): the
        # batch in flight is already on its way to Redis.
        while self._bytes > self._max_bytes and len(self._pending) > 1:
            oldest = next(iter(self._pending))
            self._bytes -= self._pending.pop(oldest).size
            self._given_way += 1
        self._wakeup.set()

    async def flush(self) -> None:
        """Writes what is pending, ``_WRITE_BYTES`` of messages a round trip."""
        while self._pending:
            batch: list[NewEntry] = []
            size = 0
            for item in self._pending.values():
                size += item.size
                if size > _WRITE_BYTES and batch:
                    break
                batch.append(item)
            # The batch leaves ``_pending`` before the write: what ``add`` does meanwhile
            # (new messages, older ones giving way) never touches it.
            for item in batch:
                self._in_flight[item.entry] = self._pending.pop(item.entry)
            try:
                skipped = await self._journal.write(batch)
            except BaseException:
                # Not written (or not known to be): back to the front, in their order.
                self._pending = {**self._in_flight, **self._pending}
                self._in_flight.clear()
                raise
            for item in batch:
                written = self._in_flight.pop(item.entry, None)
                if written is not None:
                    self._bytes -= written.size
            self._metrics.standby_journaled.inc(len(batch) - skipped)
            self._metrics.journal_skipped.inc(skipped)
        self._outage.recovered()
        if self._given_way:
            log.warning(
                "%d messages read while Redis was away gave way to newer ones (the "
                "leader journals them too)",
                self._given_way,
            )
            self._given_way = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Writes batches until ``stop`` is set, then once more (within ``_LAST_FLUSH``)."""
        while not stop.is_set():
            await wait_either(self._wakeup, stop)
            self._wakeup.clear()
            await wait_or_stop(stop, _WRITE_INTERVAL)
            try:
                await self.flush()
            except StoreError as e:
                self._outage.failed(e)
                await wait_or_stop(stop, self._backoff.delay(self._outage.failures))
        try:
            async with asyncio.timeout(_LAST_FLUSH):
                await self.flush()
        except (StoreError, TimeoutError) as e:
            log.info(
                "standing down with %d messages not journaled: %s",
                len(self._pending) + len(self._in_flight),
                e,
            )


class Standby:
    """A standby's task: lnd's onion stream -> the journal, until ``stop``."""

    def __init__(
        self,
        *,
        lnd: LndClient,
        transport: Transport,
        journal: JournalWrites,
        clock: Clock,
        metrics: Metrics,
        max_bytes: int,
    ) -> None:
        self._lnd = lnd
        self._transport = transport
        self._journal = StandbyJournal(journal, clock, metrics, max_bytes)
        self._clock = clock
        self.subscribed = asyncio.Event()
        """Set once lnd accepted the standby's subscription."""

    async def run(self, stop: asyncio.Event) -> None:
        writer = asyncio.create_task(self._journal.run(stop), name="standby-journal")
        try:
            await run_until_stopped(stop, self._read())
        finally:
            stop.set()  # the reader may have died: the writer writes what it has, and ends
            await writer

    async def _read(self) -> None:
        messages = self._lnd.onion_messages(self._transport)
        try:
            await messages.wait_subscribed()
            self.subscribed.set()
            log.info("standing by: journaling lnd's onion messages")
            async for item in messages:
                if isinstance(item, Resubscribed):
                    log.info("onion message stream resubscribed (standing by)")
                elif isinstance(item, IncomingOnionMessage):
                    self._journal.add(item, self._clock.now())
        finally:
            await messages.aclose()
