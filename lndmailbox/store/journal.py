"""The journal: messages the daemon read from lnd and has not decided yet (write-ahead).

lnd's streams have no acknowledgement: without the journal, a daemon that dies between
reading a message and storing it loses it. The next daemon reads what is left
(:meth:`Journal.pending`) and decides it. Redis calls the key ``inbox``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from lndmailbox.store.client import as_str, redis_errors
from lndmailbox.store.keys import Keys
from lndmailbox.store.records import PUBKEY_SIZE, JournalEntry, Limits, ms

log = logging.getLogger(__name__)

NewEntry = tuple[str, bytes, bytes, bytes, float]
"""A message to journal: (entry, sender, path_key, onion, received_at)."""

_SHORTEST_ENTRY = 8 + 2 * PUBKEY_SIZE + 1


class Journal:
    """One hash of entry name to message; it expires with the TTL of mail."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, limits: Limits) -> None:
        self.redis = redis
        self.keys = keys
        self.limits = limits

    @redis_errors
    async def write(self, added: Sequence[NewEntry] = (), decided: Sequence[str] = ()) -> None:
        """Journals messages just read from lnd and forgets decided ones, in one round trip.

        ``added``: (entry, sender, path_key, onion, received_at). Entry value:
        received_at (u64, ms) ‖ sender (33) ‖ path_key (33) ‖ onion.
        """
        if not added and not decided:
            return
        key = self.keys.journal_key
        async with self.redis.pipeline(transaction=False) as pipe:
            if added:
                pipe.hset(
                    key,
                    mapping={
                        entry: ms(at).to_bytes(8, "big") + sender + path_key + onion
                        for entry, sender, path_key, onion, at in added
                    },
                )
                pipe.pexpire(key, max(ms(self.limits.ttl), 1))
            if decided:
                pipe.hdel(key, *decided)
            await pipe.execute()

    @redis_errors
    async def pending(self) -> list[JournalEntry]:
        """Journaled messages a previous daemon left undecided, oldest first.

        An entry too short to hold a message is removed (it can only be damage)."""
        pending: list[JournalEntry] = []
        damaged: list[Any] = []
        for entry, raw in (await self.redis.hgetall(self.keys.journal_key)).items():
            if not isinstance(raw, bytes) or len(raw) < _SHORTEST_ENTRY:
                damaged.append(entry)
                continue
            pending.append(
                JournalEntry(
                    entry=as_str(entry),
                    received_at=int.from_bytes(raw[:8], "big") / 1000,
                    sender=raw[8:41],
                    path_key=raw[41:74],
                    onion=raw[74:],
                )
            )
        if damaged:
            await self.redis.hdel(self.keys.journal_key, *damaged)
        return sorted(pending, key=lambda e: e.received_at)
