"""The journal: messages read from lnd and not decided yet (write-ahead), for every daemon.

lnd's streams have no acknowledgement: without the journal, a daemon that dies between
reading a message and storing it loses it. Every daemon of a node, the leader and its
standbys, journals what it reads; the leader decides, and what a daemon that died left
is read back (:meth:`Journal.pending`) and decided by the next leader. Redis calls the
key ``inbox``.

Rules that hold:

- An entry is named by the message itself (:func:`entry_for`: a digest of path_key and
  onion), so a message is held once however many daemons read it.
- A decided message leaves the inbox and is recorded as decided (the ``decided`` sorted
  set) for :data:`DECIDED_FOR` seconds: a copy journaled later by a standby that was
  slower to read it is not journaled again, so a decided message never comes back. The
  record is trimmed on every decision: it holds a few seconds of decisions, whatever the
  traffic. Both are one script (``lua/journal.lua``), which Redis refuses while over
  ``maxmemory``; then decided entries can still leave the inbox, unrecorded
  (:meth:`Journal.forget`, ``lua/journal_forget.lua``, which only deletes).
- Values carry a version. v2: ``0x02`` ‖ received_at (u64, ms) ‖ sender (33) ‖ path_key
  (33) ‖ onion. v1, written by releases before it under a random entry name, has no
  version byte: it starts with received_at, whose first byte is 0 (a time in ms is below
  2**56 for another two million years); it is still read, and decided like any other.
  A value of a version this release does not know (a newer one's) is left alone.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from lndmailbox.store import lua
from lndmailbox.store.client import as_items, as_str, redis_errors
from lndmailbox.store.keys import Keys
from lndmailbox.store.records import PUBKEY_SIZE, JournalEntry, Limits, ms

log = logging.getLogger(__name__)

NewEntry = tuple[str, bytes, bytes, bytes, float]
"""A message to journal: (entry, sender, path_key, onion, received_at)."""

JOURNAL_VERSION = 2
"""The version byte of the values this release writes."""
_V1 = 0
"""The first byte of a v1 value: the top byte of its u64 receipt time in ms."""
_TIME = 8
_SHORTEST = {_V1: _TIME + 2 * PUBKEY_SIZE + 1, JOURNAL_VERSION: 1 + _TIME + 2 * PUBKEY_SIZE + 1}

DECIDED_FOR = 15.0
"""Seconds a decided message's entry is remembered as decided: three of the default race
window (``--race-window``). A standby that reads a message later than that after the
leader decided it journals it again, and the leader decides it again (a duplicate, never
a loss)."""


def entry_for(path_key: bytes, onion: bytes) -> str:
    """The journal entry of a message: the first 32 hex digits of SHA-256(path_key ‖ onion)."""
    return hashlib.sha256(path_key + onion).hexdigest()[:32]


def encode_entry(sender: bytes, path_key: bytes, onion: bytes, received_at: float) -> bytes:
    """A v2 journal value."""
    return (
        bytes((JOURNAL_VERSION,)) + ms(received_at).to_bytes(8, "big") + sender + path_key + onion
    )


def decode_entry(entry: str, raw: bytes) -> JournalEntry | None:
    """The message of a journal value (v1 or v2); None when the value is of a version this
    release does not know. Raises ValueError for a value too short to hold a message."""
    if not raw:
        raise ValueError("an empty journal value")
    version = raw[0]
    if version not in _SHORTEST:
        return None
    if len(raw) < _SHORTEST[version]:
        raise ValueError(f"a v{version or 1} journal value of {len(raw)} bytes")
    start = 0 if version == _V1 else 1
    sender = start + _TIME
    path_key = sender + PUBKEY_SIZE
    onion = path_key + PUBKEY_SIZE
    return JournalEntry(
        entry=entry,
        received_at=int.from_bytes(raw[start:sender], "big") / 1000,
        sender=raw[sender:path_key],
        path_key=raw[path_key:onion],
        onion=raw[onion:],
    )


class Journal:
    """One hash of entry name to message; it expires with the TTL of mail. Beside it, the
    entries decided in the last :attr:`decided_for` seconds."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, limits: Limits) -> None:
        self.redis = redis
        self.keys = keys
        self.limits = limits
        self.decided_for = DECIDED_FOR
        self._script = redis.register_script(lua.program("journal"))
        self._forget_script = redis.register_script(lua.program("journal_forget"))

    @redis_errors
    async def write(self, added: Sequence[NewEntry] = (), decided: Sequence[str] = ()) -> int:
        """Journals messages just read from lnd and forgets decided ones, in one round trip
        (one script). A message journaled already keeps its first copy; one decided within
        :attr:`decided_for` seconds is not journaled again. Returns how many of ``added``
        were not journaled for that reason.

        ``added``: (entry, sender, path_key, onion, received_at), ``entry`` normally
        :func:`entry_for` of the message.
        """
        if not added and not decided:
            return 0
        args: list[Any] = [max(ms(self.limits.ttl), 1), max(ms(self.decided_for), 1), len(added)]
        for entry, sender, path_key, onion, at in added:
            args += [entry, encode_entry(sender, path_key, onion, at)]
        args += decided
        keys = [self.keys.journal_key, self.keys.decided_key]
        return int(await self._script(keys=keys, args=args))

    @redis_errors
    async def forget(self, decided: Sequence[str]) -> int:
        """Deletes the entries ``decided`` from the inbox without recording them as decided
        (and trims the record of older decisions): the one journal write Redis runs while
        over ``maxmemory``, since it adds nothing. Returns how many were in the inbox."""
        if not decided:
            return 0
        keys = [self.keys.journal_key, self.keys.decided_key]
        args: list[Any] = [max(ms(self.decided_for), 1), *decided]
        return int(await self._forget_script(keys=keys, args=args))

    @redis_errors
    async def pending(self) -> list[JournalEntry]:
        """Journaled messages nobody decided yet, oldest first.

        An entry too short to hold a message is removed (it can only be damage); one of a
        version this release does not know is left to the release that wrote it."""
        raw = await self.redis.hgetall(self.keys.journal_key)
        return sorted(await self._decode(raw.items()), key=lambda e: e.received_at)

    @redis_errors
    async def entries(self) -> list[str]:
        """The names of every entry journaled now (HKEYS: no message bytes)."""
        return [as_str(entry) for entry in as_items(await self.redis.hkeys(self.keys.journal_key))]

    @redis_errors
    async def read(self, entries: Sequence[str]) -> list[JournalEntry]:
        """The messages of ``entries`` still journaled (gone ones are left out), in order."""
        if not entries:
            return []
        values = as_items(await self.redis.hmget(self.keys.journal_key, list(entries)))
        return await self._decode(
            (entry, value) for entry, value in zip(entries, values, strict=True) if value
        )

    async def _decode(self, items: Any) -> list[JournalEntry]:
        found: list[JournalEntry] = []
        damaged: list[Any] = []
        unknown = 0
        for entry, raw in items:
            if not isinstance(raw, bytes):
                damaged.append(entry)
                continue
            try:
                decoded = decode_entry(as_str(entry), raw)
            except ValueError:
                damaged.append(entry)
                continue
            if decoded is None:
                unknown += 1
            else:
                found.append(decoded)
        if unknown:
            log.warning(
                "%d journal entries are of a version this release does not know (a newer "
                "one's); they are left for it",
                unknown,
            )
        if damaged:
            await self.redis.hdel(self.keys.journal_key, *damaged)
        return found
