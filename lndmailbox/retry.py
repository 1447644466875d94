"""The one way lndmailbox tries again: one backoff, one jitter, one log line per outage.

Every loop that retries (lnd calls and streams, Redis writes, webhooks, the node lock)
goes through this module, so they all wait alike and all speak alike:

- :class:`Backoff`: exponential, capped, with "equal jitter" (half the delay fixed, half
  random), so a fleet of daemons that lost the same Redis does not come back in step.
- :class:`Outage`: one WARNING when a dependency starts failing, one INFO when it answers
  again (with how long it was away), and DEBUG in between.
- :class:`Retry`: a call tried until it succeeds, the error is not worth retrying, the
  time allowed runs out, or the stop event is set. It is built on tenacity; the first try
  runs without it, since it is the hot path (every peel makes two signer calls) and
  nearly always the only try.

A wait always watches the stop event: a daemon told to stop never sits out a backoff.
When the stop ends the retrying, the last error goes up, as if the time had run out.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    stop_never,
)

_T = TypeVar("_T")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with equal jitter: attempt n waits between d/2 and d, where
    d = min(maximum, initial * 2**(n-1))."""

    initial: float = 0.5
    maximum: float = 5.0
    """A dependency that comes back is noticed within this long. One cap for all must
    suit the tightest loop: the store writer, whose buffer fills while it waits."""

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("a backoff needs 0 < initial <= maximum")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1 = the first retry)."""
        base = min(self.maximum, self.initial * 2.0 ** min(max(attempt, 1) - 1, 32))
        return base / 2 + random.uniform(0, base / 2)


class Outage:
    """Says once that ``what`` is failing, and once that it is back.

    ``meanwhile`` ends the WARNING (what happens while it fails). With ``warn_every``, an
    outage that starts within that many seconds of the last WARNING is told at debug, its
    end too: a dependency that keeps failing and recovering warns once per that span.
    """

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        *,
        meanwhile: str = "retrying with backoff",
        warn_every: float = 0.0,
    ) -> None:
        self.what = what
        self._log = logger
        self._meanwhile = meanwhile
        self._warn_every = warn_every
        self._since: float | None = None
        self._warned_at: float | None = None
        self._warned = False
        self.failures = 0
        """Failures in the current outage (0 while healthy)."""

    def failed(self, error: BaseException | str) -> None:
        self.failures += 1
        if self._since is not None:
            self._log.debug("%s still failing (%s)", self.what, error)
            return
        self._since = now = time.monotonic()
        self._warned = self._warned_at is None or now - self._warned_at >= self._warn_every
        if self._warned:
            self._warned_at = now
        self._log.log(
            logging.WARNING if self._warned else logging.DEBUG,
            "%s failing (%s); %s",
            self.what,
            error,
            self._meanwhile,
        )

    def recovered(self) -> None:
        if self._since is not None:
            self._log.log(
                logging.INFO if self._warned else logging.DEBUG,
                "%s working again after %.1fs and %d failures",
                self.what,
                time.monotonic() - self._since,
                self.failures,
            )
        self._since = None
        self.failures = 0


class _Stopped(Exception):
    """Internal: the stop event ended a backoff wait."""


async def wait_or_stop(stop: asyncio.Event | None, seconds: float) -> bool:
    """Sleeps up to ``seconds``; True (at once) when ``stop`` is or becomes set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    if stop.is_set():
        return True
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


class Retry:
    """Tries a call again while ``retry_on`` says its error is passing.

    One instance per dependency and caller (say, "Redis writes of the keeper"), so that
    its :class:`Outage` speaks for that one thing.
    """

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        *,
        retry_on: Callable[[BaseException], bool],
        backoff: Backoff | None = None,
    ) -> None:
        self.outage = Outage(what, logger)
        self.backoff = backoff or Backoff()
        self._retry_on = retry_on

    async def call(
        self,
        fn: Callable[[], Awaitable[_T]],
        *,
        stop: asyncio.Event | None = None,
        give_up_after: float | None = None,
    ) -> _T:
        """``await fn()``, tried again with backoff while its error is worth retrying.

        Raises the last error when it is not worth retrying, when ``give_up_after``
        seconds have passed since the first failure, or when ``stop`` is set.
        """
        try:
            result = await fn()
        except Exception as e:
            if not self._retry_on(e) or give_up_after == 0 or (stop and stop.is_set()):
                raise
            self.outage.failed(e)
            first_error: Exception = e
        else:
            self.outage.recovered()
            return result
        return await self._retrying(fn, first_error, stop, give_up_after)

    async def _retrying(
        self,
        fn: Callable[[], Awaitable[_T]],
        first_error: Exception,
        stop: asyncio.Event | None,
        give_up_after: float | None,
    ) -> _T:
        async def sleep(seconds: float) -> None:
            if await wait_or_stop(stop, seconds):
                raise _Stopped

        last: list[BaseException] = [first_error]

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            if error is not None:
                last[0] = error
                self.outage.failed(error)

        retrying = AsyncRetrying(
            sleep=sleep,
            retry=retry_if_exception(self._retry_on),
            stop=stop_never if give_up_after is None else stop_after_delay(give_up_after),
            # tenacity's attempt n is our try n + 1, which waits as retry number n + 1.
            wait=lambda state: self.backoff.delay(state.attempt_number + 1),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            await sleep(self.backoff.delay(1))
            async for attempt in retrying:
                with attempt:
                    result = await fn()
                    self.outage.recovered()
                    return result
        except _Stopped:
            raise last[0] from None
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover
