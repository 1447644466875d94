"""The store writer against a real Redis: batched writes, and one refused message costs no
other."""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as aioredis

from lndmailbox.clock import SystemClock
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.outgoing import OutgoingMessage
from lndmailbox.daemon.store_writer import StoreWriter
from lndmailbox.store import Limits, Store

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
    # the refused one stays journaled for a later daemon; the others are decided
    assert decided == ["e1", "e3"]
