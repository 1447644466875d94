"""What the Redis server itself reports: its version, memory, and this node's share."""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster

from lndmailbox.store.client import RedisClient, redis_errors
from lndmailbox.store.keys import Keys
from lndmailbox.store.records import ServerInfo

log = logging.getLogger(__name__)


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

    async def _info(self, section: str) -> dict[str, Any]:
        if isinstance(self.redis, RedisCluster):
            await self.redis.initialize()  # the slot map, on a client's first call
            shard = self.redis.get_node_from_key(self.keys.counters_key)
            found: dict[str, Any] = await self.redis.info(section, target_nodes=shard)
            return found
        return await self.redis.info(section)

    @redis_errors
    async def memory_usage(self) -> int:
        """Bytes Redis spends on this node's keys (MEMORY USAGE summed over a SCAN,
        of every primary on a Cluster)."""
        total = 0
        async for key in self.redis.scan_iter(match=self.keys.key_pattern, count=500):
            total += int(await self.redis.memory_usage(key, samples=0) or 0)
        return total
