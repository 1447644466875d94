"""The LSPS0 server (bLIP-50) and its one protocol, LSPS5's webhooks (bLIP-55).

Clients send JSON-RPC requests in custom messages of type 37913; this task answers each
one through lnd (SendCustomMessage), and keeps the clients' webhooks in the store, for
:mod:`~lndmailbox.daemon.wakeups` to notify. On the native transport it reads lnd's
custom message stream itself; on the custom transport the message reader hands it the
LSPS0 messages of the one stream both read (:meth:`LspsService.offer`).

Rules that hold:

- Nothing a peer sends can stop the daemon or hold up mail. :meth:`LspsService.offer`
  never blocks: each peer has a token bucket (``requests_per_minute``, as many in a
  burst); past it, and past ``queue_size`` requests waiting in all, a message is dropped
  unanswered and counted (``lsps_dropped``). A message over ``max_request_bytes`` is not
  parsed: it is answered -32600 with ``"id": null``.
- Every request with a usable id gets one answer (-32700, -32600, -32601, -32602 as
  LSPS0 says, and LSPS5's codes); a notification or a response gets none.
- A registration stands in Redis (and on its replicas, as ``--redis-wait-replicas`` asks)
  before the answer goes out; when Redis fails the answer is -32603 and nothing is
  written. A new or changed webhook then gets ``lsps5.webhook_registered``.
- ``lsps5.set_webhook`` needs prior activity, as lightning-liquidity's service does
  (1003 otherwise): a channel with the node, a webhook registered already, or the
  allowlist. The other methods answer anyone: they only read or remove its own.
- Requests run one at a time, in the order they were read, so one client's requests are
  answered in its order.
- A client is kept while it has a channel: the retention pass, at start and hourly,
  marks every client with a channel seen, and removes those not seen (no channel, no
  request) for ``retention``: at least 7 days after its last channel closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from lndmailbox.clock import Clock
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.supervisor import run_until_stopped
from lndmailbox.daemon.wakeups import Wakeups
from lndmailbox.errors import LndError, LspsError, PeerOfflineError, StoreError
from lndmailbox.lnd import IncomingLspsMessage, LndClient, Transport
from lndmailbox.lsps import lsps5
from lndmailbox.lsps.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    Request,
    encode_error,
    encode_result,
    method_not_found,
    read_request,
)
from lndmailbox.lsps.webhook_url import webhook_label
from lndmailbox.retry import wait_or_stop
from lndmailbox.store import Store

__all__ = ["LIST_PROTOCOLS", "RETENTION_AT_LEAST", "LspsOptions", "LspsService"]

log = logging.getLogger(__name__)

LIST_PROTOCOLS: Final = "lsps0.list_protocols"
RETENTION_AT_LEAST: Final = 7 * 86400.0
"""bLIP-55: a client's webhooks outlive its last channel by at least 7 days."""
_RETENTION_EVERY: Final = 3600.0
_BUCKETS_KEPT: Final = 100_000
_KNOWN_METHODS: Final = frozenset(
    {LIST_PROTOCOLS, lsps5.SET_WEBHOOK, lsps5.LIST_WEBHOOKS, lsps5.REMOVE_WEBHOOK}
)


@dataclass(frozen=True)
class LspsOptions:
    max_webhooks: int = 10
    """Webhooks one client may have."""
    max_request_bytes: int = 4096
    requests_per_minute: int = 60
    """Each peer's rate; a burst of as many is allowed."""
    retention: float = 30 * 86400.0
    """Seconds a client is kept after it was last seen (had a channel, or asked)."""
    queue_size: int = 1024

    def __post_init__(self) -> None:
        if self.max_webhooks < 1 or self.max_request_bytes < 64 or self.queue_size < 1:
            raise ValueError("max_webhooks and queue_size >= 1, max_request_bytes >= 64")
        if self.requests_per_minute < 1:
            raise ValueError("requests_per_minute must be at least 1")
        if self.retention < RETENTION_AT_LEAST:
            raise ValueError("the retention must be at least 7 days")


