"""Hot standby: every daemon journals, one leader decides, and a standby takes over.

The journal first (a real Redis): entries named by the message, v1 values of the release
before still read, the decided record that keeps a standby's late copy out.
"""

from __future__ import annotations

import asyncio
import os
import time

import redis.asyncio as aioredis

from lndmailbox.clock import SystemClock
from lndmailbox.daemon.journal_writer import JournalWriter
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.lnd import IncomingOnionMessage
from lndmailbox.store import Store
from lndmailbox.store.journal import entry_for

NODE = bytes.fromhex("03" + "cd" * 32)


def point() -> bytes:
    return b"\x02" + os.urandom(32)


def v1_value(at: float, sender: bytes, path_key: bytes, onion: bytes) -> bytes:
    """A journal value as the release before this one wrote it (under a random name)."""
    return int(at * 1000).to_bytes(8, "big") + sender + path_key + onion


# --- the journal ---------------------------------------------------------------------------


async def test_a_v1_entry_is_still_read_and_decided(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE)
    sender, path_key, onion = point(), point(), os.urandom(1366)
    at = 1_700_000_000.123
    name = os.urandom(8).hex()
    await redis_client.hset(store.keys.journal_key, name, v1_value(at, sender, path_key, onion))
    (entry,) = await store.journal.pending()
    assert (entry.entry, entry.sender, entry.path_key, entry.onion) == (
        name,
        sender,
        path_key,
        onion,
    )
    assert entry.received_at == at
    await store.journal.write(decided=[name])
    assert await store.journal.pending() == []


async def test_a_message_is_one_entry_however_many_daemons_journal_it(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE)
    path_key, onion = point(), os.urandom(1366)
    entry = entry_for(path_key, onion)
    first, second = point(), point()
    await store.journal.write([(entry, first, path_key, onion, 1000.0)])
    await store.journal.write([(entry, second, path_key, onion, 1001.0)])
    (held,) = await store.journal.pending()
    assert (held.entry, held.sender, held.received_at) == (entry, first, 1000.0)
    raw = await redis_client.hget(store.keys.journal_key, entry)
    assert raw is not None
    assert raw[0] == 2, "a v2 value, its version first"


async def test_a_decided_message_is_not_journaled_again(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE)
    path_key, onion = point(), os.urandom(1366)
    entry = entry_for(path_key, onion)
    await store.journal.write([(entry, point(), path_key, onion, 1000.0)])
    assert await store.journal.write(decided=[entry]) == 0
    # A standby that read it later journals it now: it stays out.
    assert await store.journal.write([(entry, point(), path_key, onion, 1000.0)]) == 1
    assert await store.journal.pending() == []
    # Decided before anyone journaled it: the same.
    other = (point(), os.urandom(100))
    await store.journal.write(decided=[entry_for(*other)])
    assert await store.journal.write([(entry_for(*other), point(), *other, 1.0)]) == 1
    assert await store.journal.entries() == []


async def test_the_decided_record_holds_a_few_seconds_whatever_the_traffic(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE)
    store.journal.decided_for = 0.2
    old = [os.urandom(16).hex() for _ in range(1200)]
    await store.journal.write(decided=old)
    assert await redis_client.zcard(store.keys.decided_key) == 1200
    await asyncio.sleep(0.3)
    # Past its time a decided message may be journaled again (a duplicate, not a loss)...
    path_key, onion = point(), os.urandom(10)
    late = entry_for(path_key, onion)
    await store.journal.write(decided=[late])
    # ...and the next decision trims what is older: the record holds the last 0.2 s only.
    assert await redis_client.zrange(store.keys.decided_key, 0, -1) == [late.encode()]
    assert 0 < await redis_client.pttl(store.keys.decided_key) <= 200
    assert await store.journal.write([(old[0], point(), point(), b"x", 1.0)]) == 0


async def test_a_value_of_an_unknown_version_is_left_alone(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE)
    newer = bytes((9,)) + os.urandom(200)
    await redis_client.hset(store.keys.journal_key, mapping={"newer": newer, "short": b"\x02x"})
    assert await store.journal.pending() == []
    assert await redis_client.hgetall(store.keys.journal_key) == {b"newer": newer}


def reporter_for(store: Store) -> Reporter:
    return Reporter(node=NODE, metrics=Metrics(), events=store.events)


async def test_a_decision_takes_a_standbys_copy_out_of_the_inbox(
    redis_client: aioredis.Redis,
) -> None:
    """The leader decides a message before its own journal write went out: it never
    writes it, but a standby did, and the decision removes that copy."""
    store = Store(redis_client, NODE)
    writer = JournalWriter(store.journal, SystemClock(), reporter_for(store))
    message = IncomingOnionMessage(point(), point(), os.urandom(1366))
    entry = writer.add(message, time.time())
    assert entry == entry_for(message.path_key, message.onion)
    await store.journal.write([(entry, message.peer, message.path_key, message.onion, 1.0)])
    writer.decided(entry)
    assert writer.holds(entry), "its decision is not written yet"
    await writer.flush()
    assert not writer.holds(entry)
    assert await store.journal.entries() == []
    assert writer.bytes == 0


async def test_the_same_message_read_twice_is_held_until_both_are_decided(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE)
    writer = JournalWriter(store.journal, SystemClock(), reporter_for(store))
    message = IncomingOnionMessage(point(), point(), os.urandom(1366))
    first = writer.add(message, time.time())
    second = writer.add(message, time.time())
    assert first == second
    assert writer.bytes == 33 + 1366, "one entry, counted once"
    await writer.flush()
    writer.decided(first)
    await writer.flush()
    assert [e.entry for e in await store.journal.pending()] == [first]
    writer.decided(second)
    await writer.flush()
    assert await store.journal.pending() == []
    assert writer.bytes == 0
