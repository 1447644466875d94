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
- Values carry a version. v3: ``0x03`` ‖ received_at (u64, ms) ‖ sender (33) ‖ path_key
  (33) ‖ length (u16) ‖ encrypted_recipient_data (what lnd 0.21 publishes with the
  message; empty on the custom transport) ‖ onion. v2 is the same without the length and
  the encrypted data. v1, written by releases before it under a random entry name, has no
  version byte: it starts with received_at, whose first byte is 0 (a time in ms is below
  2**56 for another two million years). v1 and v2 are still read, and decided like any
  other, by a full peel. A value of a version this release does not know (a newer one's)
  is left alone.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from lndmailbox.store import lua
from lndmailbox.store.client import RedisClient, as_items, as_str, redis_errors
from lndmailbox.store.durability import DurableWrites
from lndmailbox.store.keys import Keys, OldLayoutKeys
from lndmailbox.store.records import PUBKEY_SIZE, JournalEntry, Limits, ms

log = logging.getLogger(__name__)


class NewEntry(NamedTuple):
    """A message to journal."""

    entry: str
    """Its name, normally :func:`entry_for` of the message."""
    sender: bytes
    path_key: bytes
    onion: bytes
    received_at: float
    encrypted_recipient_data: bytes = b""

    @property
    def size(self) -> int:
        """The message bytes it holds, as the in-flight caps count them."""
        return len(self.path_key) + len(self.onion)


JOURNAL_VERSION = 3
"""The version byte of the values this release writes."""
_V1 = 0
"""The first byte of a v1 value: the top byte of its u64 receipt time in ms."""
_V2 = 2
_TIME = 8
_LENGTH = 2
_HEADER = {_V1: _TIME + 2 * PUBKEY_SIZE, _V2: 1 + _TIME + 2 * PUBKEY_SIZE}
_HEADER[JOURNAL_VERSION] = _HEADER[_V2] + _LENGTH
_MAX_ENCRYPTED_DATA = 2**16 - 1

DECIDED_FOR = 15.0
"""Seconds a decided message's entry is remembered as decided: three of the default race
window (``--race-window``). A standby that reads a message later than that after the
leader decided it journals it again, and the leader decides it again (a duplicate, never
a loss)."""


def entry_for(path_key: bytes, onion: bytes) -> str:
    """The journal entry of a message: the first 32 hex digits of SHA-256(path_key ‖ onion)."""
    return hashlib.sha256(path_key + onion).hexdigest()[:32]


def encode_entry(message: NewEntry) -> bytes:
    """A v3 journal value. Encrypted data too long for its u16 length (lnd's packets are
    at most 65535 bytes, and the data lies inside one) is left out: the decider then
    peels the message in full, as it does any message without it."""
    encrypted = message.encrypted_recipient_data
    if len(encrypted) > _MAX_ENCRYPTED_DATA:
        encrypted = b""
    return b"".join(
        (
            bytes((JOURNAL_VERSION,)),
            ms(message.received_at).to_bytes(_TIME, "big"),
            message.sender,
            message.path_key,
            len(encrypted).to_bytes(_LENGTH, "big"),
            encrypted,
            message.onion,
        )
    )


def decode_entry(entry: str, raw: bytes) -> JournalEntry | None:
    """The message of a journal value (v1, v2 or v3); None when the value is of a version
    this release does not know. Raises ValueError for a value too short to hold a message."""
    if not raw:
        raise ValueError("an empty journal value")
    version = raw[0]
    if version not in _HEADER:
        return None
    header = _HEADER[version]
    if len(raw) <= header:
        raise ValueError(f"a v{version or 1} journal value of {len(raw)} bytes")
    start = 0 if version == _V1 else 1
    sender = start + _TIME
    path_key = sender + PUBKEY_SIZE
    after_keys = path_key + PUBKEY_SIZE
    encrypted = b""
    onion = after_keys
    if version == JOURNAL_VERSION:
        length = int.from_bytes(raw[after_keys:header], "big")
        onion = header + length
        if len(raw) <= onion:
            raise ValueError(f"a v{version} journal value of {len(raw)} bytes")
        encrypted = raw[header:onion]
    return JournalEntry(
        entry=entry,
        received_at=int.from_bytes(raw[start:sender], "big") / 1000,
        sender=raw[sender:path_key],
        path_key=raw[path_key:after_keys],
        onion=raw[onion:],
        encrypted_recipient_data=encrypted,
    )


class Journal:
    """One hash of entry name to message; it expires with the TTL of mail. Beside it, the
    entries decided in the last :attr:`decided_for` seconds."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys | OldLayoutKeys,
        limits: Limits,
        durable: DurableWrites | None = None,
    ) -> None:
        self.redis = redis
        self.durable = durable or DurableWrites(redis)
        """Runs :meth:`write`, a write that matters."""
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

        """
        if not added and not decided:
            return 0
        args: list[Any] = [max(ms(self.limits.ttl), 1), max(ms(self.decided_for), 1), len(added)]
        for message in added:
            args += [message.entry, encode_entry(message)]
        args += decided
        keys = [self.keys.journal_key, self.keys.decided_key]
        return int(await self.durable.run(self._script, keys, args))

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
