"""The keeper against a real Redis: batched writes, and one refused message costs no other."""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as aioredis

from lndmailbox.clock import SystemClock
from lndmailbox.keeper import Keeper
from lndmailbox.metrics import Metrics
from lndmailbox.parcel import Parcel
from lndmailbox.report import Reporter
from lndmailbox.store import Limits, Store

NODE = bytes.fromhex("02" + "33" * 32)
NOW = 1_700_000_000.0


def pubkey() -> bytes:
    return b"\x02" + os.urandom(32)


def parcel(peer: bytes, entry: str) -> Parcel:
    return Parcel(peer, pubkey(), pubkey(), b"\x00" + os.urandom(1365), NOW, entry)


async def keep_all(store: Store, parcels: list[Parcel]) -> tuple[list[str | None], list[bytes]]:
    metrics = Metrics()
    reporter = Reporter(node=NODE, metrics=metrics, store=store)
    decided: list[str | None] = []
    kicked: list[bytes] = []
    keeper = Keeper(
        store=store,
        reporter=reporter,
        metrics=metrics,
        clock=SystemClock(),
        buffer_limit=1000,
        on_stored=kicked.append,
        decided=decided.append,
    )
    for p in parcels:
        keeper.keep(p)
    stop = asyncio.Event()
    stop.set()  # writes what is pending, then returns
    await asyncio.wait_for(keeper.run(stop), 10)
    await asyncio.wait_for(reporter.run(stop), 10)
    return decided, kicked


async def test_a_backlog_is_written_in_order_and_every_entry_decided(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE, Limits(ttl=1e9, max_messages_per_peer=200))
    bob, carol = pubkey(), pubkey()
    parcels = [parcel(bob if i % 3 else carol, f"e{i}") for i in range(150)]
    decided, kicked = await keep_all(store, parcels)
    assert decided == [p.entry for p in parcels]
    assert [m.onion for m in await store.messages(bob)] == [
        p.onion for p in parcels if p.peer == bob
    ]
    assert len(await store.messages(carol)) == 50
    assert (await store.counters())["stored"] == 150
    assert len(kicked) == 150


async def test_a_message_redis_refuses_is_lost_alone(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, Limits(ttl=1e9))
    bob, broken, carol = pubkey(), pubkey(), pubkey()
    await redis_client.set(store.queue_key(broken), b"not a list")  # WRONGTYPE for the script
    parcels = [parcel(bob, "e1"), parcel(broken, "e2"), parcel(carol, "e3")]
    decided, _ = await keep_all(store, parcels)
    assert [m.onion for m in await store.messages(bob)] == [parcels[0].onion]
    assert [m.onion for m in await store.messages(carol)] == [parcels[2].onion]
    counters = await store.counters()
    assert (counters["lost"], counters["stored"]) == (1, 2)
    assert "duplicate" not in counters, "nothing was written twice"
    # the refused one stays journaled for a later daemon; the others are decided
    assert decided == ["e1", "e3"]
