"""The store writer: writes kept messages into Redis, riding out Redis outages.

The decider hands it an :class:`~lndmailbox.daemon.outgoing.OutgoingMessage` and moves on;
the writer stores it with its expiry counted from when it arrived. What arrived while one
write was on its way goes in the next, up to ``_WRITE_BATCH`` messages in one round trip:
under load the store costs one round trip per batch, not per message. While Redis cannot
be reached (down, or refusing writes for memory), messages wait in a bounded in-memory
buffer (``buffer_limit``, ``--buffer-messages``) and the write is retried with backoff
(the outage logged once); a message that does not fit is counted as lost
(``buffer_full``), with one line when the buffer fills and one when it has room again.
At shutdown the buffer is written out if Redis allows.

A message's journal entry is forgotten once it is written, never before: a message the
writer could not write for Redis being away is decided again by the next daemon. One
counted as lost (a full buffer, the store refusing it, a peer's keys damaged) is
forgotten too: it is counted as lost, so it must not come back. Such losses are logged
once per episode, with one line when it starts and one with the count when it ends (or
at shutdown): a flood towards a damaged peer gives two lines, not one per message.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections import deque

from lndmailbox.clock import Clock, wait_either
from lndmailbox.daemon.interfaces import DecisionLog, DeliveryTrigger
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.outgoing import OutgoingMessage
from lndmailbox.errors import StoreError, StoreUnavailableError
from lndmailbox.retry import Retry
from lndmailbox.store import NewMessage, PutResult, PutStatus, Queues, new_message_id

log = logging.getLogger(__name__)

_WRITE_BATCH = 64

_Pending = tuple[OutgoingMessage, str]


class StoreWriter:
    def __init__(
        self,
        *,
        queues: Queues,
        ttl: float,
        reporter: Reporter,
        metrics: Metrics,
        clock: Clock,
        buffer_limit: int,
        delivery: DeliveryTrigger,
        journal: DecisionLog,
    ) -> None:
        self._queues = queues
        self._ttl = ttl
        self._reporter = reporter
        self._metrics = metrics
        self._clock = clock
        self._buffer_limit = buffer_limit
        self._delivery = delivery
        self._journal = journal
        # Each message with its id, chosen once: a write retried after a lost reply
        # finds its own copy and reports it stored, not duplicate.
        self._pending: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._overflow = 0
        """Messages lost since the buffer filled (0 while it has room)."""
        self._refused = 0
        """Messages lost since the store started refusing writes (0 while it takes them)."""
        self._damaged: dict[bytes, int] = {}
        """Per peer whose keys hold the wrong type, messages lost since it was found so."""
        self._retry = Retry(
            f"writing messages to Redis (holding up to {buffer_limit} in memory)",
            log,
            retry_on=lambda e: isinstance(e, StoreUnavailableError),
        )

    def keep(self, message: OutgoingMessage) -> None:
        """Queues ``message`` for the store; never blocks."""
        if len(self._pending) >= self._buffer_limit:
            self._lose_to_full_buffer(message)
            return
        self._pending.append((message, new_message_id(message.received_at)))
        self._wakeup.set()

    def _lose_to_full_buffer(self, message: OutgoingMessage) -> None:
        if not self._overflow:
            log.error(
                "the store writer's buffer is full (%d messages, --buffer-messages): messages "
                "to keep are lost until Redis takes the ones buffered",
                self._buffer_limit,
            )
        self._overflow += 1
        self._journal.decided(message.entry)
        self._reporter.lost(message.peer, message.size, "buffer_full")

    def _has_room_again(self) -> None:
        if self._overflow and len(self._pending) < self._buffer_limit:
            log.warning(
                "the store writer's buffer has room again; %d messages were lost while it was full",
                self._overflow,
            )
            self._overflow = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Writes until ``stop`` is set and the buffer is empty (or Redis is gone)."""
        try:
            await self._run(stop)
        except asyncio.CancelledError:
            if self._pending:
                self._give_up_at_shutdown(StoreUnavailableError("no answer before shutdown"))
            raise
        finally:
            self._end_losses("at shutdown")

    async def _run(self, stop: asyncio.Event) -> None:
        while True:
            if not self._pending:
                if stop.is_set():
                    return
                await wait_either(self._wakeup, stop)
                self._wakeup.clear()
                continue
            batch = list(itertools.islice(self._pending, _WRITE_BATCH))
            stopping = stop.is_set()
            try:
                results = await self._retry.call(functools.partial(self._write, batch), stop=stop)
            except StoreUnavailableError as e:
                # Only the stop ends the retrying. Set before this try: that was the last
                # one; set during the backoff: one more try, Redis may be back.
                if stopping:
                    self._give_up_at_shutdown(e)
                    return
                continue
            except StoreError as e:
                # The script checks before it writes, so nothing was stored: lost, and
                # counted, so forgotten (a later daemon must not deliver them).
                if not self._refused:
                    log.error(
                        "the store refused a write (%s): messages to keep are lost until it "
                        "takes writes again",
                        e,
                    )
                for message, _ in batch:
                    self._pending.popleft()
                    self._refused += 1
                    self._journal.decided(message.entry)
                    self._reporter.lost(message.peer, message.size, "store_error")
                self._has_room_again()
                continue
            self._end_losses("")
            self._written(batch, results)

    async def _write(self, batch: list[_Pending]) -> list[PutResult]:
        started = time.perf_counter()
        results = await self._queues.put_many(
            [
                NewMessage(m.peer, m.sender, m.path_key, m.onion, m.received_at, id)
                for m, id in batch
            ]
        )
        self._metrics.store_seconds.observe(time.perf_counter() - started)
        return results

    def _written(self, batch: list[_Pending], results: list[PutResult]) -> None:
        for (message, _), result in zip(batch, results, strict=True):
            self._pending.popleft()
            self._report(message, result)
            self._journal.decided(message.entry)
        self._has_room_again()

    def _end_losses(self, when: str) -> None:
        """Closes the episodes of refused writes (and, ``when`` given, of damaged peers)
        with the count each lost."""
        if self._refused:
            log.warning(
                "%s; %d messages were lost while it refused them",
                f"the store still refuses writes {when}"
                if when
                else "the store takes writes again",
                self._refused,
            )
            self._refused = 0
        if when:
            for peer, count in self._damaged.items():
                self._log_damaged_end(peer, count, when)
            self._damaged.clear()

    @staticmethod
    def _log_damaged_end(peer: bytes, count: int, when: str) -> None:
        log.warning(
            "%d messages for peer %s were lost to its damaged Redis keys (%s)",
            count,
            peer.hex(),
            when,
        )

    def _report(self, message: OutgoingMessage, result: PutResult) -> None:
        for evicted_id in result.evicted:
            self._reporter.evicted(message.peer, evicted_id)
        if result.status is not PutStatus.REJECTED_DAMAGED and message.peer in self._damaged:
            count = self._damaged.pop(message.peer)
            self._log_damaged_end(message.peer, count, "its keys take writes again")
        if result.status is PutStatus.STORED:
            self._reporter.stored(
                message.peer,
                result.message_id,
                message.size,
                message.sender,
                message.received_at + self._ttl,
                self._clock.now(),
                flooded=result.flooded,
            )
            self._delivery.kick(message.peer)
        elif result.status is PutStatus.DUPLICATE:
            self._reporter.duplicate(message.peer, result.message_id, message.size)
        elif result.status is PutStatus.REJECTED_DAMAGED:
            if message.peer not in self._damaged:
                log.error(
                    "Redis keys of peer %s hold values of the wrong type (not written by the "
                    "mailbox?); messages for it are lost until they are mended",
                    message.peer.hex(),
                )
            self._damaged[message.peer] = self._damaged.get(message.peer, 0) + 1
            self._reporter.lost(message.peer, message.size, "store_error")
        else:
            self._reporter.dropped(
                "mailbox_full", sender=message.sender, peer=message.peer, size=message.size
            )

    def _give_up_at_shutdown(self, error: StoreError) -> None:
        unjournaled = [m for m, _ in self._pending if m.entry is None]
        log.error(
            "shutting down with Redis unavailable (%s): %d buffered messages not written; "
            "%d of them are journaled and will be decided by the next daemon",
            error,
            len(self._pending),
            len(self._pending) - len(unjournaled),
        )
        self._pending.clear()
        for message in unjournaled:
            self._reporter.lost(message.peer, message.size, "shutdown")
