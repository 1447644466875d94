"""What the Redis server itself reports: its version, memory, and this node's share."""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster

from lndmailbox.store.client import RedisClient, as_str, redis_errors
from lndmailbox.store.keys import Keys
from lndmailbox.store.records import ServerInfo

log = logging.getLogger(__name__)

_SCAN_PAGE = 500
"""Keys asked of each SCAN step, and measured in one pipeline."""


class Server:
    """The Redis server the store runs on, for ``mailboxctl status`` and metrics."""

    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    @redis_errors
    async def info(self) -> ServerInfo:
        """The server's version (Valkey's or Redis's) and the memory it uses: on a Cluster,
        the primary that holds this node's keys."""
        info = await self._info("server")
        memory = await self._info("memory")
        version = str(info.get("valkey_version") or info.get("redis_version") or "?")
        return ServerInfo(version=version, used_memory=int(memory.get("used_memory", 0)))

    @redis_errors
    async def run_id(self) -> str | None:
        """The run id of the server that holds this node's keys (on a Cluster, the primary
        of their slot, whichever node the URL names)."""
        found = (await self._info("server")).get("run_id")
        return None if found is None else str(found)

    async def _info(self, section: str) -> dict[str, Any]:
        if isinstance(self.redis, RedisCluster):
            await self.redis.initialize()  # the slot map, on a client's first call
            shard = self.redis.get_node_from_key(self.keys.counters_key)
            found: dict[str, Any] = await self.redis.info(section, target_nodes=shard)
            return found
        return await self.redis.info(section)

    @redis_errors
    async def memory_usage(self) -> int:
        """Bytes Redis spends on this node's keys: MEMORY USAGE summed over a SCAN (of every
        primary on a Cluster), one pipeline per page of keys (a node with mail for 10,000
        peers has 20,000 keys). A peer's keys are measured whole (the caps bound them); the
        node's own keys (the event stream, the usage hash, the mail index: one entry a
        message or a peer) from Redis's default sample, so that no call walks every
        message."""
        total = 0
        page: list[str] = []
        async for key in self.redis.scan_iter(match=self.keys.key_pattern, count=_SCAN_PAGE):
            page.append(as_str(key))
            if len(page) == _SCAN_PAGE:
                total += await self._measure(page)
                page = []
        return total + (await self._measure(page) if page else 0)

    async def _measure(self, keys: list[str]) -> int:
        peer_keys = self.keys.prefix + "peer:"
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key, samples=0 if key.startswith(peer_keys) else None)
            return sum(int(n or 0) for n in await pipe.execute())
