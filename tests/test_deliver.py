"""The deliverer against a real Redis, on the paths a drain can leave early.

lnd is the ``send`` the deliverer is built with: here one that takes a number of messages
and then answers as lnd does when the macaroon may not send. Whatever it took must leave
Redis (and be told as delivered) even though the drain ends with an error.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence

import pytest
import redis.asyncio as aioredis

from lndmailbox.clock import SystemClock
from lndmailbox.deliver import Deliverer
from lndmailbox.errors import LndPermissionError, StoreUnavailableError
from lndmailbox.metrics import Metrics
from lndmailbox.parcel import Send
from lndmailbox.peers import PeerTracker
from lndmailbox.report import Reporter
from lndmailbox.store import Limits, Store, StoredMessage
from tests.daemon_harness import wait_until

NODE = bytes.fromhex("02" + "44" * 32)


def pubkey() -> bytes:
    return b"\x02" + os.urandom(32)


async def queue_mail(store: Store, peer: bytes, count: int) -> list[StoredMessage]:
    for _ in range(count):
        await store.put(peer, pubkey(), pubkey(), b"\x00" + os.urandom(1365), time.time())
    return await store.messages(peer)


def deliverer_to(peer: bytes, store: Store, send: Send) -> Deliverer:
    """A deliverer that finds ``peer`` online and hands lnd's part to ``send``."""
    clock = SystemClock()
    peers = PeerTracker(clock)
    peers.mark(peer, True)
    reporter = Reporter(node=NODE, metrics=Metrics(), store=store)
    return Deliverer(store=store, send=send, peers=peers, reporter=reporter, clock=clock)


async def test_what_lnd_took_before_a_fatal_answer_leaves_redis(
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
    assert [m.onion for m in await store.messages(bob)] == [m.onion for m in queued[21:]]
    delivered = [e.message_id for e in await store.read_events(count=1000) if e.kind == "delivered"]
    assert delivered == [m.id for m in queued[:21]]
    assert await store.audit() == []


class FirstRemovalSlow(Store):
    """A real store whose first removal of delivered messages waits a moment, as one does
    when Redis is busy."""

    def __init__(self, redis: aioredis.Redis, node: bytes, limits: Limits) -> None:
        super().__init__(redis, node, limits)
        self.removals = 0
        self.first_done = False

    async def remove_delivered(self, messages: Sequence[StoredMessage]) -> int:
        self.removals += 1
        if self.removals > 1:
            return await super().remove_delivered(messages)
        await asyncio.sleep(0.2)
        removed = await super().remove_delivered(messages)
        self.first_done = True
        return removed


async def test_a_slow_removal_keeps_the_order_and_holds_sending_back(
    redis_client: aioredis.Redis,
) -> None:
    store = FirstRemovalSlow(redis_client, NODE, Limits(max_messages_per_peer=100))
    bob = pubkey()
    queued = await queue_mail(store, bob, 100)
    taken: list[bytes] = []
    sent_too_early: list[int] = []

    async def send(peer: bytes, path_key: bytes, onion: bytes) -> None:
        # Three groups of 16 sent while the first is still in Redis: the next must wait.
        if len(taken) >= 48 and not store.first_done:
            sent_too_early.append(len(taken) + 1)
        taken.append(onion)

    deliverer = deliverer_to(bob, store, send)
    deliverer.kick(bob)

    async def queue_empty() -> bool:
        return not await store.messages(bob)

    await wait_until(queue_empty, what="the drain")
    await deliverer.close()

    assert taken == [m.onion for m in queued]
    assert sent_too_early == []
    delivered = [e.message_id for e in await store.read_events(count=1000) if e.kind == "delivered"]
    assert delivered == [m.id for m in queued]


class RedisGoneForRemovals(Store):
    """A real store that cannot remove anything, as when Redis went away after the sends."""

    def __init__(self, redis: aioredis.Redis, node: bytes, limits: Limits) -> None:
        super().__init__(redis, node, limits)
        self.tried: list[list[str]] = []

    async def remove_delivered(self, messages: Sequence[StoredMessage]) -> int:
        self.tried.append([m.id for m in messages])
        raise StoreUnavailableError("Redis is unavailable: connection refused")


async def test_at_shutdown_without_redis_the_groups_behind_do_not_try(
    redis_client: aioredis.Redis,
) -> None:
    store = RedisGoneForRemovals(redis_client, NODE, Limits(max_messages_per_peer=100))
    bob = pubkey()
    queued = await queue_mail(store, bob, 40)
    taken: list[bytes] = []

    async def send(peer: bytes, path_key: bytes, onion: bytes) -> None:
        taken.append(onion)

    deliverer = deliverer_to(bob, store, send)
    deliverer.kick(bob)
    await wait_until(lambda: len(store.tried) >= 2, what="the first group to be retried")
    await deliverer.close()

    assert taken == [m.onion for m in queued]
    first_group = [m.id for m in queued[:16]]
    assert store.tried == [first_group] * len(store.tried)
    assert [m.id for m in await store.messages(bob)] == [m.id for m in queued]
