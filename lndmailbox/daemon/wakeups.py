"""LSPS5 wake-ups (bLIP-55): the signed POSTs that wake a client's phone when mail waits.

A client registers webhooks with :mod:`~lndmailbox.daemon.lsps_service`; this module
sends them the two notifications the mailbox has reason to send:

- ``lsps5.webhook_registered`` to a webhook just set (:meth:`Wakeups.webhook_set`);
- ``lsps5.onion_message_incoming`` to every webhook of a client that has mail stored
  (:meth:`Wakeups.mail_stored`).

Rules that hold:

- The callers never wait on the network or on Redis: each call only queues a job. Jobs
  beyond ``queue_size`` are dropped and counted (outcome ``dropped``), so a flood of mail
  or a dead push gateway never holds up ingest or delivery.
- One client's notifications go out in the order they were asked for, one job at a time,
  so ``webhook_registered`` reaches a new webhook before any mail notification does.
  Different clients' jobs run side by side on ``workers`` tasks, so one client's hanging
  endpoint delays only that client.
- ``onion_message_incoming`` is sent at most once per ``cooldown`` per client, counted
  from when it was queued, whether its POSTs then succeed or not (a client whose gateway
  is down is not tried more often for it). The cooldown ends early when the client
  connects or disconnects (the phone woke, or went back to sleep with mail possibly
  waiting) and when it sets a webhook. A client with no webhooks is looked up at most
  once per cooldown too, and its skipped notifications are not counted.
- Each attempt is signed anew by lnd's SignMessage with a fresh timestamp, so a retry is
  never refused as stale (lightning-liquidity's validator wants timestamps within ten
  minutes). Only a ``200`` counts as sent; retries back off until ``give_up_after``
  seconds after the job was queued; what :class:`~lndmailbox.errors.WebhookError` says
  cannot be helped by a retry (a 4xx, a redirect, a private address) is not retried.
- A webhook's URL holds the phone's push token: logs name it by
  :func:`~lndmailbox.lsps.webhook_url.webhook_label` only, and metrics not at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from lndmailbox.clock import Clock
from lndmailbox.daemon.interfaces import MessageSigner
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.webhook_http import WebhookPoster
from lndmailbox.errors import LndError, StoreError, WebhookError
from lndmailbox.lsps.lsps5 import (
    ONION_MESSAGE_INCOMING,
    WEBHOOK_REGISTERED,
    NotificationMethod,
    notification_body,
    notification_timestamp,
    signed_text,
)
from lndmailbox.lsps.webhook_url import webhook_label
from lndmailbox.retry import Backoff
from lndmailbox.store.records import Webhook

__all__ = ["Poster", "WakeupOptions", "Wakeups", "WebhookList"]

log = logging.getLogger(__name__)

_COOLDOWNS_KEPT: Final = 100_000
"""Clients whose cooldown is remembered; past that the oldest are forgotten (they may be
notified again before their cooldown ends, never less often)."""


@dataclass(frozen=True)
class WakeupOptions:
    cooldown: float = 60.0
    """Seconds between two ``onion_message_incoming`` to one client."""
    timeout: float = 5.0
    """Bound on one POST, from the connection to the last byte of the answer."""
    give_up_after: float = 60.0
    """Seconds after a job was queued past which a failed POST is not tried again."""
    ca_file: Path | None = None
    """The CA certificates webhooks' TLS is checked against; None: the system's."""
    allow_private: bool = False
    """Whether a webhook may resolve to a loopback, private or link-local address."""
    queue_size: int = 1024
    """Jobs waiting, over all clients, past which new ones are dropped."""
    workers: int = 4
    """Clients served at once."""

    def __post_init__(self) -> None:
        if self.cooldown < 0 or self.timeout <= 0 or self.give_up_after < 0:
            raise ValueError("the cooldown and give-up time must be >= 0, the timeout > 0")
        if self.queue_size < 1 or self.workers < 1:
            raise ValueError("the queue size and the workers must be at least 1")


class WebhookList(Protocol):
    """A client's webhooks (:class:`~lndmailbox.store.webhooks.Webhooks`)."""

    async def list(self, peer: bytes) -> tuple[Webhook, ...]: ...


class Poster(Protocol):
    """POSTs one notification (:class:`~lndmailbox.daemon.webhook_http.WebhookPoster`)."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Returns on a ``200``; raises WebhookError otherwise."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class _Job:
    peer: bytes
    method: NotificationMethod
    webhook: Webhook | None
    """The one webhook to notify; None: all of the client's, read when the job runs."""
    deadline: float
    """``clock.monotonic()`` past which no attempt starts."""


