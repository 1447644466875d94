"""Webhook notifications: "a message was stored for your user" and "it was delivered".

This is how an LSP wakes a sleeping wallet: on ``stored`` its backend sends the phone a push
notification, the wallet comes online, the mailbox delivers. The webhook must never slow the
mailbox down, so:

- :meth:`Notifier.submit` never blocks and never fails because of the endpoint: it puts the
  event on a bounded queue; when the queue is full the event is dropped and counted
  (``on_failure("queue_full")``).
- :meth:`Notifier.run` is the background part: a few workers POST each event, each attempt
  bounded by ``timeout``, retried with :class:`~lndmailbox.retry.Backoff` until
  ``give_up_after`` seconds after the event was submitted (then ``on_failure("gave_up")``).
  A non-2xx answer, a refused connection and a hanging endpoint are all failed attempts;
  the endpoint's outage is logged once when it starts and once when it ends.
- Every submitted event ends exactly once: sent (a 2xx answer), or passed to ``on_failure``
  with ``"queue_full"``, ``"gave_up"`` or ``"closed"`` (still queued or in flight when
  :meth:`Notifier.aclose` ran). Failures are also logged (event ``notify_failed``).

Delivery is at least once: an attempt that timed out may still have reached the endpoint, so
receivers should deduplicate on ``(event, message_id)``.

Body and signature (docs/notifications.md is the integrator's reference): the event as compact
JSON with sorted keys, ``Content-Type: application/json``, and
``X-Lndmailbox-Signature: sha256=<hex HMAC-SHA256(secret, body)>``. Receivers check it with
:func:`verify_signature` (or the same three lines in any language) over the raw body bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

import httpx

from lndmailbox import __version__
from lndmailbox.errors import ConfigError
from lndmailbox.logs import decision
from lndmailbox.retry import Backoff, Outage

__all__ = [
    "SIGNATURE_HEADER",
    "AfterDelivery",
    "FailureReason",
    "Notifier",
    "after_delivery_event",
    "delivered_event",
    "encode_event",
    "sign",
    "stored_event",
    "verify_signature",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Lndmailbox-Signature"
_SCHEME: Final = "sha256="

FailureReason = Literal["queue_full", "gave_up", "closed"]


def stored_event(
    *, node: bytes, peer: bytes, message_id: str, size: int, at: float, expires_at: float
) -> dict[str, object]:
    """The ``stored`` notification: a message now waits in the mailbox for ``peer``."""
    return {
        "event": "stored",
        "node": node.hex(),
        "peer": peer.hex(),
        "message_id": message_id,
        "size": size,
        "at": at,
        "expires_at": expires_at,
    }


def delivered_event(
    *, node: bytes, peer: bytes, message_id: str, size: int, at: float
) -> dict[str, object]:
    """The ``delivered`` notification: lnd accepted the stored message for ``peer``."""
    return {
        "event": "delivered",
        "node": node.hex(),
        "peer": peer.hex(),
        "message_id": message_id,
        "size": size,
        "at": at,
    }


AfterDelivery = Literal["confirmed", "redelivered", "unconfirmed"]
"""What became of a delivered message: confirmed (safe to delete), back in its queue for
its peer's return (wake it again), or given up unconfirmed at the bound."""


def after_delivery_event(
    event: AfterDelivery, *, node: bytes, peer: bytes, message_id: str, size: int, at: float
) -> dict[str, object]:
    """The ``confirmed``, ``redelivered`` or ``unconfirmed`` notification of a message lnd
    had accepted for ``peer`` (docs/notifications.md)."""
    return {
        "event": event,
        "node": node.hex(),
        "peer": peer.hex(),
        "message_id": message_id,
        "size": size,
        "at": at,
    }


def encode_event(event: Mapping[str, object]) -> bytes:
    """The request body: compact JSON, sorted keys, ASCII only.

    Raises TypeError (a value JSON cannot hold, e.g. bytes) or ValueError (NaN, infinity).
    """
    text = json.dumps(dict(event), separators=(",", ":"), sort_keys=True, allow_nan=False)
    return text.encode("ascii")


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``: ``sha256=`` + hex HMAC-SHA256."""
    return _SCHEME + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` (the X-Lndmailbox-Signature value) signs ``body`` with ``secret``.

    For receivers: pass the raw request body, before any JSON parsing. The comparison takes
    the same time wherever the first difference is. A missing or malformed header is False.
    """
    if not header:
        return False
    candidate = header.strip()
    if candidate[: len(_SCHEME)].lower() != _SCHEME:
        return False
    expected = sign(secret, body).encode("ascii")
    given = (_SCHEME + candidate[len(_SCHEME) :].lower()).encode("utf-8", errors="replace")
    return hmac.compare_digest(expected, given)


class _Failed(Exception):
    """One failed attempt, as the outage log tells it."""


@dataclass(frozen=True)
class _Pending:
    body: bytes
    kind: str
    message_id: str
    peer: str
    deadline: float  # time.monotonic() after which no retry starts


