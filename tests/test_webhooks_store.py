"""LSPS5 webhook registrations in Redis (store/webhooks.py), on one server and on the
session's Cluster: set, replace, no change, too many, remove, list, touch, clients,
prune and count, and what a hand-damaged value or index member does."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import pytest
import redis
import redis.cluster

from lndmailbox.errors import StoreError
from lndmailbox.store import Store, Webhook, WebhookClient, WebhookSet
from lndmailbox.store.client import RedisClient
from lndmailbox.store.queues import PAGE
from lndmailbox.store.urls import parse_redis_url
from tests.store_helpers import key

NODE = bytes.fromhex("03" + "5a" * 32)
T0 = 1_700_000_000_000
DAY = 86_400_000
TOKEN = "tok-3f9a0c7e1b2d4a68"


@pytest.fixture
def redis_client(server_or_cluster: RedisClient) -> RedisClient:
    """Each test on one server and on a Cluster."""
    return server_or_cluster


@pytest.fixture
def store(redis_client: RedisClient) -> Store:
    return Store(redis_client, NODE)


@pytest.fixture
def sync_client(server_or_cluster_url: str) -> Iterator[redis.Redis | redis.cluster.RedisCluster]:
    """A second, blocking client on the same deployment: a write between two steps of a
    store call, from a callback the call makes."""
    target = parse_redis_url(server_or_cluster_url)
    client: redis.Redis | redis.cluster.RedisCluster
    if target.kind == "cluster":
        host, port = target.hosts[0]
        client = redis.cluster.RedisCluster(host=host, port=port)
    else:
        client = redis.Redis.from_url(server_or_cluster_url)
    yield client
    client.close()


def url(n: int) -> str:
    return f"https://push.example.com/v1/notify?app={n}&token={TOKEN}"


async def last_seen(store: Store, peer: bytes) -> int | None:
    score = await store.redis.zscore(store.keys.webhook_clients_key, peer.hex())
    return None if score is None else int(score)


async def test_set_inserts_replaces_and_says_no_change(store: Store, rng: random.Random) -> None:
    peer = key(rng)
    assert await store.webhooks.list(peer) == ()
    assert await store.webhooks.set(peer, "wallet", url(1), max_webhooks=3, now_ms=T0) == (
        WebhookSet(num_webhooks=1)
    )
    assert await store.webhooks.list(peer) == (Webhook("wallet", url(1), T0),)
    assert await last_seen(store, peer) == T0

    # the same URL: nothing written but the last seen; the registration time stays
    again = await store.webhooks.set(peer, "wallet", url(1), max_webhooks=3, now_ms=T0 + 5)
    assert again == WebhookSet(num_webhooks=1, no_change=True)
    assert await store.webhooks.list(peer) == (Webhook("wallet", url(1), T0),)
    assert await last_seen(store, peer) == T0 + 5

    # another URL for the same app: replaced, registered now
    replaced = await store.webhooks.set(peer, "wallet", url(2), max_webhooks=3, now_ms=T0 + 9)
    assert replaced == WebhookSet(num_webhooks=1)
    assert await store.webhooks.list(peer) == (Webhook("wallet", url(2), T0 + 9),)
    assert await last_seen(store, peer) == T0 + 9
    assert await store.webhooks.count() == (1, 1)


async def test_list_is_by_app_name_and_keeps_utf8_names(store: Store, rng: random.Random) -> None:
    peer = key(rng)
    names = ["zeus", "café", "Breez", "⚡ wallet", "a"]
    for i, name in enumerate(names):
        await store.webhooks.set(peer, name, url(i), max_webhooks=10, now_ms=T0 + i)
    listed = await store.webhooks.list(peer)
    assert [w.app_name for w in listed] == sorted(names)
    assert {w.app_name: (w.url, w.registered_at_ms) for w in listed} == {
        name: (url(i), T0 + i) for i, name in enumerate(names)
    }
    # another peer's are its own
    assert await store.webhooks.list(key(rng)) == ()


async def test_a_new_app_past_the_maximum_is_too_many_and_writes_nothing(
    store: Store, rng: random.Random
) -> None:
    peer = key(rng)
    for i in range(3):
        await store.webhooks.set(peer, f"app{i}", url(i), max_webhooks=3, now_ms=T0 + i)
    before = await store.webhooks.list(peer)
    refused = await store.webhooks.set(peer, "app3", url(3), max_webhooks=3, now_ms=T0 + 50)
    assert refused == WebhookSet(num_webhooks=3, too_many=True)
    assert await store.webhooks.list(peer) == before
    assert await last_seen(store, peer) == T0 + 2, "nothing written, the last seen neither"

    # replacing one at the maximum is no new one
    replaced = await store.webhooks.set(peer, "app1", url(9), max_webhooks=3, now_ms=T0 + 60)
    assert replaced == WebhookSet(num_webhooks=3)
    assert Webhook("app1", url(9), T0 + 60) in await store.webhooks.list(peer)
    # nor is the same URL again, even with a lower maximum meanwhile
    same = await store.webhooks.set(peer, "app2", url(2), max_webhooks=1, now_ms=T0 + 70)
    assert same == WebhookSet(num_webhooks=3, no_change=True)
    assert await store.webhooks.count() == (1, 3)


async def test_remove_and_the_last_one_takes_the_client_out(
    store: Store, rng: random.Random
) -> None:
    peer, other = key(rng), key(rng)
    await store.webhooks.set(peer, "a", url(1), max_webhooks=5, now_ms=T0)
    await store.webhooks.set(peer, "b", url(2), max_webhooks=5, now_ms=T0)
    await store.webhooks.set(other, "a", url(3), max_webhooks=5, now_ms=T0)

    assert not await store.webhooks.remove(peer, "nope", now_ms=T0 + 1)
    assert await last_seen(store, peer) == T0 + 1, "a client that asks is seen"
    assert not await store.webhooks.remove(key(rng), "a", now_ms=T0 + 1)
    assert await store.webhooks.count() == (2, 3), "a stranger is made no client"

    assert await store.webhooks.remove(peer, "a", now_ms=T0 + 2)
    assert await store.webhooks.list(peer) == (Webhook("b", url(2), T0),)
    assert await last_seen(store, peer) == T0 + 2
    assert await store.webhooks.remove(peer, "b", now_ms=T0 + 3)
    assert await store.webhooks.list(peer) == ()
    assert await last_seen(store, peer) is None
    assert not await store.redis.exists(store.keys.webhooks_key(peer))
    assert not await store.webhooks.remove(peer, "b", now_ms=T0 + 4)
    assert await store.webhooks.clients() == [(other, T0)]


async def test_a_damaged_value_is_skipped_logged_without_it_and_replaceable(
    store: Store, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    peer = key(rng)
    await store.webhooks.set(peer, "good", url(1), max_webhooks=4, now_ms=T0)
    hooks = store.keys.webhooks_key(peer)
    secret = f"https://evil.example/{TOKEN}"
    await store.redis.hset(hooks, "broken", f'{{"url": "{secret}", "at"')  # cut short
    await store.redis.hset(hooks, "no-time", f'{{"url": "{secret}"}}')
    await store.redis.hset(hooks, b"\xff\xfe", '{"url": "https://x.example/", "at": 1}')
    with caplog.at_level(logging.WARNING, logger="lndmailbox.store.webhooks"):
        assert await store.webhooks.list(peer) == (Webhook("good", url(1), T0),)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert all(peer.hex() in w for w in warnings)
    assert TOKEN not in caplog.text

    # the client is at its maximum of four fields: a damaged one is replaced, not "too many"
    fixed = await store.webhooks.set(peer, "broken", url(2), max_webhooks=4, now_ms=T0 + 1)
    assert fixed == WebhookSet(num_webhooks=4)
    assert [w.app_name for w in await store.webhooks.list(peer)] == ["broken", "good"]
    assert (await store.webhooks.set(peer, "new", url(3), max_webhooks=4, now_ms=T0)).too_many
    assert await store.webhooks.count() == (1, 4)


async def test_touch_sets_last_seen_of_clients_only_over_pages(
    store: Store, rng: random.Random
) -> None:
    clients = [key(rng) for _ in range(2 * PAGE + 5)]
    for i, peer in enumerate(clients):
        await store.webhooks.set(peer, "w", url(i), max_webhooks=1, now_ms=T0)
    strangers = [key(rng) for _ in range(7)]
    touched = clients[::2]
    mixed = [*touched, *strangers]
    rng.shuffle(mixed)
    await store.webhooks.touch(iter(mixed), now_ms=T0 + DAY)
    await store.webhooks.touch([], now_ms=T0 + 2 * DAY)
    expected = sorted((p, T0 + DAY if p in touched else T0) for p in clients)
    assert await store.webhooks.clients() == expected
    assert await store.webhooks.count() == (len(clients), len(clients))


async def test_an_operators_removal_leaves_the_last_seen(store: Store, rng: random.Random) -> None:
    peer = key(rng)
    await store.webhooks.set(peer, "a", url(1), max_webhooks=5, now_ms=T0)
    await store.webhooks.set(peer, "b", url(2), max_webhooks=5, now_ms=T0 + 1)
    assert await store.webhooks.remove(peer, "a", now_ms=None)
    assert not await store.webhooks.remove(peer, "a", now_ms=None)
    assert await store.webhooks.last_seen(peer) == T0 + 1
    assert await store.webhooks.remove(peer, "b", now_ms=None)
    assert await store.webhooks.last_seen(peer) is None
    assert await store.webhooks.clients() == []


async def test_summaries_count_each_clients_webhooks_over_pages(
    store: Store, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    peers = [key(rng) for _ in range(2 * PAGE + 3)]
    for i, peer in enumerate(peers):
        for n in range(i % 3 + 1):
            await store.webhooks.set(peer, f"app{n}", url(i), max_webhooks=5, now_ms=T0 + i)
    await store.redis.zadd(store.keys.webhook_clients_key, {"bob's phone": 1})
    assert await store.webhooks.summaries() == sorted(
        (WebhookClient(p, T0 + i, i % 3 + 1) for i, p in enumerate(peers)), key=lambda c: c.peer
    )
    assert await store.webhooks.last_seen(peers[4]) == T0 + 4
    assert await store.webhooks.last_seen(key(rng)) is None


async def test_clients_reads_the_index_whole_in_pages_and_skips_strangers(
    store: Store, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    peers = [key(rng) for _ in range(3 * PAGE + 1)]
    for i, peer in enumerate(peers):
        await store.webhooks.set(peer, "w", url(i), max_webhooks=1, now_ms=T0 + i)
    index = store.keys.webhook_clients_key
    await store.redis.zadd(index, {"bob's phone": 1, peers[0].hex().upper(): 2})
    expected = sorted((p, T0 + i) for i, p in enumerate(peers))
    assert await store.webhooks.clients() == expected
    assert await store.webhooks.clients(limit=5) == expected[:5]
    assert 'webhook_clients holds "bob\'s phone", not a peer' in caplog.text
    assert await store.webhooks.count() == (len(peers) + 2, len(peers))


async def test_prune_removes_the_unseen_without_a_channel_and_spares_one_seen_meanwhile(
    store: Store,
    rng: random.Random,
    sync_client: redis.Redis | redis.cluster.RedisCluster,
) -> None:
    """Over several pages of due clients. While prune looks at the first, another daemon
    sees one further on in the same page (a blocking client's write from ``keep``): that
    one's script finds it seen and leaves it."""
    old = [key(rng) for _ in range(2 * PAGE + 3)]
    for i, peer in enumerate(old):
        # distinct and increasing last seen: the index's order is this list's
        await store.webhooks.set(peer, "w", url(i), max_webhooks=2, now_ms=T0 + i)
        if i % 5 == 0:
            await store.webhooks.set(peer, "x", url(i + 1000), max_webhooks=2, now_ms=T0 + i)
    recent = [key(rng) for _ in range(4)]
    for peer in recent:
        await store.webhooks.set(peer, "w", url(7), max_webhooks=2, now_ms=T0 + 30 * DAY)
    with_channel = set(old[1::3])
    seen_meanwhile = old[6]
    asked: list[bytes] = []

    def keep(peer: bytes) -> bool:
        asked.append(peer)
        if peer == old[0]:
            sync_client.zadd(
                store.keys.webhook_clients_key, {seen_meanwhile.hex(): T0 + 31 * DAY}, xx=True
            )
        return peer in with_channel

    cutoff = T0 + 7 * DAY
    removed = await store.webhooks.prune(seen_before_ms=cutoff, keep=keep)

    gone = [p for p in old if p not in with_channel and p != seen_meanwhile]
    assert removed == len(gone)
    assert sorted(asked) == sorted(old), "each due client asked about once, no recent one"
    left = dict(await store.webhooks.clients())
    assert set(left) == {*with_channel, seen_meanwhile, *recent}
    assert left[seen_meanwhile] == T0 + 31 * DAY
    for peer in gone:
        assert await store.webhooks.list(peer) == ()
        assert not await store.redis.exists(store.keys.webhooks_key(peer))
    assert [w.app_name for w in await store.webhooks.list(seen_meanwhile)] == ["w"]
    assert await store.webhooks.count() == (
        len(left),
        len(left) + sum(1 for i, p in enumerate(old) if i % 5 == 0 and p in left),
    )
    # nothing left to prune with the same rule
    assert await store.webhooks.prune(seen_before_ms=cutoff, keep=keep) == 0


async def test_prune_passes_over_a_stranger_in_the_index(
    store: Store, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    peer = key(rng)
    await store.webhooks.set(peer, "w", url(1), max_webhooks=1, now_ms=T0)
    await store.redis.zadd(store.keys.webhook_clients_key, {"not a peer": T0 - 1})
    assert await store.webhooks.prune(seen_before_ms=T0 + 1, keep=lambda _: False) == 1
    assert await store.webhooks.clients() == []
    assert "not a peer" in caplog.text
    assert await store.webhooks.count() == (1, 0)


async def test_a_key_of_the_wrong_type_is_a_store_error(store: Store, rng: random.Random) -> None:
    peer = key(rng)
    await store.redis.set(store.keys.webhooks_key(peer), "x")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        await store.webhooks.set(peer, "w", url(1), max_webhooks=1, now_ms=T0)
    assert await store.webhooks.clients() == []
