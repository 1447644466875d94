"""The node's allowlist: the peers the mailbox holds messages for."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from lndmailbox.errors import StoreError
from lndmailbox.store.client import RedisClient, as_str, redis_errors
from lndmailbox.store.keys import Keys
from lndmailbox.store.records import check_pubkey

log = logging.getLogger(__name__)


class Allowlist:
    """A set of peer pubkeys (hex) under the node's ``allow`` key."""

    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    @redis_errors
    async def add(self, peers: Iterable[bytes]) -> int:
        """Adds peers to the allowlist; how many were new. :class:`RecordError` (nothing
        added) if one is not a 33-byte pubkey."""
        chosen = list(peers)
        for p in chosen:
            check_pubkey("peer", p)
        members = [p.hex() for p in chosen]
        return int(await self.redis.sadd(self.keys.allow_key, *members)) if members else 0

    @redis_errors
    async def remove(self, peers: Iterable[bytes]) -> int:
        """Removes peers from the allowlist; how many were on it."""
        members = [p.hex() for p in peers]
        return int(await self.redis.srem(self.keys.allow_key, *members)) if members else 0

    @redis_errors
    async def contains(self, peer: bytes) -> bool:
        return bool(await self.redis.sismember(self.keys.allow_key, peer.hex()))

    @redis_errors
    async def members(self) -> list[bytes]:
        """The allowed peers, sorted; a member that is no pubkey (written by hand) is passed
        over and logged, so that it cannot deny everyone else."""
        peers = []
        for member in await self.redis.smembers(self.keys.allow_key):
            try:
                text = as_str(member)
            except StoreError:
                log.warning("allowlist member %r is not a pubkey in hex; ignored", member)
                continue
            try:
                peer = bytes.fromhex(text)
                check_pubkey("allowlist member", peer)
            except (ValueError, StoreError):
                log.warning("allowlist member %r is not a pubkey in hex; ignored", text)
                continue
            peers.append(peer)
        return sorted(peers)
