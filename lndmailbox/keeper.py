"""The keeper: writes messages for offline peers into the store, riding out Redis outages.

Ingest hands it a :class:`~lndmailbox.ingest.Parcel` and moves on; the keeper writes it
with its expiry counted from when it arrived. While Redis cannot be reached, parcels wait
in a bounded in-memory buffer and are written when Redis is back; a parcel that does not
fit is counted and logged as lost. At shutdown the buffer is written out if Redis allows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from lndmailbox.clock import Clock
from lndmailbox.errors import StoreError, StoreUnavailableError
from lndmailbox.ingest import Parcel
from lndmailbox.metrics import Metrics
from lndmailbox.report import Reporter
from lndmailbox.store import PutStatus, Store

log = logging.getLogger("lndmailbox.mailbox")


@dataclass(frozen=True)
class _Pending:
    parcel: Parcel
    received_at: float


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
        self._pending: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._outage_since: float | None = None

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def keep(self, parcel: Parcel) -> None:
        """Queues ``parcel`` for the store; never blocks."""
        if len(self._pending) >= self._buffer_limit:
            self._reporter.lost(parcel.peer, parcel.size, "buffer_full")
            self._decided(parcel.entry)
            return
        self._pending.append(_Pending(parcel, self._clock.now()))
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        while True:
            if not self._pending:
                if stop.is_set():
                    return
                waiter = asyncio.ensure_future(self._wakeup.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                self._wakeup.clear()
                continue
            try:
                await self._write(self._pending[0])
            except StoreUnavailableError as e:
                if stop.is_set():
                    self._give_up_at_shutdown(e)
                    return
                self._note_outage(e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except StoreError as e:
                pending = self._pending.popleft()
                log.error("store refused a message: %s", e)
                self._reporter.lost(pending.parcel.peer, pending.parcel.size, "store_error")
                self._decided(pending.parcel.entry)
                continue
            pending = self._pending.popleft()
            self._decided(pending.parcel.entry)
            backoff = 0.1
            self._note_recovery()

    async def _write(self, pending: _Pending) -> None:
        parcel = pending.parcel
        started = time.perf_counter()
        result = await self._store.put(
            parcel.peer, parcel.sender, parcel.path_key, parcel.onion, pending.received_at
        )
        self._metrics.store_seconds.observe(time.perf_counter() - started)
        for evicted_id in result.evicted:
            self._reporter.evicted(parcel.peer, evicted_id)
        if result.status is PutStatus.STORED:
            self._reporter.stored(
                parcel.peer,
                result.message_id,
                parcel.size,
                parcel.sender,
                pending.received_at + self._store.limits.ttl,
                self._clock.now(),
            )
            self._on_stored(parcel.peer)
        elif result.status is PutStatus.DUPLICATE:
            self._reporter.duplicate(parcel.peer, result.message_id, parcel.size)
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
        log.error(
            "shutting down with Redis unreachable (%s): %d buffered messages are lost",
            error,
            len(self._pending),
        )
        while self._pending:
            pending = self._pending.popleft()
            self._reporter.lost(pending.parcel.peer, pending.parcel.size, "shutdown")
