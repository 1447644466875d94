"""The deliverer against a real Redis, on the paths a drain can leave early.

lnd is the sender the deliverer is built with: here one that takes a number of messages
and then answers as lnd does when the macaroon may not send. Whatever it took must leave
the queue for the unconfirmed list (and be told as delivered) even though the drain ends
with an error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from lndmailbox.clock import SystemClock
from lndmailbox.daemon.confirmations import Confirmations
from lndmailbox.daemon.deliverer import Deliverer
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.peers import PeerTracker
from lndmailbox.errors import LndPermissionError, StoreUnavailableError
from lndmailbox.store import Limits, Queues, Store, StoredMessage
from lndmailbox.store.audit import audit
from tests.daemon_harness import wait_until
from tests.store_helpers import put_one

NODE = bytes.fromhex("02" + "44" * 32)


def pubkey() -> bytes:
    return b"\x02" + os.urandom(32)


async def queue_mail(store: Store, peer: bytes, count: int) -> list[StoredMessage]:
    for _ in range(count):
        await put_one(store, peer, pubkey(), pubkey(), b"\x00" + os.urandom(1365), time.time())
    return await store.queues.messages(peer)


@dataclass
class SendWith:
    """lnd's part of a delivery, played by ``play``."""

    play: Callable[[bytes, bytes, bytes], Awaitable[None]]

    async def send(self, peer: bytes, path_key: bytes, onion: bytes) -> None:
        await self.play(peer, path_key, onion)


_CONFIRMING: list[tuple[asyncio.Event, asyncio.Task[None]]] = []


@pytest.fixture(autouse=True)
async def _stop_confirmations() -> AsyncIterator[None]:
    """Each deliverer's confirmations task runs for the test, and stops after it."""
    yield
    while _CONFIRMING:
        stop, task = _CONFIRMING.pop()
        stop.set()
        await task


def deliverer_to(
    peer: bytes,
    store: Store,
    send: Callable[[bytes, bytes, bytes], Awaitable[None]],
    queues: Queues | None = None,
) -> Deliverer:
    """A deliverer that finds ``peer`` online and hands lnd's part to ``send``, with its
    confirmations running (a window no test waits out: what lnd took stays unconfirmed)."""
    clock = SystemClock()
    peers = PeerTracker(clock)
    peers.mark(peer, True)
    reporter = Reporter(node=NODE, metrics=Metrics(), events=store.events)
    confirmations = Confirmations(
        queues=queues or store.queues,
        peers=peers,
        reporter=reporter,
        clock=clock,
        confirm_after=3600,
        max_redeliveries=3,
    )
    stop = asyncio.Event()
    _CONFIRMING.append((stop, asyncio.create_task(confirmations.run(stop))))
    return Deliverer(
        queues=queues or store.queues,
        sender=SendWith(send),
        peers=peers,
        confirmations=confirmations,
        reporter=reporter,
        clock=clock,
    )


async def test_what_lnd_took_before_a_fatal_answer_leaves_the_queue(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=100))
    bob = pubkey()
    queued = await queue_mail(store, bob, 40)
    taken: list[bytes] = []

    async def send(peer: bytes, path_key: bytes, onion: bytes) -> None:
        if len(taken) == 21:  # not a multiple of the removal group: some are in hand
            raise LndPermissionError(
                "permission denied", rpc="SendOnionMessage", code="UNKNOWN", retryable=False
            )
        taken.append(onion)

    deliverer = deliverer_to(bob, store, send)
    deliverer.kick(bob)
    with pytest.raises(LndPermissionError):
        await asyncio.wait_for(deliverer.fatal, 10)
    await deliverer.close()

    assert taken == [m.onion for m in queued[:21]]
    assert [m.onion for m in await store.queues.messages(bob)] == [m.onion for m in queued[21:]]
    unconfirmed = [u.message.id for u in await store.queues.unconfirmed(bob)]
    assert unconfirmed == [m.id for m in queued[:21]], "held until confirmed"
    delivered = [e.message_id for e in await store.events.read(count=1000) if e.kind == "delivered"]
    assert delivered == [m.id for m in queued[:21]]
    assert await audit(store) == []


