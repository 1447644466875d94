"""The reporter's Redis side: counters and events written in batches, none left behind."""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as aioredis

from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.store import Store

NODE = bytes.fromhex("02" + "22" * 32)


async def test_a_backlog_larger_than_one_flush_is_written_whole_at_stop(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE, events_maxlen=100_000)
    reporter = Reporter(node=NODE, metrics=Metrics(), events=store.events)
    peer = b"\x02" + os.urandom(32)
    for i in range(2500):
        reporter.expired(peer, f"{i:020x}", 1399)
    stop = asyncio.Event()
    stop.set()
    await reporter.run(stop)
    assert await store.events.counters() == {"expired": 2500}
    assert await redis_client.xlen(store.keys.events_key) == 2500
    last = await store.events.recent(1)
    assert last[0].message_id == f"{2499:020x}"
