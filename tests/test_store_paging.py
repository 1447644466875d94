"""The reads that walk the mail index (the sweep, the daemon's start, ``mailboxctl peers``
and ``status``) go page by page: the same results as one read of the whole index, across
page boundaries, with peers sharing an expiry and past the size where Redis keeps the index
as a compact listpack (ZSCAN then pages for real)."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
import redis.asyncio as aioredis

from lndmailbox.store import NewMessage, Store
from lndmailbox.store.audit import audit
from lndmailbox.store.client import as_str

NOW = 1_700_000_000.0
NODE = bytes.fromhex("03" + "44" * 32)
PEERS = 150
"""Past 128 index entries Redis turns the sorted set into a skiplist and a hash table."""


def pubkey(rng: random.Random) -> bytes:
    return b"\x02" + rng.randbytes(32)


@pytest.fixture
async def filled(redis_client: aioredis.Redis) -> tuple[Store, list[bytes]]:
    """150 peers, 1 to 3 messages each, put 64 at a time (so whole batches share an expiry);
    every fifth peer has one short-lived message (due at the sweep below) and every seventh
    has one that lnd took (unconfirmed)."""
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"seed {seed}")
    rng = random.Random(seed)
    store = Store(redis_client, NODE)
    peers = [pubkey(rng) for _ in range(PEERS)]
    batch: list[NewMessage] = []
    for i, peer in enumerate(peers):
        for _ in range(1 + i % 3):
            batch.append(NewMessage(peer, pubkey(rng), pubkey(rng), rng.randbytes(200), NOW))
    for start in range(0, len(batch), 64):
        await store.queues.put_many(batch[start : start + 64], ttl=3600)
    short = [NewMessage(p, pubkey(rng), pubkey(rng), rng.randbytes(90), NOW) for p in peers[::5]]
    await store.queues.put_many(short, ttl=60)
    for peer in peers[::7]:
        (head,), _ = await store.queues.peek(peer, NOW)
        assert await store.queues.move_delivered([head], int(NOW * 1000) + 5) == 1
    return store, peers


async def test_reads_in_pages_equal_one_read_of_the_whole_index(
    filled: tuple[Store, list[bytes]], redis_client: aioredis.Redis
) -> None:
    store, peers = filled
    whole = [
        bytes.fromhex(as_str(m)) for m in await redis_client.zrange(store.keys.mail_key, 0, -1)
    ]
    assert sorted(whole) == sorted(peers)
    store.queues.page = PEERS  # one page: the index read at once, as before paging
    assert await store.queues.peers_with_mail() == whole
    summaries = await store.queues.peer_summaries()
    unconfirmed = await store.queues.unconfirmed_by_peer()
    stats = await store.queues.stats()
    assert [s.peer for s in summaries] == whole
    assert sorted(unconfirmed) == sorted(peers[::7])
    assert stats.peers_with_mail == PEERS
    assert stats.unconfirmed == len(peers[::7])
    for page in (1, 7, 64):
        store.queues.page = page
        assert await store.queues.peers_with_mail() == whole, page
        assert await store.queues.peer_summaries() == summaries, page
        assert await store.queues.unconfirmed_by_peer() == unconfirmed, page
        assert await store.queues.stats() == stats, page
    store.queues.page = 7
    assert await store.queues.peer_summaries(limit=10) == summaries[:10]
    assert await store.queues.peer_summaries(limit=PEERS + 1) == summaries


@pytest.mark.parametrize("page", [1, 3, PEERS])
async def test_the_sweep_in_pages_removes_every_expired_message(
    filled: tuple[Store, list[bytes]], redis_client: aioredis.Redis, page: int
) -> None:
    store, peers = filled
    due = set(peers[::5])
    before = {p: await store.queues.held(p) for p in peers}
    store.queues.page = page
    swept = await store.queues.sweep_expired(NOW + 61)
    assert sorted(m.id for m in swept) == sorted(
        m.id for p in due for m in before[p] if m.expires_at <= NOW + 61
    )
    assert {m.peer for m in swept} == due
    assert await redis_client.zrangebyscore(store.keys.mail_key, "-inf", (NOW + 61) * 1000) == []
    for p in peers:
        assert await store.queues.held(p) == [m for m in before[p] if m.expires_at > NOW + 61]
    assert await audit(store) == []
    assert await store.queues.sweep_expired(NOW + 61) == []


async def test_no_read_takes_the_whole_index_in_one_call(
    filled: tuple[Store, list[bytes]], redis_client: aioredis.Redis
) -> None:
    """What the reads send Redis (its SLOWLOG, every call logged): pages of 7 peers, not
    the 150 at once."""
    store, _ = filled
    store.queues.page = 7
    old = (await redis_client.config_get("slowlog-log-slower-than"))["slowlog-log-slower-than"]
    assert old is not None
    await redis_client.config_set("slowlog-log-slower-than", 0)
    await redis_client.config_set("slowlog-max-len", 100_000)
    await redis_client.slowlog_reset()
    try:
        await store.queues.peers_with_mail()
        await store.queues.peer_summaries()
        await store.queues.unconfirmed_by_peer()
        await store.queues.stats()
        await store.queues.sweep_expired(NOW + 61)
        command: Any = redis_client.execute_command
        log = await command("SLOWLOG", "GET", "-1")
    finally:
        await redis_client.config_set("slowlog-log-slower-than", old)
    mail = store.keys.mail_key.encode()
    calls = [[bytes(w) for w in entry[3]] for entry in log]
    widest = 0
    for words in calls:
        more = words[-1].split()[1].lstrip(b"(") if words[-1].startswith(b"... (") else b"0"
        widest = max(widest, len(words) + int(more))
        name = words[0].upper()
        if name == b"ZRANGEBYSCORE":
            assert b"LIMIT" in [w.upper() for w in words], words
        assert not (name == b"ZRANGE" and words[1] == mail), words
        assert name not in (b"HGETALL", b"KEYS"), words
    assert any(w[0].upper() == b"ZSCAN" for w in calls)
    # The widest call is a summaries run of one page: its usage key, 2 keys and 1 peer
    # each (EVALSHA, sha, numkeys in front); all 150 peers would be 450 and more.
    assert widest == 3 + 1 + 3 * 7
