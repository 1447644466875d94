"""The store against a real Redis: FIFO, expiry, caps, duplicates, atomicity, encoding."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from importlib import resources

import pytest
import redis.asyncio as aioredis

from lndmailbox.errors import StoreError, StoreUnavailableError
from lndmailbox.store import (
    HEADER_SIZE,
    RECORD_VERSION,
    Limits,
    NewMessage,
    PutStatus,
    Stats,
    Store,
    StoredMessage,
    decode_record,
    encode_record,
    lua,
    new_message_id,
)
from lndmailbox.store.audit import audit
from lndmailbox.store.client import RedisClient
from tests.store_helpers import put_one, set_config, set_maxmemory

NOW = 1_700_000_000.0
NODE = bytes.fromhex("02" + "11" * 32)


@pytest.fixture
def redis_client(server_or_cluster: RedisClient) -> RedisClient:
    """Each test on one server and on a Cluster."""
    return server_or_cluster


def pubkey() -> bytes:
    return b"\x02" + os.urandom(32)


def onion(size: int = 1366) -> bytes:
    return b"\x00" + os.urandom(size - 1)


@pytest.fixture
async def store(redis_client: aioredis.Redis) -> Store:
    return Store(redis_client, NODE, Limits(ttl=100.0))


async def put(store: Store, peer: bytes, now: float = NOW, size: int = 1366, **kw: float) -> str:
    result = await put_one(store, peer, pubkey(), pubkey(), onion(size), now, **kw)
    assert result.status is PutStatus.STORED
    return result.message_id


async def peek1(
    store: Store, peer: bytes, now: float
) -> tuple[StoredMessage | None, list[StoredMessage]]:
    ready, expired = await store.queues.peek(peer, now)
    assert len(ready) <= 1
    return (ready[0] if ready else None), expired


async def assert_consistent(store: Store) -> None:
    assert await audit(store) == []


async def test_fifo_peek_remove(store: Store) -> None:
    peer = pubkey()
    sender, path_key, packet = pubkey(), pubkey(), onion()
    first = await put_one(store, peer, sender, path_key, packet, NOW)
    assert first.status is PutStatus.STORED
    assert first.message is not None
    assert first.size == 33 + 1366
    ids = [first.message_id] + [await put(store, peer, NOW + i) for i in range(1, 4)]
    assert ids == sorted(ids), "ids sort by received time"

    head, expired = await peek1(store, peer, NOW + 5)
    assert expired == []
    assert head is not None
    assert head == first.message
    assert (head.sender, head.path_key, head.onion, head.attempts) == (sender, path_key, packet, 0)
    assert head.received_at == NOW
    assert head.expires_at == NOW + 100

    delivered = []
    while True:
        head, _ = await peek1(store, peer, NOW + 5)
        if head is None:
            break
        assert await store.queues.remove(head)
        delivered.append(head.id)
    assert delivered == ids
    assert await store.queues.peers_with_mail() == []
    assert (await store.queues.stats()).messages == 0
    await assert_consistent(store)


async def test_peek_a_batch_skips_and_removes_expired(store: Store) -> None:
    peer = pubkey()
    ids = [await put(store, peer, NOW + i, ttl=5.0 if i % 2 else 100.0) for i in range(9)]
    ready, expired = await store.queues.peek(peer, NOW + 50, limit=3)
    assert [m.id for m in ready] == [ids[0], ids[2], ids[4]]
    assert [m.id for m in expired] == [ids[1], ids[3]]
    assert [m.id for m in await store.queues.messages(peer)] == [
        ids[i] for i in (0, 2, 4, 5, 6, 7, 8)
    ]
    ready, expired = await store.queues.peek(peer, NOW + 50, limit=100)
    assert [m.id for m in ready] == [ids[i] for i in (0, 2, 4, 6, 8)]
    assert [m.id for m in expired] == [ids[5], ids[7]]
    for m in ready:
        assert await store.queues.remove(m)
    assert await store.queues.peek(peer, NOW + 50, limit=10) == ([], [])
    await assert_consistent(store)


async def test_put_many_serves_several_peers_in_order_in_one_step(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE, Limits(ttl=100.0, max_messages_per_peer=2))
    bob, carol, sender = pubkey(), pubkey(), pubkey()
    twice = (pubkey(), onion())
    batch = [
        NewMessage(bob, sender, pubkey(), onion(), NOW),
        NewMessage(carol, sender, *twice, NOW),
        NewMessage(bob, sender, pubkey(), onion(), NOW + 1),
        NewMessage(carol, sender, *twice, NOW + 1),
        NewMessage(bob, sender, pubkey(), onion(), NOW + 2),
    ]
    results = await store.queues.put_many(batch)
    assert [r.status for r in results] == [
        PutStatus.STORED,
        PutStatus.STORED,
        PutStatus.STORED,
        PutStatus.DUPLICATE,
        PutStatus.STORED,
    ]
    assert results[3].message_id == results[1].message_id
    assert results[4].evicted == (results[0].message_id,), "bob's cap is 2: the oldest goes"
    # every outcome is counted in the same step as the change, and published (a told
    # message's eviction, the store that evicted: bob is flooded, and this is his flood's
    # first store this interval) or summarized (the duplicate) with it
    told = [(e.kind, e.peer, e.message_id, e.reason) for e in await store.events.read()]
    assert told == [
        ("stored", bob, results[0].message_id, ""),
        ("stored", carol, results[1].message_id, ""),
        ("stored", bob, results[2].message_id, ""),
        ("evicted", bob, results[0].message_id, "peer_cap"),
        ("stored", bob, results[4].message_id, ""),
    ]
    assert [r.flooded for r in results] == [False, False, False, False, False]
    assert await store.events.counters() == {"stored": 4, "duplicate": 1, "evicted": 1}
    assert await store.events.record(close=True) == 1
    summaries = [(e.of, e.reason, e.count, e.top) for e in await store.events.recent(1)]
    assert summaries == [("duplicate", "", 1, ((carol, 1),))]
    assert [m.id for m in await store.queues.messages(bob)] == [
        results[2].message_id,
        results[4].message_id,
    ]
    assert [(m.path_key, m.onion) for m in await store.queues.messages(carol)] == [twice]
    stats = await store.queues.stats()
    assert (stats.peers_with_mail, stats.messages) == (2, 3)
    assert await store.queues.put_many([]) == []
    await assert_consistent(store)


async def test_put_many_refuses_what_passes_the_node_cap_and_keeps_the_rest(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE, Limits(ttl=100.0, max_bytes_total=2 * 1399))
    peers = [pubkey() for _ in range(3)]
    results = await store.queues.put_many(
        [NewMessage(p, pubkey(), pubkey(), onion(), NOW) for p in peers]
    )
    assert [r.status for r in results] == [
        PutStatus.STORED,
        PutStatus.STORED,
        PutStatus.REJECTED_FULL,
    ]
    assert await store.queues.messages(peers[2]) == []
    await assert_consistent(store)


async def test_a_put_run_again_after_a_lost_reply_finds_its_own_copy(store: Store) -> None:
    bob = pubkey()
    message = NewMessage(bob, pubkey(), pubkey(), onion(), NOW, new_message_id(NOW))
    (first,) = await store.queues.put_many([message])
    (again,) = await store.queues.put_many([message])
    assert (first.status, again.status) == (PutStatus.STORED, PutStatus.STORED)
    assert again.message_id == first.message_id == message.id
    assert len(await store.queues.messages(bob)) == 1
    assert await store.events.counters() == {"stored": 1}, "told once"
    # the same message under a new id is a duplicate
    (copy,) = await store.queues.put_many([replace(message, id=None)])
    assert (copy.status, copy.message_id) == (PutStatus.DUPLICATE, message.id)
    await assert_consistent(store)


async def test_a_damaged_event_stream_stops_a_batch_before_it_writes(
    store: Store, redis_client: aioredis.Redis
) -> None:
    await redis_client.set(store.keys.events_key, b"not a stream")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        await store.queues.put_many([NewMessage(pubkey(), pubkey(), pubkey(), onion(), NOW)])
    assert await store.queues.peers_with_mail() == []
    assert await store.events.counters() == {}


async def test_an_unreadable_evicted_record_does_not_fail_the_put(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE, Limits(ttl=100.0, max_messages_per_peer=1))
    bob = pubkey()
    old = await put(store, bob)
    head = await redis_client.lindex(store.keys.queue_key(bob), 0)
    assert isinstance(head, bytes)
    future_version = b"\x09" + head[1:]
    await redis_client.lset(store.keys.queue_key(bob), 0, future_version)  # type: ignore[arg-type]
    result = await put_one(store, bob, pubkey(), pubkey(), onion(), NOW + 1)
    assert result.status is PutStatus.STORED
    assert result.evicted == (old,)
    assert result.evicted_messages == ()
    assert len(await store.queues.messages(bob)) == 1


async def test_peek_passes_over_messages_in_hand_even_expired_ones(store: Store) -> None:
    peer = pubkey()
    ids = [await put(store, peer, NOW + i, ttl=5.0 if i == 1 else 100.0) for i in range(6)]
    ready, expired = await store.queues.peek(peer, NOW + 50, limit=2, skip={ids[0], ids[1], ids[3]})
    assert [m.id for m in ready] == [ids[2], ids[4]]
    assert expired == [], "an expired message in hand is the deliverer's to settle"
    assert len(await store.queues.messages(peer)) == 6
    await assert_consistent(store)


async def test_move_delivered_spans_peers_and_ignores_what_is_gone(store: Store) -> None:
    bob, carol = pubkey(), pubkey()
    bobs = [await put(store, bob, NOW + i) for i in range(5)]
    carols = [await put(store, carol, NOW + i) for i in range(3)]
    ready_bob, _ = await store.queues.peek(bob, NOW, limit=5)
    ready_carol, _ = await store.queues.peek(carol, NOW, limit=3)
    assert await store.queues.purge(bob, bobs[1]) == 1
    sent_ms = int(NOW * 1000) + 7
    moved = await store.queues.move_delivered(
        [*ready_bob[:3], ready_carol[2], ready_bob[4]], sent_ms
    )
    assert moved == 4, "the purged one is not counted"
    assert [m.id for m in await store.queues.messages(bob)] == [bobs[3]]
    assert [m.id for m in await store.queues.messages(carol)] == carols[:2]
    unconfirmed = await store.queues.unconfirmed(bob)
    assert [u.message.id for u in unconfirmed] == [bobs[0], bobs[2], bobs[4]]
    assert {u.sent_at for u in unconfirmed} == {sent_ms / 1000}
    # still held: counted by the totals until confirmed
    stats = await store.queues.stats()
    assert (stats.messages, stats.bytes, stats.unconfirmed) == (7, 7 * 1399, 4)
    assert await store.queues.move_delivered([], sent_ms) == 0
    # told in the same step, one delivered event per message lnd took: the purged one too,
    # since its peer got it all the same
    delivered = [e for e in await store.events.read() if e.kind == "delivered"]
    assert [(e.peer, e.message_id, e.size) for e in delivered] == [
        (bob, bobs[0], 1399),
        (bob, bobs[1], 1399),
        (bob, bobs[2], 1399),
        (bob, bobs[4], 1399),
        (carol, carols[2], 1399),
    ]
    assert (await store.events.counters())["delivered"] == 5
    await assert_consistent(store)


async def test_peek_leaves_message_until_removed(store: Store) -> None:
    peer = pubkey()
    msg_id = await put(store, peer)
    for _ in range(2):
        head, _ = await peek1(store, peer, NOW)
        assert head is not None
        assert head.id == msg_id
    assert head is not None
    assert await store.queues.remove(head)
    assert not await store.queues.remove(head), "a second remove finds nothing"


async def test_expired_never_delivered_and_reported(store: Store) -> None:
    peer = pubkey()
    old = await put(store, peer, NOW)
    new = await put(store, peer, NOW + 50)
    head, expired = await peek1(store, peer, NOW + 99.999)
    assert head is not None
    assert head.id == old
    assert expired == []
    head, expired = await peek1(store, peer, NOW + 100)
    assert [m.id for m in expired] == [old]
    assert head is not None
    assert head.id == new
    head, expired = await peek1(store, peer, NOW + 1000)
    assert head is None
    assert [m.id for m in expired] == [new]
    assert await store.queues.peers_with_mail() == []
    await assert_consistent(store)


async def test_shorter_ttl_behind_longer_is_not_delivered(store: Store) -> None:
    peer = pubkey()
    long_id = await put(store, peer, NOW, ttl=1000.0)
    short_id = await put(store, peer, NOW + 1, ttl=10.0)
    head, _ = await peek1(store, peer, NOW + 20)
    assert head is not None
    assert head.id == long_id
    assert await store.queues.remove(head)
    head, expired = await peek1(store, peer, NOW + 20)
    assert head is None
    assert [m.id for m in expired] == [short_id]


async def test_sweep_removes_expired_everywhere(store: Store) -> None:
    a, b, c = pubkey(), pubkey(), pubkey()
    a_old = await put(store, a, NOW)
    a_new = await put(store, a, NOW + 60)
    b_old = await put(store, b, NOW + 10)
    c_new = await put(store, c, NOW + 70)
    # a message with a short TTL behind one with a long TTL is found by the sweep too
    long_c = await put(store, c, NOW + 71, ttl=1000.0)
    short_c = await put(store, c, NOW + 72, ttl=5.0)

    assert await store.queues.sweep_expired(NOW + 50) == []
    # c's short message sits behind two others: the sweep takes it out of the middle
    swept = await store.queues.sweep_expired(NOW + 115)
    assert sorted(m.id for m in swept) == sorted([a_old, b_old, short_c])
    assert {m.peer for m in swept} == {a, b, c}
    assert set(await store.queues.peers_with_mail()) == {a, c}
    assert [m.id for m in await store.queues.messages(c)] == [c_new, long_c]
    await assert_consistent(store)

    swept = await store.queues.sweep_expired(NOW + 171)
    assert sorted(m.id for m in swept) == sorted([a_new, c_new])
    assert [m.id for m in await store.queues.messages(c)] == [long_c]
    assert await store.queues.peers_with_mail() == [c]
    await assert_consistent(store)
    swept = await store.queues.sweep_expired(NOW + 2000)
    assert [m.id for m in swept] == [long_c]
    assert await store.queues.peers_with_mail() == []
    assert await store.queues.stats() == Stats(0, 0, 0, None)
    await assert_consistent(store)


async def test_sweep_notices_keys_redis_dropped(store: Store, redis_client: aioredis.Redis) -> None:
    peer, other = pubkey(), pubkey()
    for i in range(3):
        await put(store, peer, NOW + i)
    await put(store, other, NOW)
    # what Redis does to keys whose TTL ran out (or an operator's DEL)
    await redis_client.delete(store.keys.queue_key(peer), store.keys.dedup_key(peer))
    assert await store.queues.sweep_expired(NOW + 100) != []
    assert await store.queues.peers_with_mail() == []
    assert (await store.events.counters())["expired"] == 3
    await assert_consistent(store)


async def test_per_peer_message_cap_evicts_oldest(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=3))
    peer, other = pubkey(), pubkey()
    ids = [await put(store, peer, NOW + i) for i in range(3)]
    await put(store, other, NOW)
    result = await put_one(store, peer, pubkey(), pubkey(), onion(), NOW + 3)
    assert result.status is PutStatus.STORED
    assert result.evicted == (ids[0],)
    assert [m.id for m in result.evicted_messages] == [ids[0]]
    assert [m.id for m in await store.queues.messages(peer)] == [*ids[1:], result.message_id]
    assert len(await store.queues.messages(other)) == 1
    await assert_consistent(store)


async def test_per_peer_byte_cap_evicts_as_many_as_needed(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, Limits(max_bytes_per_peer=4 * 1399))
    peer = pubkey()
    ids = [await put(store, peer, NOW + i) for i in range(4)]
    big = await put_one(store, peer, pubkey(), pubkey(), onion(2 * 1366 + 33), NOW + 10)
    assert big.status is PutStatus.STORED
    assert big.evicted == tuple(ids[:2])
    assert (await store.queues.stats()).bytes == 2 * 1399 + big.size
    too_big = await put_one(store, peer, pubkey(), pubkey(), onion(4 * 1399), NOW + 11)
    assert too_big.status is PutStatus.REJECTED_FULL
    assert len(await store.queues.messages(peer)) == 3
    await assert_consistent(store)


async def test_total_cap_rejects_new_message(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, Limits(max_bytes_total=3 * 1399))
    peers = [pubkey() for _ in range(4)]
    for p in peers[:3]:
        await put(store, p)
    before = await store.queues.stats()
    result = await put_one(store, peers[3], pubkey(), pubkey(), onion(), NOW)
    assert result.status is PutStatus.REJECTED_FULL
    assert result.evicted == ()
    assert await store.queues.stats() == before
    assert await store.queues.messages(peers[3]) == []
    # room comes back once something is delivered
    head, _ = await peek1(store, peers[0], NOW)
    assert head is not None
    assert await store.queues.remove(head)
    await put(store, peers[3])
    await assert_consistent(store)


async def test_total_cap_counts_what_the_peer_cap_frees(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=2, max_bytes_total=2 * 1399))
    peer = pubkey()
    await put(store, peer)
    await put(store, peer)
    result = await put_one(store, peer, pubkey(), pubkey(), onion(), NOW + 1)
    assert result.status is PutStatus.STORED
    assert len(result.evicted) == 1


async def test_duplicates_stored_once(store: Store) -> None:
    peer, other = pubkey(), pubkey()
    path_key, packet = pubkey(), onion()
    first = await put_one(store, peer, pubkey(), path_key, packet, NOW)
    again = await put_one(store, peer, pubkey(), path_key, packet, NOW + 1)
    assert again.status is PutStatus.DUPLICATE
    assert again.message_id == first.message_id
    assert len(await store.queues.messages(peer)) == 1
    # the same bytes for another peer are another message
    assert (await put_one(store, other, pubkey(), path_key, packet, NOW)).status is PutStatus.STORED
    # same onion, other path key: another message
    assert (await put_one(store, peer, pubkey(), pubkey(), packet, NOW)).status is PutStatus.STORED
    # once delivered, the dedup entry goes with it
    assert first.message is not None
    assert await store.queues.remove(first.message)
    assert (
        await put_one(store, peer, pubkey(), path_key, packet, NOW + 2)
    ).status is PutStatus.STORED
    await assert_consistent(store)


async def test_remove_by_id_when_head_changed(store: Store) -> None:
    peer = pubkey()
    ids = [await put(store, peer, NOW + i) for i in range(5)]
    msgs = await store.queues.messages(peer)
    assert await store.queues.remove(msgs[2])
    assert [m.id for m in await store.queues.messages(peer)] == [ids[0], ids[1], ids[3], ids[4]]
    assert await store.queues.purge(peer, ids[0]) == 1
    head, _ = await peek1(store, peer, NOW)
    assert head is not None
    assert head.id == ids[1]
    assert not await store.queues.remove(msgs[0]), "purged meanwhile"
    assert await store.queues.purge(peer, ids[0]) == 0
    await assert_consistent(store)
    assert await store.queues.purge(peer) == 3
    assert await store.queues.peers_with_mail() == []
    await assert_consistent(store)


async def test_record_attempt(store: Store) -> None:
    peer = pubkey()
    await put(store, peer)
    second = await put(store, peer, NOW + 1)
    msgs = await store.queues.messages(peer)
    assert await store.queues.record_attempt(msgs[1]) == 1
    assert await store.queues.record_attempt(msgs[1]) == 2
    after = await store.queues.messages(peer)
    assert [m.attempts for m in after] == [0, 2]
    assert after[1].id == second
    assert await store.queues.remove(msgs[1]), "the stale copy still removes by id"
    assert await store.queues.record_attempt(msgs[1]) == -1
    await assert_consistent(store)


async def test_concurrent_puts_and_removes(store: Store) -> None:
    peers = [pubkey() for _ in range(3)]
    store2 = Store(store.redis, NODE, Limits(max_messages_per_peer=20, ttl=100.0))

    async def producer(peer: bytes, n: int) -> None:
        for i in range(n):
            await put_one(store2, peer, pubkey(), pubkey(), onion(200 + i), NOW + i / 100)

    async def consumer(peer: bytes, n: int) -> int:
        removed = 0
        for _ in range(n):
            head, _ = await peek1(store2, peer, NOW)
            if head is not None and await store2.queues.remove(head):
                removed += 1
            await asyncio.sleep(0)
        return removed

    results = await asyncio.gather(
        *(producer(p, 40) for p in peers),
        *(consumer(p, 30) for p in peers),
        store2.queues.sweep_expired(NOW),
    )
    assert await audit(store) == []
    stats = await store.queues.stats()
    removed = sum(r for r in results if isinstance(r, int))
    assert stats.messages <= 3 * 20
    assert stats.messages + removed <= 120


async def test_failed_script_leaves_nothing_half_written(
    store: Store, redis_client: aioredis.Redis
) -> None:
    peer, other = pubkey(), pubkey()
    await put(store, other)
    before = (await store.queues.stats(), await redis_client.hgetall(store.keys.usage_key))
    # a foreign value under the peer's queue key makes the script fail on its first read;
    # every script validates before its first write, so nothing else changes
    await redis_client.set(store.keys.queue_key(peer), b"not a list")
    damaged = await put_one(store, peer, pubkey(), pubkey(), onion(), NOW)
    assert damaged.status is PutStatus.REJECTED_DAMAGED
    # in a batch, the damaged peer's message alone is refused
    fine = pubkey()
    results = await store.queues.put_many(
        [NewMessage(p, pubkey(), pubkey(), onion(), NOW) for p in (peer, fine)]
    )
    assert [r.status for r in results] == [PutStatus.REJECTED_DAMAGED, PutStatus.STORED]
    assert await store.queues.purge(fine) == 1
    assert (await store.queues.stats(), await redis_client.hgetall(store.keys.usage_key)) == before
    assert not await redis_client.exists(store.keys.dedup_key(peer))
    assert peer not in await store.queues.peers_with_mail()


def test_record_round_trip() -> None:
    msg = StoredMessage(
        id="018bcfe568000a1b2c3d",
        peer=pubkey(),
        sender=pubkey(),
        path_key=pubkey(),
        onion=onion(),
        received_at=1_700_000_000.0,
        expires_at=1_700_086_400.5,
        attempts=7,
    )
    record = encode_record(msg)
    assert record[0] == RECORD_VERSION
    assert len(record) == HEADER_SIZE + msg.size == 52 + 33 + 1366
    assert record[1:11] == bytes.fromhex(msg.id)
    assert record[19:52] == msg.sender
    assert record[52:85] == msg.path_key
    assert record[85:] == msg.onion
    assert decode_record(msg.peer, record) == msg


def test_record_version_and_length_checked() -> None:
    msg = StoredMessage("00" * 10, pubkey(), pubkey(), pubkey(), onion(100), 0.0, 1.0, 0)
    record = encode_record(msg)
    with pytest.raises(StoreError, match="version 3"):
        decode_record(msg.peer, b"\x03" + record[1:])
    with pytest.raises(StoreError, match="too short"):
        decode_record(msg.peer, record[: HEADER_SIZE + 33])


def version_1(msg: StoredMessage) -> bytes:
    """The record the previous release wrote: attempts as a u16, no redeliveries."""
    record = encode_record(msg)
    return b"\x01" + record[1:17] + msg.attempts.to_bytes(2, "big") + record[19:]


async def test_a_version_1_record_is_read_and_rewritten_as_version_2(
    store: Store, redis_client: aioredis.Redis
) -> None:
    peer = pubkey()
    message_id = await put(store, peer)
    (queued,) = await store.queues.messages(peer)
    old = replace(queued, attempts=300)
    await redis_client.lset(store.keys.queue_key(peer), 0, version_1(old))  # type: ignore[arg-type]
    assert await store.queues.messages(peer) == [old]
    assert decode_record(peer, version_1(old)).redeliveries == 0
    # the next change writes it as version 2 (its counts held at 255)
    assert await store.queues.record_attempt(old) == 255
    raw = await redis_client.lindex(store.keys.queue_key(peer), 0)
    assert isinstance(raw, bytes)
    assert raw[0] == RECORD_VERSION == 2
    assert await store.queues.messages(peer) == [replace(old, attempts=255)]
    (summary,) = await store.queues.peer_summaries()
    assert (summary.messages, message_id) == (1, old.id)
    await assert_consistent(store)


async def test_unreadable_record_is_a_store_error(
    store: Store, redis_client: aioredis.Redis
) -> None:
    peer = pubkey()
    await put(store, peer)
    await redis_client.lset(store.keys.queue_key(peer), 0, "\x09" + "x" * 200)
    with pytest.raises(StoreError, match="version 9"):
        await store.queues.messages(peer)


async def test_hand_removed_element_is_reconciled_when_the_queue_empties(
    store: Store, redis_client: aioredis.Redis
) -> None:
    peer, other = pubkey(), pubkey()
    await put(store, peer)
    await put(store, peer, NOW + 1)
    await put(store, other)
    # an operator's LREM behind the store's back
    await redis_client.lpop(store.keys.queue_key(peer))
    assert await audit(store) != []
    ready, _ = await store.queues.peek(peer, NOW, limit=10)
    assert await store.queues.remove(ready[0])
    await assert_consistent(store)
    assert (await store.queues.stats()).messages == 1


async def test_delivery_and_eviction_race_for_the_same_message(
    redis_client: aioredis.Redis,
) -> None:
    """A message being delivered while a new one evicts it belongs to exactly one of them."""
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=1))
    outcomes = set()
    for i in range(20):
        peer = pubkey()
        await put(store, peer)
        head, _ = await peek1(store, peer, NOW)
        assert head is not None
        remove = store.queues.remove(head)
        newer = put_one(store, peer, pubkey(), pubkey(), onion(), NOW + 1)
        if i % 2:
            result, removed = await asyncio.gather(newer, remove)
        else:
            removed, result = await asyncio.gather(remove, newer)
        assert result.status is PutStatus.STORED
        assert removed != (result.evicted == (head.id,))
        assert len(await store.queues.messages(peer)) == 1
        outcomes.add(removed)
    assert outcomes == {True, False}, "both orders happened"
    await assert_consistent(store)


async def test_too_few_replicas_is_unavailable_not_refused(
    store: Store, redis_client: RedisClient
) -> None:
    """A primary with min-replicas-to-write refuses writes (NOREPLICAS) while a replica is
    away: that passes, so it is StoreUnavailableError (retried), never StoreError (which
    the store writer counts as lost)."""
    peer = pubkey()
    await set_config(redis_client, "min-replicas-to-write", 5)
    try:
        with pytest.raises(StoreUnavailableError, match="NOREPLICAS"):
            await put_one(store, peer, pubkey(), pubkey(), onion(), NOW + 1)
    finally:
        await set_config(redis_client, "min-replicas-to-write", 0)
    assert await store.queues.messages(peer) == []


async def test_out_of_memory_refuses_the_whole_put(
    store: Store, redis_client: aioredis.Redis
) -> None:
    peer = pubkey()
    await put(store, peer)
    before = (await store.queues.stats(), await store.queues.messages(peer))
    await set_maxmemory(redis_client, 1)
    try:
        with pytest.raises(StoreError, match="maxmemory"):
            await put_one(store, peer, pubkey(), pubkey(), onion(), NOW + 1)
    finally:
        await set_maxmemory(redis_client, 0)
    assert (await store.queues.stats(), await store.queues.messages(peer)) == before
    await assert_consistent(store)


def test_every_lua_file_is_run_and_redis_gets_no_header_comment() -> None:
    folder = resources.files(lua.__package__).joinpath("lua")
    assert {p.name for p in folder.iterdir()} == {
        f"{name}.lua" for name in (*lua.SCRIPTS, *lua.HELPERS)
    }
    for name in lua.SCRIPTS:
        text = lua.program(name)
        assert text.startswith("#!lua"), name
        # only the move from the old layout, which never ran on a Cluster, may refuse one
        assert ("no-cluster" in text.splitlines()[0]) == (name in lua.MIGRATION_SCRIPTS), name
        assert "\n-- KEYS" not in text, name
        assert "\n-- ARGV" not in text, name