class FirstRemovalSlow(Queues):
    """Real queues whose first move of delivered messages waits a moment, as one does
    when Redis is busy."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.redis, store.keys, store.limits, events_maxlen=store.events_maxlen)
        self.removals = 0
        self.first_done = False

    async def move_delivered(self, messages: Sequence[StoredMessage], sent_ms: int) -> int:
        self.removals += 1
        if self.removals > 1:
            return await super().move_delivered(messages, sent_ms)
        await asyncio.sleep(0.2)
        moved = await super().move_delivered(messages, sent_ms)
        self.first_done = True
        return moved


async def test_a_slow_removal_keeps_the_order_and_holds_sending_back(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=100))
    queues = FirstRemovalSlow(store)
    bob = pubkey()
    queued = await queue_mail(store, bob, 100)
    taken: list[bytes] = []
    sent_too_early: list[int] = []

    async def send(peer: bytes, path_key: bytes, onion: bytes) -> None:
        # Three groups of 16 sent while the first is still queued: the next must wait.
        if len(taken) >= 48 and not queues.first_done:
            sent_too_early.append(len(taken) + 1)
        taken.append(onion)

    deliverer = deliverer_to(bob, store, send, queues)
    deliverer.kick(bob)

    async def queue_empty() -> bool:
        return not await store.queues.messages(bob)

    await wait_until(queue_empty, what="the drain")
    await deliverer.close()

    assert taken == [m.onion for m in queued]
    assert sent_too_early == []
    delivered = [e.message_id for e in await store.events.read(count=1000) if e.kind == "delivered"]
    assert delivered == [m.id for m in queued]


class RedisGoneForRemovals(Queues):
    """Real queues that cannot move anything, as when Redis went away after the sends."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.redis, store.keys, store.limits, events_maxlen=store.events_maxlen)
        self.tried: list[list[str]] = []

    async def move_delivered(self, messages: Sequence[StoredMessage], sent_ms: int) -> int:
        self.tried.append([m.id for m in messages])
        raise StoreUnavailableError("Redis is unavailable: connection refused")


async def test_at_shutdown_without_redis_the_groups_behind_do_not_try(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=100))
    queues = RedisGoneForRemovals(store)
    bob = pubkey()
    queued = await queue_mail(store, bob, 40)
    taken: list[bytes] = []

    async def send(peer: bytes, path_key: bytes, onion: bytes) -> None:
        taken.append(onion)

    deliverer = deliverer_to(bob, store, send, queues)
    deliverer.kick(bob)
    await wait_until(lambda: len(queues.tried) >= 2, what="the first group to be retried")
    await deliverer.close()

    assert taken == [m.onion for m in queued]
    first_group = [m.id for m in queued[:16]]
    assert queues.tried == [first_group] * len(queues.tried)
    assert [m.id for m in await store.queues.messages(bob)] == [m.id for m in queued]


class RedisAwayForReads(Queues):
    """Real queues whose first ``failures`` reads fail, as while Redis restarts."""

    def __init__(self, store: Store, failures: int) -> None:
        super().__init__(store.redis, store.keys, store.limits, events_maxlen=store.events_maxlen)
        self.failures = failures
        self.reads = 0

    async def peek(
        self, peer: bytes, now: float, *, limit: int = 1, skip: Collection[str] = ()
    ) -> tuple[list[StoredMessage], list[StoredMessage]]:
        self.reads += 1
        if self.reads <= self.failures:
            raise StoreUnavailableError("Redis is unavailable: connection refused")
        return await super().peek(peer, now, limit=limit, skip=skip)


async def test_a_redis_outage_is_told_once_not_per_retry(
    redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="lndmailbox.daemon.deliverer")
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=100))
    queues = RedisAwayForReads(store, failures=3)
    bob = pubkey()
    queued = await queue_mail(store, bob, 5)
    taken: list[bytes] = []

    async def send(peer: bytes, path_key: bytes, onion: bytes) -> None:
        taken.append(onion)

    deliverer = deliverer_to(bob, store, send, queues)
    deliverer.kick(bob)
    await wait_until(lambda: len(taken) == 5, within=15, what="delivery once Redis is back")
    await deliverer.close()

    assert taken == [m.onion for m in queued]
    records = [r for r in caplog.records if r.name == "lndmailbox.daemon.deliverer"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "reading mail from Redis for delivery failing" in warnings[0]
    back = [
        r.getMessage() for r in records if r.levelno == logging.INFO and "again" in r.getMessage()
    ]
    assert len(back) == 1, back
