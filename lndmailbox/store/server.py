"""What the Redis server itself reports: its version, memory, and this node's share."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from lndmailbox.store.client import as_str, redis_errors
from lndmailbox.store.keys import Keys
from lndmailbox.store.records import ServerInfo

log = logging.getLogger(__name__)


class Server:
    """The Redis server the store runs on, for ``mailboxctl status`` and metrics."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    @redis_errors
    async def info(self) -> ServerInfo:
        """The server's version (Valkey's or Redis's) and the memory it uses."""
        info = await self.redis.info("server")
        memory = await self.redis.info("memory")
        version = str(info.get("valkey_version") or info.get("redis_version") or "?")
        return ServerInfo(version=version, used_memory=int(memory.get("used_memory", 0)))

    @redis_errors
    async def memory_usage(self) -> int:
        """Bytes Redis spends on this node's keys: MEMORY USAGE summed over a SCAN, one
        pipeline per SCAN page (a node with mail for 10,000 peers has 20,000 keys). A peer's
        keys are measured whole (the caps bound them); the node's own keys (the event
        stream, the usage hash, the mail index: one entry a message or a peer) from Redis's
        default sample, so that no call walks every message."""
        total = 0
        cursor = 0
        peer_keys = self.keys.prefix + "peer:"
        while True:
            cursor, keys = await self.redis.scan(cursor, match=self.keys.key_pattern, count=500)
            if keys:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        whole = as_str(key).startswith(peer_keys)
                        pipe.memory_usage(key, samples=0 if whole else None)
                    total += sum(int(n or 0) for n in await pipe.execute())
            if not cursor:
                return total
