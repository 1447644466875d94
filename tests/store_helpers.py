"""Store helpers for the tests: one message through the production path, and maxmemory."""

from __future__ import annotations

import random

from redis.asyncio.cluster import RedisCluster

from lndmailbox.onion import LocalNodeKey
from lndmailbox.store import NewMessage, PutResult, Store
from lndmailbox.store.client import RedisClient


async def put_one(
    store: Store,
    peer: bytes,
    sender: bytes,
    path_key: bytes,
    onion: bytes,
    now: float,
    *,
    ttl: float | None = None,
) -> PutResult:
    """Queues one message with :meth:`Queues.put_many` (what the daemon calls); its result."""
    (result,) = await store.queues.put_many(
        [NewMessage(peer, sender, path_key, onion, now)], ttl=ttl
    )
    return result


async def set_maxmemory(redis: RedisClient, value: int) -> None:
    """CONFIG SET maxmemory on the server, or on every node of a Cluster."""
    await set_config(redis, "maxmemory", value)


async def set_config(redis: RedisClient, name: str, value: int) -> None:
    """CONFIG SET on the server, or on every node of a Cluster (redis-py sends CONFIG SET
    to one node of a Cluster)."""
    if isinstance(redis, RedisCluster):
        await redis.config_set(name, value, target_nodes=RedisCluster.ALL_NODES)
    else:
        await redis.config_set(name, value)


def key(rng: random.Random) -> bytes:
    """A node or peer key: a point, as mailboxctl's --node wants."""
    return LocalNodeKey(rng.randbytes(32)).pubkey