class Notifier:
    """Signs and POSTs events to ``url`` in the background; see the module docstring.

    ``queue_size``: events waiting beyond it are dropped (``"queue_full"``).
    ``give_up_after``: seconds after submit() past which a failed attempt is not retried
    (``"gave_up"``); the last attempt may end up to ``timeout`` later.
    ``timeout``: bound on one attempt, connection to response headers.
    ``concurrency``: events in flight at once, so one slow event does not hold up the rest.
    ``backoff_initial`` / ``backoff_max``: the :class:`~lndmailbox.retry.Backoff` of the
    retries (it starts at the first, doubles per attempt up to the second, jittered to
    between half and all of that).
    ``on_failure(reason)``: called once per event that was not sent (exceptions it raises
    are logged and ignored).
    """

    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        queue_size: int = 1000,
        give_up_after: float = 300.0,
        timeout: float = 5.0,
        on_failure: Callable[[str], None] | None = None,
        concurrency: int = 4,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        trust_env: bool = True,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as e:
            raise ConfigError(f"notify URL {url!r} is not a URL: {e}") from e
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"notify URL {url!r} must be an http:// or https:// URL")
        if not secret:
            raise ConfigError("the notify secret must not be empty")
        if queue_size < 1 or concurrency < 1:
            raise ValueError("queue_size and concurrency must be at least 1")
        if give_up_after < 0 or timeout <= 0 or backoff_initial <= 0 or backoff_max <= 0:
            raise ValueError("give_up_after, timeout and backoff delays must be positive")
        self._url = url
        self._secret = secret
        self._give_up_after = give_up_after
        self._timeout = timeout
        self._on_failure = on_failure
        self._concurrency = concurrency
        self._backoff = Backoff(min(backoff_initial, backoff_max), backoff_max)
        self._outage = Outage(f"the webhook at {parsed.host}", log)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_size)
        self._client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            trust_env=trust_env,
            headers={"User-Agent": f"lndmailbox/{__version__}"},
        )
        self._workers: list[asyncio.Task[None]] = []
        self._running = False
        self._closed = False
        #: Events the endpoint accepted (2xx).
        self.sent = 0
        #: Events given up on, for any reason.
        self.failed = 0

    @property
    def pending(self) -> int:
        """Events waiting in the queue (not counting those in flight)."""
        return self._queue.qsize()

    def submit(self, event: Mapping[str, object]) -> None:
        """Queue ``event`` for sending; returns at once, whatever the endpoint does.

        Call it from the event loop's thread (the queue is an asyncio.Queue). Raises TypeError/ValueError only for an event JSON cannot encode (a bug in the caller).
        """
        body = encode_event(event)
        item = _Pending(
            body=body,
            kind=str(event.get("event", "")),
            message_id=str(event.get("message_id", "")),
            peer=str(event.get("peer", "")),
            deadline=time.monotonic() + self._give_up_after,
        )
        if self._closed:
            self._fail("closed", item)
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._fail("queue_full", item)

    async def run(self) -> None:
        """Send queued events until :meth:`aclose` (returns) or cancellation (raises).

        Returns at once when the notifier is already closed, so a task started just before
        shutdown ends quietly.
        """
        if self._closed:
            return
        if self._running:
            raise RuntimeError("the notifier is already running")
        self._running = True
        try:
            async with asyncio.TaskGroup() as tg:
                self._workers = [
                    tg.create_task(self._worker(), name=f"notify-worker-{n}")
                    for n in range(self._concurrency)
                ]
        finally:
            self._running = False
            self._workers = []

    async def aclose(self, *, drain: float = 0.0) -> None:
        """Stop sending and release the HTTP client; idempotent.

        With ``drain`` > 0 and :meth:`run` running (started, not merely scheduled), first wait up to that many seconds for the
        queue to empty. Events still queued or in flight after that fail with ``"closed"``.
        """
        if self._closed:
            return
        self._closed = True
        if drain > 0 and self._running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain):
                    await self._queue.join()
        workers = list(self._workers)
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        while not self._queue.empty():
            self._fail("closed", self._queue.get_nowait())
            self._queue.task_done()
        await self._client.aclose()

    async def _worker(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._deliver(item)
            except asyncio.CancelledError:
                self._fail("closed", item)
                raise
            finally:
                self._queue.task_done()

    async def _deliver(self, item: _Pending) -> None:
        attempt = 0
        while True:
            attempt += 1
            problem = await self._attempt(item)
            if problem is None:
                self._outage.recovered()
                self.sent += 1
                decision(
                    log,
                    "notified",
                    level=logging.DEBUG,
                    peer=item.peer,
                    id=item.message_id,
                    notify_event=item.kind,
                    attempts=attempt,
                )
                return
            self._outage.failed(_Failed(problem))
            remaining = item.deadline - time.monotonic()
            if remaining <= 0:
                self._fail("gave_up", item, attempts=attempt, error=problem)
                return
            await asyncio.sleep(min(self._backoff.delay(attempt), remaining))

    async def _attempt(self, item: _Pending) -> str | None:
        """POST once; None when the endpoint accepted it, else what went wrong."""
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, item.body),
        }
        try:
            # httpx's timeout bounds each phase; this bounds the whole attempt, so an endpoint
            # that trickles bytes cannot hold a worker longer than `timeout` either.
            async with (
                asyncio.timeout(self._timeout),
                self._client.stream("POST", self._url, content=item.body, headers=headers) as r,
            ):
                status = r.status_code
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except Exception as e:  # httpx errors, and anything else: a failed attempt, never a crash
            return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"

    def _fail(self, reason: FailureReason, item: _Pending, **fields: object) -> None:
        self.failed += 1
        decision(
            log,
            "notify_failed",
            level=logging.WARNING,
            reason=reason,
            peer=item.peer,
            id=item.message_id,
            notify_event=item.kind,
            **fields,
        )
        if self._on_failure is not None:
            try:
                self._on_failure(reason)
            except Exception:
                log.exception("the notify on_failure callback raised")