class Wakeups:
    """Queues and sends LSPS5 notifications; see the module docstring."""

    def __init__(
        self,
        *,
        signer: MessageSigner,
        webhooks: WebhookList,
        reporter: Reporter,
        clock: Clock,
        options: WakeupOptions,
        poster: Poster | None = None,
    ) -> None:
        self._signer = signer
        self._webhooks = webhooks
        self._reporter = reporter
        self._clock = clock
        self._options = options
        self._poster: Poster = poster or WebhookPoster(
            timeout=options.timeout, ca_file=options.ca_file, allow_private=options.allow_private
        )
        self._backoff = Backoff(1.0, 10.0)
        self._jobs: dict[bytes, deque[_Job]] = {}
        """Each client's jobs not started yet, in order; a client is here while a worker
        serves it or it waits in ``_ready``."""
        self._ready: asyncio.Queue[bytes] = asyncio.Queue()
        self._waiting = 0
        self._cooldowns: OrderedDict[bytes, tuple[float, bool]] = OrderedDict()
        """Client -> (``clock.monotonic()`` its last ``onion_message_incoming`` was queued,
        whether it had webhooks then), oldest first."""

    # The callers' side: never blocks.

    def webhook_set(self, peer: bytes, app_name: str, url: str) -> None:
        """``lsps5.webhook_registered`` to the webhook ``peer`` just set; the next mail
        notification to ``peer`` then goes out without waiting for the cooldown."""
        self._cooldowns.pop(peer, None)
        webhook = Webhook(app_name, url, int(self._clock.now() * 1000))
        self._queue(_Job(peer, WEBHOOK_REGISTERED, webhook, self._deadline()))

    def mail_stored(self, peer: bytes) -> None:
        """``lsps5.onion_message_incoming`` to every webhook of ``peer``, unless one was
        queued less than ``cooldown`` seconds ago."""
        now = self._clock.monotonic()
        last = self._cooldowns.get(peer)
        if last is not None and now - last[0] < self._options.cooldown:
            if last[1]:
                self._reporter.wakeup_cooled_down(ONION_MESSAGE_INCOMING)
            return
        self._cooldowns.pop(peer, None)
        self._cooldowns[peer] = (now, True)
        while len(self._cooldowns) > _COOLDOWNS_KEPT:
            self._cooldowns.popitem(last=False)
        self._queue(_Job(peer, ONION_MESSAGE_INCOMING, None, self._deadline()))

    def connection_changed(self, peer: bytes) -> None:
        """``peer`` connected or disconnected: its cooldown ends."""
        self._cooldowns.pop(peer, None)

    def _deadline(self) -> float:
        return self._clock.monotonic() + self._options.give_up_after

    def _queue(self, job: _Job) -> None:
        if self._waiting >= self._options.queue_size:
            self._reporter.wakeup_dropped(job.peer, job.method)
            return
        self._waiting += 1
        jobs = self._jobs.get(job.peer)
        if jobs is None:
            self._jobs[job.peer] = deque([job])
            self._ready.put_nowait(job.peer)
        else:
            jobs.append(job)

    # The workers.

    async def run(self, stop: asyncio.Event) -> None:
        """Sends what is queued until ``stop``; then drops what is left and closes."""
        try:
            async with asyncio.TaskGroup() as tasks:
                workers = [
                    tasks.create_task(self._worker(), name=f"wakeup-worker-{n}")
                    for n in range(self._options.workers)
                ]
                await stop.wait()
                for worker in workers:
                    worker.cancel()
        finally:
            self._jobs.clear()
            self._waiting = 0
            await self._poster.aclose()

    async def _worker(self) -> None:
        while True:
            peer = await self._ready.get()
            jobs = self._jobs[peer]
            while jobs:
                job = jobs.popleft()
                self._waiting -= 1
                try:
                    await self._run(job)
                except Exception as e:  # a bug must not end the wake-ups of every client
                    log.exception("an LSPS5 notification failed unexpectedly")
                    self._reporter.wakeup_failed(
                        job.peer, job.method, "internal", webhook=None, error=repr(e)
                    )
            del self._jobs[peer]

    async def _run(self, job: _Job) -> None:
        if job.webhook is not None:
            await self._notify(job, job.webhook)
            return
        try:
            webhooks = await self._webhooks.list(job.peer)
        except StoreError as e:
            self._reporter.wakeup_failed(job.peer, job.method, "store", webhook=None, error=str(e))
            return
        if not webhooks:
            seen = self._cooldowns.get(job.peer)
            if seen is not None:
                self._cooldowns[job.peer] = (seen[0], False)
            return
        await asyncio.gather(*(self._notify(job, w) for w in webhooks))

    async def _notify(self, job: _Job, webhook: Webhook) -> None:
        """POSTs ``job``'s notification to ``webhook`` until it is sent or given up."""
        label = webhook_label(webhook.url)
        body = notification_body(job.method)
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._attempt(webhook.url, body)
            except WebhookError as e:
                self._reporter.wakeup_attempt_failed(e.reason)
                remaining = job.deadline - self._clock.monotonic()
                if not e.retryable or remaining <= 0:
                    self._reporter.wakeup_failed(
                        job.peer, job.method, e.reason, webhook=label, error=str(e)
                    )
                    return
                await asyncio.sleep(min(self._backoff.delay(attempt), remaining))
            else:
                self._reporter.wakeup_sent(job.peer, job.method, label, attempt)
                return

    async def _attempt(self, url: str, body: bytes) -> None:
        timestamp = notification_timestamp(self._clock.now())
        try:
            signature = await self._signer.sign_message(signed_text(timestamp, body))
        except LndError as e:
            raise WebhookError(
                f"lnd did not sign the notification: {e}", reason="sign", retryable=e.retryable
            ) from e
        headers = {
            "content-type": "application/json",
            "x-lsps5-timestamp": timestamp,
            "x-lsps5-signature": signature,
        }
        await self._poster.post(url, body, headers)
