"""A flooded peer's wake-ups and its flood mark, against a real Redis (docs/notifications.md,
Floods): a flood cannot silence a peer's `stored` entries and webhook calls for longer than
an interval, and the mark counts exactly the messages told before the flood, however the
others leave the queue."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import redis.asyncio as aioredis
from coincurve import PrivateKey

from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.webhook import Notifier
from lndmailbox.store import Limits, NewMessage, PutResult, Store
from lndmailbox.store.events import wake_argument
from tests.store_helpers import put_one

NODE = bytes.fromhex("02" + "55" * 32)
NOW = 1_700_000_000.0


def key() -> bytes:
    return PrivateKey().public_key.format()


async def put(store: Store, peer: bytes, *, ttl: float | None = None) -> PutResult:
    return await put_one(store, peer, key(), key(), os.urandom(1366), NOW, ttl=ttl)


async def mark(store: Store, peer: bytes) -> int | None:
    value = await store.redis.hget(store.keys.usage_key, f"flood:{peer.hex()}")
    return None if value is None else int(value)


async def told(store: Store) -> list[tuple[str, str]]:
    return [(e.kind, e.message_id) for e in await store.events.read(count=1000)]


class _Notifier(Notifier):
    """Keeps what it is handed (the Reporter's side of the webhook; no HTTP)."""

    def __init__(self) -> None:
        self.events: list[Mapping[str, object]] = []

    def submit(self, event: Mapping[str, object]) -> None:
        self.events.append(event)


# Defect 1: a flood silenced the peer's wake-ups until its queue was empty.


async def test_a_flooded_peer_is_woken_once_an_interval(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=2))
    store.queues.wake_ups = wake_argument(1)  # one-second intervals, to see the next one
    bob = key()
    a, b, c, d, e = [await put(store, bob) for _ in range(5)]
    # c evicts (the flood begins) and is the flood's first store this interval: told
    assert [r.flooded for r in (a, b, c, d, e)] == [False, False, False, True, True]
    assert await told(store) == [
        ("stored", a.message_id),
        ("stored", b.message_id),
        ("evicted", a.message_id),
        ("stored", c.message_id),
        ("evicted", b.message_id),
    ]
    await asyncio.sleep(1.05)  # the next interval (Redis's clock)
    f, g = await put(store, bob), await put(store, bob)
    assert (f.flooded, g.flooded) == (False, True)
    assert (await told(store))[-1] == ("stored", f.message_id)
    # what was not told is summed
    assert await store.events.record(close=True) == 2
    by = {(x.of, x.reason): x.count for x in await store.events.recent(2)}
    assert by == {("stored", "flooded"): 3, ("evicted", "peer_cap"): 3}
    assert (await store.events.counters())["stored"] == 7


async def test_wake_ups_are_bounded_per_interval_over_all_peers(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=1))
    store.queues.wake_ups = wake_argument(3600, 2)
    peers = [key() for _ in range(3)]
    for p in peers:
        await put(store, p)
    flooding = [await put(store, p) for p in peers]
    assert [r.flooded for r in flooding] == [False, False, True], "the third is past W = 2"
    stored = [m for k, m in await told(store) if k == "stored"]
    assert stored[-2:] == [flooding[0].message_id, flooding[1].message_id]


async def test_a_woken_store_reaches_the_webhook(redis_client: aioredis.Redis) -> None:
    """The put's answer is what the store writer hands the Reporter (``flooded=``)."""
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=1))
    notifier = _Notifier()
    reporter = Reporter(node=NODE, metrics=Metrics(), events=store.events, notifier=notifier)
    bob = key()
    for r in [await put(store, bob) for _ in range(4)]:
        reporter.stored(bob, r.message_id, 1399, key(), NOW + 60, NOW, flooded=r.flooded)
    assert len(notifier.events) == 2, "the first store, and the flood's first this interval"
    assert all(x["event"] == "stored" for x in notifier.events)


async def test_a_rerun_put_answers_as_for_the_peers_state(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=1))
    store.queues.wake_ups = wake_argument(3600, 0)  # no wake-ups: every flooded store summed
    bob, sender, path_key, onion = key(), key(), key(), os.urandom(1366)
    await put(store, bob)
    message = NewMessage(bob, sender, path_key, onion, NOW)
    (first,) = await store.queues.put_many([message])
    assert first.flooded
    (again,) = await store.queues.put_many(
        [NewMessage(bob, sender, path_key, onion, NOW, first.message_id)]
    )
    assert (again.message_id, again.flooded) == (first.message_id, True)


# Defect 2: the flood mark after records left from elsewhere than the head.


async def test_an_expiry_at_the_head_counts_down_the_mark(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=2))
    bob = key()
    await put(store, bob)
    b = await put(store, bob, ttl=10)
    c = await put(store, bob)  # evicts a: b is the one told message left, at the head
    assert await mark(store, bob) == 1
    ready, expired = await store.queues.peek(bob, NOW + 20)
    assert ([m.id for m in ready], [m.id for m in expired]) == ([c.message_id], [b.message_id])
    assert await mark(store, bob) == 0
    await put(store, bob)
    await put(store, bob)  # evicts c, stored during the flood: its eviction is summed
    assert ("evicted", c.message_id) not in await told(store)


async def test_an_expiry_past_the_told_ones_keeps_the_mark(redis_client: aioredis.Redis) -> None:
    """--ttl lowered between restarts: what the flood stored expires before older mail."""
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=3))
    bob = key()
    for _ in range(3):
        await put(store, bob)
    d = await put(store, bob, ttl=10)  # evicts a; b and c are told, d sits behind them
    assert await mark(store, bob) == 2
    _, expired = await store.queues.peek(bob, NOW + 20, limit=5)
    assert [m.id for m in expired] == [d.message_id]
    assert await mark(store, bob) == 2


async def test_the_sweep_counts_down_the_mark(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=2))
    bob = key()
    await put(store, bob)
    b = await put(store, bob, ttl=10)
    await put(store, bob)
    assert await mark(store, bob) == 1
    assert [m.id for m in await store.queues.sweep_expired(NOW + 20)] == [b.message_id]
    assert await mark(store, bob) == 0
    assert await store.queues.sweep_expired(NOW + 10**6) != []
    assert await mark(store, bob) is None, "an empty queue ends the flood"
    usage = await store.redis.hgetall(store.keys.usage_key)
    assert not [k for k in usage if bob.hex().encode() in k], "no field of bob's left"


async def test_a_purge_by_id_counts_down_the_mark(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=3))
    bob = key()
    for _ in range(3):
        await put(store, bob)
    d = await put(store, bob)
    assert await mark(store, bob) == 2
    assert await store.queues.purge(bob, d.message_id) == 1
    assert await mark(store, bob) == 2
    (b, _c) = await store.queues.messages(bob)
    assert await store.queues.purge(bob, b.id) == 1
    assert await mark(store, bob) == 1
