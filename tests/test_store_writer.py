"""The store writer against a real Redis: batched writes, and one refused message costs no
other. What is counted lost (the store refusing writes, a peer's damaged keys) is
forgotten from the journal, so no later daemon delivers it, and logged once per episode
with its count."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence

import pytest
import redis.asyncio as aioredis

from lndmailbox.clock import SystemClock
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.outgoing import OutgoingMessage
from lndmailbox.daemon.store_writer import StoreWriter
from lndmailbox.errors import StoreError
from lndmailbox.store import Limits, NewMessage, PutResult, Queues, Store

NODE = bytes.fromhex("02" + "33" * 32)
NOW = 1_700_000_000.0


def pubkey() -> bytes:
    return b"\x02" + os.urandom(32)


def outgoing(peer: bytes, entry: str) -> OutgoingMessage:
    return OutgoingMessage(peer, pubkey(), pubkey(), b"\x00" + os.urandom(1365), NOW, entry)


class Kicks:
    """The deliverer's part: which peers were kicked, in order."""

    def __init__(self) -> None:
        self.peers: list[bytes] = []

    def kick(self, peer: bytes) -> None:
        self.peers.append(peer)


class Decided:
    """The journal's part: which entries were decided, in order."""

    def __init__(self) -> None:
        self.entries: list[str | None] = []

    def decided(self, entry: str | None) -> None:
        self.entries.append(entry)


async def keep_all(
    store: Store, messages: list[OutgoingMessage]
) -> tuple[list[str | None], list[bytes]]:
    metrics = Metrics()
    reporter = Reporter(node=NODE, metrics=metrics, events=store.events)
    decided, kicked = Decided(), Kicks()
    writer = StoreWriter(
        queues=store.queues,
        ttl=store.limits.ttl,
        reporter=reporter,
        metrics=metrics,
        clock=SystemClock(),
        buffer_limit=1000,
        delivery=kicked,
        journal=decided,
    )
    for p in messages:
        writer.keep(p)
    stop = asyncio.Event()
    stop.set()  # writes what is pending, then returns
    await asyncio.wait_for(writer.run(stop), 10)
    await asyncio.wait_for(reporter.run(stop), 10)
    return decided.entries, kicked.peers


async def test_a_backlog_is_written_in_order_and_every_entry_decided(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE, Limits(ttl=1e9, max_messages_per_peer=200))
    bob, carol = pubkey(), pubkey()
    messages = [outgoing(bob if i % 3 else carol, f"e{i}") for i in range(150)]
    decided, kicked = await keep_all(store, messages)
    assert decided == [p.entry for p in messages]
    assert [m.onion for m in await store.queues.messages(bob)] == [
        p.onion for p in messages if p.peer == bob
    ]
    assert len(await store.queues.messages(carol)) == 50
    assert (await store.events.counters())["stored"] == 150
    assert len(kicked) == 150


async def test_a_message_redis_refuses_is_lost_alone(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, Limits(ttl=1e9))
    bob, broken, carol = pubkey(), pubkey(), pubkey()
    await redis_client.set(store.keys.queue_key(broken), b"not a list")  # WRONGTYPE for the script
    messages = [outgoing(bob, "e1"), outgoing(broken, "e2"), outgoing(carol, "e3")]
    decided, _ = await keep_all(store, messages)
    assert [m.onion for m in await store.queues.messages(bob)] == [messages[0].onion]
    assert [m.onion for m in await store.queues.messages(carol)] == [messages[2].onion]
    counters = await store.events.counters()
    assert (counters["lost"], counters["stored"]) == (1, 2)
    assert "duplicate" not in counters, "nothing was written twice"
    # the refused one is counted lost, so forgotten: no later daemon delivers it
    assert decided == ["e1", "e2", "e3"]


async def test_a_flood_for_a_damaged_peer_is_lost_forgotten_and_logged_once(
    redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lndmailbox")
    store = Store(redis_client, NODE, Limits(ttl=1e9))
    broken = pubkey()
    await redis_client.set(store.keys.queue_key(broken), b"not a list")
    messages = [outgoing(broken, f"e{i}") for i in range(100)]
    decided, _ = await keep_all(store, messages)
    assert decided == [m.entry for m in messages], "counted lost, so none may come back"
    assert (await store.events.counters())["lost"] == 100
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("store_writer")]
    assert len(lines) == 2, lines  # it starts; it ends, with the count
    assert broken.hex() in lines[0]
    assert f"100 messages for peer {broken.hex()}" in lines[1]


class Refusing(Queues):
    """Redis refusing the store's writes for good (no outage): ``refuse`` batches."""

    def __init__(self, queues: Queues, refuse: int) -> None:
        self.__dict__.update(queues.__dict__)
        self.refuse = refuse

    async def put_many(
        self, messages: Sequence[NewMessage], *, ttl: float | None = None
    ) -> list[PutResult]:
        if self.refuse:
            self.refuse -= 1
            raise StoreError("ERR Error running script")
        return await super().put_many(messages, ttl=ttl)


async def test_messages_the_store_refuses_are_lost_forgotten_and_logged_once(
    redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lndmailbox")
    store = Store(redis_client, NODE, Limits(ttl=1e9, max_messages_per_peer=500))
    bob = pubkey()
    refused = [outgoing(bob, f"r{i}") for i in range(3 * 64)]  # three batches
    later = outgoing(bob, "later")
    store.queues = Refusing(store.queues, refuse=3)
    decided, _ = await keep_all(store, [*refused, later])
    assert decided == [m.entry for m in [*refused, later]]
    assert [m.onion for m in await store.queues.messages(bob)] == [later.onion]
    assert (await store.events.counters())["lost"] == len(refused)
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("store_writer")]
    assert len(lines) == 2, lines
    assert f"{len(refused)} messages were lost" in lines[1]
