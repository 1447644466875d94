"""Time, behind a small interface so expiry, leases and the race window are testable."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch: what expiry times are written in."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: for intervals and windows."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


async def wait_either(event: asyncio.Event, stop: asyncio.Event) -> None:
    """Returns as soon as ``event`` or ``stop`` is set."""
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