class ChannelPeers(Protocol):
    """Who has a channel with the node (:class:`~lndmailbox.daemon.peers.ChannelMap`)."""

    async def has_channel(self, peer: bytes) -> bool: ...

    async def channel_peers(self) -> frozenset[bytes]:
        """Every peer with a channel, read from lnd now."""
        ...


class _RateLimit:
    """A token bucket per peer: ``per_minute`` tokens, refilled evenly. Only the peers
    seen last are remembered; one forgotten starts again with a full bucket."""

    def __init__(self, per_minute: int, clock: Clock) -> None:
        self._size = float(per_minute)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def take(self, peer: bytes) -> bool:
        now = self._clock.monotonic()
        tokens, at = self._buckets.pop(peer, (self._size, now))
        tokens = min(self._size, tokens + (now - at) * self._rate)
        allowed = tokens >= 1.0
        self._buckets[peer] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > _BUCKETS_KEPT:
            self._buckets.popitem(last=False)
        return allowed


class LspsService:
    """Answers LSPS0 requests; see the module docstring."""

    def __init__(
        self,
        *,
        lnd: LndClient,
        transport: Transport,
        store: Store,
        channels: ChannelPeers,
        wakeups: Wakeups,
        reporter: Reporter,
        clock: Clock,
        options: LspsOptions,
    ) -> None:
        self._lnd = lnd
        self._transport = transport
        self._store = store
        self._channels = channels
        self._wakeups = wakeups
        self._reporter = reporter
        self._clock = clock
        self._options = options
        self._limit = _RateLimit(options.requests_per_minute, clock)
        self._queue: asyncio.Queue[IncomingLspsMessage] = asyncio.Queue(options.queue_size)

    def offer(self, message: IncomingLspsMessage) -> None:
        """Takes one message a peer sent, to be answered in turn; never blocks."""
        if not self._limit.take(message.peer):
            self._reporter.lsps_dropped(message.peer, "rate_limited")
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self._reporter.lsps_dropped(message.peer, "queue_full")

    async def run(self, stop: asyncio.Event) -> None:
        """Answers until ``stop``; on the native transport reads lnd's stream too."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(run_until_stopped(stop, self._answer_all()))
            tasks.create_task(self._keep_clients(stop))
            if self._transport is Transport.NATIVE:
                tasks.create_task(run_until_stopped(stop, self._read()))

    async def _read(self) -> None:
        async for message in self._lnd.lsps_messages():
            if isinstance(message, IncomingLspsMessage):
                self.offer(message)

    async def _answer_all(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                answer = await self.answer(message)
            except Exception:  # a bug must not stop the server for every client
                log.exception("an LSPS0 request of %s failed unexpectedly", message.peer.hex())
                answer = encode_error(LspsError(INTERNAL_ERROR, "internal error"))
            if answer is not None:
                await self._send(message.peer, answer)

    async def _send(self, peer: bytes, answer: bytes) -> None:
        try:
            await self._lnd.send_lsps_message(peer, answer)
        except PeerOfflineError:
            self._reporter.lsps_dropped(peer, "answer_failed")
        except LndError as e:
            log.warning("could not answer an LSPS0 request of %s: %s", peer.hex(), e)
            self._reporter.lsps_dropped(peer, "answer_failed")

    # One request.

    async def answer(self, message: IncomingLspsMessage) -> bytes | None:
        """The answer to ``message``; None for what needs none (counted)."""
        if len(message.payload) > self._options.max_request_bytes:
            self._reporter.lsps_answered("other", str(INVALID_REQUEST))
            return encode_error(
                LspsError(
                    INVALID_REQUEST,
                    f"invalid request: over {self._options.max_request_bytes} bytes",
                )
            )
        try:
            request = read_request(message.payload)
        except LspsError as e:
            self._reporter.lsps_answered("other", str(e.code))
            return encode_error(e)
        if request is None:
            self._reporter.lsps_dropped(message.peer, "not_a_request")
            return None
        method = request.method if request.method in _KNOWN_METHODS else "other"
        try:
            result = await self._serve(message.peer, request)
        except LspsError as e:
            self._reporter.lsps_answered(method, str(e.code))
            return encode_error(e)
        except StoreError as e:
            log.warning("an LSPS0 request of %s failed in Redis: %s", message.peer.hex(), e)
            self._reporter.lsps_answered(method, str(INTERNAL_ERROR))
            return encode_error(
                LspsError(INTERNAL_ERROR, "internal error: try again", request_id=request.id)
            )
        self._reporter.lsps_answered(method, "ok")
        return encode_result(request.id, result)

    async def _serve(self, peer: bytes, request: Request) -> Mapping[str, object]:
        if request.method == LIST_PROTOCOLS:
            return {"protocols": [5]}
        if request.method == lsps5.SET_WEBHOOK:
            return await self._set_webhook(peer, request)
        if request.method == lsps5.LIST_WEBHOOKS:
            webhooks = self._store.webhooks
            listed = await webhooks.list(peer)
            await webhooks.touch([peer], now_ms=self._now_ms())
            return lsps5.list_webhooks_result(
                [w.app_name for w in listed], self._options.max_webhooks
            )
        if request.method == lsps5.REMOVE_WEBHOOK:
            app_name = lsps5.read_remove_webhook(request.params, request.id)
            held = {w.app_name: w for w in await self._store.webhooks.list(peer)}
            if not await self._store.webhooks.remove(peer, app_name, now_ms=self._now_ms()):
                raise lsps5.app_name_not_found(request.id)
            gone = held.get(app_name)
            self._reporter.webhook_removed(peer, webhook_label(gone.url) if gone else "?")
            return {}
        raise method_not_found(request)

    async def _set_webhook(self, peer: bytes, request: Request) -> Mapping[str, object]:
        wanted = lsps5.read_set_webhook(request.params, request.id)
        if not await self._has_prior_activity(peer):
            raise lsps5.no_prior_activity(request.id)
        limit = self._options.max_webhooks
        done = await self._store.webhooks.set(
            peer, wanted.app_name, wanted.webhook, max_webhooks=limit, now_ms=self._now_ms()
        )
        if done.too_many:
            raise lsps5.too_many_webhooks(request.id, limit)
        if not done.no_change:
            self._reporter.webhook_set(peer, webhook_label(wanted.webhook))
            self._wakeups.webhook_set(peer, wanted.app_name, wanted.webhook)
        return lsps5.set_webhook_result(done.num_webhooks, limit, done.no_change)

    async def _has_prior_activity(self, peer: bytes) -> bool:
        try:
            if await self._channels.has_channel(peer):
                return True
        except LndError as e:
            # lnd away: the store may still know the client; refusing would be wrong only
            # for a first registration, which the client can try again.
            log.info("could not read lnd's channels for an LSPS5 client: %s", e)
        webhooks = self._store.webhooks
        return await webhooks.last_seen(peer) is not None or await self._store.allowlist.contains(
            peer
        )

    def _now_ms(self) -> int:
        return int(self._clock.now() * 1000)

    # Retention.

    async def _keep_clients(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.keep_clients()
            except (LndError, StoreError) as e:
                log.warning("the LSPS5 retention pass failed, tried again in an hour: %s", e)
            if await wait_or_stop(stop, _RETENTION_EVERY):
                return

    async def keep_clients(self) -> int:
        """Marks every client with a channel seen now, removes those not seen for the
        retention, and counts what is left; how many clients were removed."""
        with_channels = await self._channels.channel_peers()
        webhooks = self._store.webhooks
        now_ms = self._now_ms()
        await webhooks.touch(with_channels, now_ms=now_ms)
        started = time.monotonic()
        removed = await webhooks.prune(
            seen_before_ms=now_ms - int(self._options.retention * 1000),
            keep=lambda peer: peer in with_channels,
        )
        clients, count = await webhooks.count()
        self._reporter.lsps5_counted(count)
        if removed:
            log.info(
                "LSPS5: removed %d clients not seen for %s days, %d left with %d webhooks (%.1f s)",
                removed,
                f"{self._options.retention / 86400:g}",
                clients,
                count,
                time.monotonic() - started,
            )
        return removed
