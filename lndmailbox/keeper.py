"""The keeper: writes messages for offline peers into the store, riding out Redis outages.

Ingest hands it a :class:`~lndmailbox.ingest.Parcel` and moves on; the keeper writes it
with its expiry counted from when it arrived. What arrived while one write was on its way
goes in the next, up to ``_WRITE_BATCH`` messages in one round trip: under load the store
costs one round trip per batch, not per message. While Redis cannot be reached, parcels wait
in a bounded in-memory buffer and are written when Redis is back; a parcel that does not
fit is counted and logged as lost. At shutdown the buffer is written out if Redis allows.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable

from lndmailbox.clock import Clock, sleep_or_stop, wait_either
from lndmailbox.errors import StoreError, StoreUnavailableError
from lndmailbox.metrics import Metrics
from lndmailbox.parcel import Parcel
from lndmailbox.report import Reporter
from lndmailbox.store import NewMessage, PutResult, PutStatus, Store, new_message_id

log = logging.getLogger("lndmailbox.mailbox")

_WRITE_BATCH = 64


class Keeper:
    def __init__(
        self,
        *,
        store: Store,
        reporter: Reporter,
        metrics: Metrics,
        clock: Clock,
        buffer_limit: int,
        on_stored: Callable[[bytes], None],
        decided: Callable[[str | None], None],
    ) -> None:
        self._store = store
        self._reporter = reporter
        self._metrics = metrics
        self._clock = clock
        self._buffer_limit = buffer_limit
        self._on_stored = on_stored
        self._decided = decided
        # Each parcel with its message id, chosen once: a write retried after a lost reply
        # finds its own copy and reports it stored, not duplicate.
        self._pending: deque[tuple[Parcel, str]] = deque()
        self._wakeup = asyncio.Event()
        self._outage_since: float | None = None

    def keep(self, parcel: Parcel) -> None:
        """Queues ``parcel`` for the store; never blocks."""
        if len(self._pending) >= self._buffer_limit:
            # Still journaled (when Redis took the journal entry): the next daemon retries.
            self._reporter.lost(parcel.peer, parcel.size, "buffer_full")
            return
        self._pending.append((parcel, new_message_id(parcel.received_at)))
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Writes until ``stop`` is set and the buffer is empty (or Redis is gone)."""
        try:
            await self._run(stop)
        except asyncio.CancelledError:
            if self._pending:
                self._give_up_at_shutdown(StoreUnavailableError("no answer before shutdown"))
            raise

    async def _run(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        while True:
            if not self._pending:
                if stop.is_set():
                    return
                await wait_either(self._wakeup, stop)
                self._wakeup.clear()
                continue
            batch = list(itertools.islice(self._pending, _WRITE_BATCH))
            try:
                results = await self._write(batch)
            except StoreUnavailableError as e:
                if stop.is_set():
                    self._give_up_at_shutdown(e)
                    return
                self._note_outage(e)
                await sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except StoreError as e:
                # The script checks before it writes, so nothing was stored: they stay
                # journaled, and a later daemon tries again.
                log.error("store refused %d messages: %s", len(batch), e)
                for parcel, _ in batch:
                    self._pending.popleft()
                    self._reporter.lost(parcel.peer, parcel.size, "store_error")
                continue
            for (parcel, _), result in zip(batch, results, strict=True):
                self._pending.popleft()
                self._report(parcel, result)
                if result.status is not PutStatus.REJECTED_DAMAGED:
                    self._decided(parcel.entry)  # else left journaled, as for a refused write
            backoff = 0.1
            self._note_recovery()

    async def _write(self, batch: list[tuple[Parcel, str]]) -> list[PutResult]:
        started = time.perf_counter()
        results = await self._store.put_many(
            [
                NewMessage(p.peer, p.sender, p.path_key, p.onion, p.received_at, id)
                for p, id in batch
            ]
        )
        self._metrics.store_seconds.observe(time.perf_counter() - started)
        return results

    def _report(self, parcel: Parcel, result: PutResult) -> None:
        for evicted_id in result.evicted:
            self._reporter.evicted(parcel.peer, evicted_id)
        if result.status is PutStatus.STORED:
            self._reporter.stored(
                parcel.peer,
                result.message_id,
                parcel.size,
                parcel.sender,
                parcel.received_at + self._store.limits.ttl,
                self._clock.now(),
            )
            self._on_stored(parcel.peer)
        elif result.status is PutStatus.DUPLICATE:
            self._reporter.duplicate(parcel.peer, result.message_id, parcel.size)
        elif result.status is PutStatus.REJECTED_DAMAGED:
            log.error(
                "Redis keys of peer %s hold values of the wrong type (not written by the "
                "mailbox?); a message for it is lost",
                parcel.peer.hex(),
            )
            self._reporter.lost(parcel.peer, parcel.size, "store_error")
        else:
            self._reporter.dropped(
                "mailbox_full", sender=parcel.sender, peer=parcel.peer, size=parcel.size
            )

    def _note_outage(self, error: StoreError) -> None:
        if self._outage_since is None:
            self._outage_since = self._clock.monotonic()
            log.warning(
                "Redis unreachable (%s); holding up to %d messages in memory",
                error,
                self._buffer_limit,
            )

    def _note_recovery(self) -> None:
        if self._outage_since is not None:
            took = self._clock.monotonic() - self._outage_since
            log.warning("Redis reachable again after %.1fs; buffered messages written", took)
            self._outage_since = None

    def _give_up_at_shutdown(self, error: StoreError) -> None:
        unjournaled = [p for p, _ in self._pending if p.entry is None]
        log.error(
            "shutting down with Redis unavailable (%s): %d buffered messages not written; "
            "%d of them are journaled and will be decided by the next daemon",
            error,
            len(self._pending),
            len(self._pending) - len(unjournaled),
        )
        self._pending.clear()
        for parcel in unjournaled:
            self._reporter.lost(parcel.peer, parcel.size, "shutdown")
