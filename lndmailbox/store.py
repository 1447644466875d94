"""The mailbox's Redis store: the only module that names a Redis key or runs a Redis command.

What lives where (the full table, TTLs and redis-cli recipes are in docs/redis-schema.md):

* one list per peer, ``lndmailbox:<node>:peer:{<peer>}:queue``, oldest message first, each
  element a compact binary record (:func:`encode_record`: version byte, id, expiry,
  attempts, sender, path_key, onion);
* beside it ``...:{<peer>}:dedup``, a hash from a digest of (path_key, onion) to the id, so
  the same message is queued once;
* node-wide: ``lndmailbox:<node>:mail`` (a sorted set of the peers with mail, scored by the
  earliest expiry, which the sweep walks), ``:usage`` (message and byte totals, per peer and
  for the node, which the caps read), the allowlist, the counters, the event stream, the
  daemon's lock and heartbeat, and the delivery requests from ``mailboxctl deliver``.

Rules that hold:

* Every write that touches a message is one Lua script, so a message is stored with its
  dedup entry, byte totals, index entry and key TTLs, or not at all; it leaves the same way.
  The scripts touch one peer's keys and the node's keys together: that is atomic on one
  Redis (standalone, or a primary with replicas/Sentinel), not on Redis Cluster (see the
  schema document for the trade-off).
* A message is never returned for delivery once ``now >= expires_at``; expired messages are
  removed and handed back to the caller so it can count and publish them.
* The store never reads the wall clock for a decision: every call that needs the time takes
  ``now`` (Unix seconds). Redis key TTLs are set relative to that ``now`` (the time left
  plus a grace period), so they are right whatever clock the caller uses.
* The store counts nothing on its own behalf except messages whose keys Redis expired
  before any sweep saw them (added to the ``expired`` counter by the sweep that notices);
  everything else is counted by the caller from the results.
* Redis connection and timeout failures become :class:`StoreUnavailableError`, anything
  else Redis refuses or an unreadable record becomes :class:`StoreError`.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
import os
import re
import time
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from lndmailbox.errors import ConfigError, StoreError, StoreUnavailableError

__all__ = [
    "HEADER_SIZE",
    "RECORD_VERSION",
    "Event",
    "Limits",
    "PeerSummary",
    "PutResult",
    "PutStatus",
    "ServerInfo",
    "Stats",
    "Store",
    "StoredMessage",
    "decode_record",
    "encode_record",
]

RECORD_VERSION = 1
"""First byte of every queued record; a record with another version is refused."""

PUBKEY_SIZE = 33
ID_SIZE = 10
"""Message ids are 10 bytes (20 hex digits): received_at in ms (6 bytes) + 4 random bytes."""

HEADER_SIZE = 1 + ID_SIZE + 6 + 2 + PUBKEY_SIZE
"""Bytes before path_key in a record: version, id, expires_at, attempts, sender (52)."""

_MAX_U48 = (1 << 48) - 1
_MAX_ATTEMPTS = 0xFFFF
_DELIVERY_REQUEST_TTL_MS = 3_600_000
_DEFAULT_EVENTS_MAXLEN = 10_000
_NODE_KEY = re.compile(r"lndmailbox:((?:02|03)[0-9a-f]{64}):(?:counters|heartbeat)")
"""Keys only a node with a mailbox has: how tools find the nodes a Redis serves."""

log = logging.getLogger("lndmailbox.store")


def _event_time(at: float | None = None) -> str:
    """An event's ``at`` field: seconds since the epoch, to the millisecond."""
    return f"{time.time() if at is None else at:.3f}"


def _ms(seconds: float) -> int:
    return math.floor(seconds * 1000)


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Limits:
    """How much the mailbox keeps and for how long (defaults justified in docs/redis-schema.md).

    ``ttl``: seconds a message is kept. ``max_messages_per_peer`` / ``max_bytes_per_peer``: when
    a new message would pass either, the peer's oldest messages give way. ``max_bytes_total``:
    when the node's queued bytes would pass it, the new message is rejected. Bytes are message
    bytes (path_key + onion). ``key_grace``: seconds Redis keeps a key after its last message
    expired, so that the sweep, not Redis, removes (and counts) expired messages.
    """

    ttl: float = 86_400.0
    max_messages_per_peer: int = 64
    max_bytes_per_peer: int = 256 * 1024
    max_bytes_total: int = 256 * 1024 * 1024
    key_grace: float = 3_600.0

    def __post_init__(self) -> None:
        if not self.ttl > 0:
            raise ConfigError(f"ttl must be positive, not {self.ttl}")
        for name in ("max_messages_per_peer", "max_bytes_per_peer", "max_bytes_total"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.key_grace < 0:
            raise ConfigError(f"key_grace must not be negative, not {self.key_grace}")


@dataclass(frozen=True)
class StoredMessage:
    """One queued onion message for ``peer`` (the next hop), received from ``sender``."""

    id: str
    peer: bytes
    sender: bytes
    path_key: bytes
    onion: bytes
    received_at: float
    expires_at: float
    attempts: int

    @property
    def size(self) -> int:
        """Message bytes (path_key + onion): what the byte caps and totals count."""
        return len(self.path_key) + len(self.onion)

    def expired(self, now: float) -> bool:
        return _ms(now) >= _ms(self.expires_at)


class PutStatus(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    """The same (path_key, onion) is already queued for this peer; ``message_id`` is its id."""
    REJECTED_FULL = "rejected_full"
    """The node's byte cap would be passed (or the message is larger than a peer's byte cap)."""
    REJECTED_DAMAGED = "rejected_damaged"
    """The peer's keys hold values of the wrong type (written by something else): untouched."""


@dataclass(frozen=True)
class NewMessage:
    """A message to queue for ``peer``, which arrived at ``now`` from ``sender``.

    ``id``: give one (:func:`new_message_id`) to write the same message again after an
    unknown outcome (a lost reply): the copy already stored is then reported STORED, not
    DUPLICATE. None: a fresh one."""

    peer: bytes
    sender: bytes
    path_key: bytes
    onion: bytes
    now: float
    id: str | None = None


@dataclass(frozen=True)
class PutResult:
    """What :meth:`Store.put` did. ``evicted`` are the ids of the peer's oldest messages that
    gave way to this one (``evicted_messages`` the messages themselves, for events)."""

    status: PutStatus
    message_id: str
    evicted: tuple[str, ...] = ()
    evicted_messages: tuple[StoredMessage, ...] = ()
    message: StoredMessage | None = None
    size: int = 0


@dataclass(frozen=True)
class Stats:
    """Node-wide totals of what is queued."""

    peers_with_mail: int
    messages: int
    bytes: int
    oldest_received_at: float | None


@dataclass(frozen=True)
class PeerSummary:
    """One peer with mail, for ``mailboxctl peers`` and metrics."""

    peer: bytes
    messages: int
    bytes: int
    oldest_received_at: float | None
    newest_received_at: float | None
    next_expiry: float | None
    """expires_at of the oldest queued message (the next to expire when the TTL is uniform)."""


@dataclass(frozen=True)
class Event:
    """One entry of the node's event stream."""

    stream_id: str
    kind: str
    peer: bytes | None
    message_id: str
    size: int
    reason: str
    at: float


@dataclass(frozen=True)
class InboxEntry:
    """A message the daemon read from lnd and had not decided when it stopped."""

    entry: str
    received_at: float
    sender: bytes
    path_key: bytes
    onion: bytes


@dataclass(frozen=True)
class ServerInfo:
    version: str
    used_memory: int


# --------------------------------------------------------------------------- records


def new_message_id(now: float) -> str:
    """A fresh id: received time in ms (sortable) then 4 random bytes, as 20 hex digits."""
    return (_ms(now).to_bytes(6, "big") + os.urandom(ID_SIZE - 6)).hex()


def encode_record(msg: StoredMessage) -> bytes:
    """The bytes queued in Redis for ``msg`` (its ``peer`` is the key, not in the record).

    Layout (big-endian), version 1::

        0   1   version (0x01)
        1  10   id: received_at in ms (u48) + 4 random bytes
        11  6   expires_at in ms (u48)
        17  2   attempts (u16)
        19 33   sender pubkey (the peer that handed us the message)
        52 33   path_key
        85  ..  onion packet (the rest)
    """
    try:
        id_bytes = bytes.fromhex(msg.id)
    except ValueError as e:
        raise ValueError(f"message id {msg.id!r} is not hex") from e
    if len(id_bytes) != ID_SIZE:
        raise ValueError(f"message id must be {ID_SIZE} bytes, not {len(id_bytes)}")
    if len(msg.sender) != PUBKEY_SIZE or len(msg.path_key) != PUBKEY_SIZE:
        raise ValueError("sender and path_key must be 33-byte compressed points")
    if not msg.onion:
        raise ValueError("empty onion")
    expires = _ms(msg.expires_at)
    if not 0 <= expires <= _MAX_U48:
        raise ValueError(f"expires_at out of range: {msg.expires_at}")
    return b"".join(
        (
            bytes((RECORD_VERSION,)),
            id_bytes,
            expires.to_bytes(6, "big"),
            min(msg.attempts, _MAX_ATTEMPTS).to_bytes(2, "big"),
            msg.sender,
            msg.path_key,
            msg.onion,
        )
    )


def decode_record(peer: bytes, data: bytes) -> StoredMessage:
    """The message in a queued record; :class:`StoreError` if it cannot be read."""
    if len(data) <= HEADER_SIZE + PUBKEY_SIZE:
        raise StoreError(f"record of {len(data)} bytes is too short for a message")
    if data[0] != RECORD_VERSION:
        raise StoreError(f"record version {data[0]} is not one this store reads ({RECORD_VERSION})")
    id_bytes = data[1 : 1 + ID_SIZE]
    return StoredMessage(
        id=id_bytes.hex(),
        peer=peer,
        sender=data[19:52],
        path_key=data[52:85],
        onion=data[85:],
        received_at=int.from_bytes(id_bytes[:6], "big") / 1000,
        expires_at=int.from_bytes(data[11:17], "big") / 1000,
        attempts=int.from_bytes(data[17:19], "big"),
    )


def _record_times(header: bytes) -> tuple[float, float]:
    """(received_at, expires_at) from the first 17 bytes of a record."""
    if len(header) < 17 or header[0] != RECORD_VERSION:
        raise StoreError(f"record header {header.hex()!r} is not one this store reads")
    return int.from_bytes(header[1:7], "big") / 1000, int.from_bytes(header[11:17], "big") / 1000


# --------------------------------------------------------------------------- Lua

# The shebang makes Redis refuse a script before it starts when memory is over maxmemory
# (rather than at its first write), and refuse it outright on Redis Cluster, where the
# scripts' mix of one peer's keys and the node's keys would cross slots.
_SHEBANG = "#!lua flags=no-cluster\n"

# One entry of the event stream; every script that appends one goes through it.
_LUA_EVENT = """
local function append_event(stream, maxlen, kind, peer, id, size, reason, at)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'kind', kind, 'peer', peer, 'id', id,
    'size', size, 'reason', reason, 'at', at)
end
"""

# Every per-peer script gets KEYS = queue, dedup, mail, usage, counters, events and
# ARGV[1] = peer hex.
# Record offsets below are Lua's 1-based positions of the layout in encode_record.
_LUA_PEER_HELPERS = """
local HEADER = 52
local Q, D, M, U, C, E = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local PEER = ARGV[1]
local F_MSGS, F_BYTES = 'messages:' .. PEER, 'bytes:' .. PEER

local function u48(s, i)
  local a, b, c, d, e, f = string.byte(s, i, i + 5)
  return ((((a * 256 + b) * 256 + c) * 256 + d) * 256 + e) * 256 + f
end
local function rec_id(r) return string.sub(r, 2, 11) end
local function rec_expires(r) return u48(r, 12) end
local function rec_size(r) return #r - HEADER end
local function rec_digest(r) return string.sub(redis.sha1hex(string.sub(r, HEADER + 1)), 1, 32) end
local function holds(key, kind)
  local t = redis.call('TYPE', key)['ok']
  return t == kind or t == 'none'
end
local function hex(s) return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end)) end

-- Count an outcome and append its event, in the same step as the change it describes: a
-- crash can then lose neither (the `stored` event is what wakes a phone).
local function tell(kind, id, size, reason, maxlen, at)
  redis.call('HINCRBY', C, kind, 1)
  append_event(E, maxlen, kind, PEER, id, size, reason, at)
end

-- The node-wide keys hold what the mailbox writes there (or nothing yet). Scripts that
-- write them check first: Redis does not roll a failed script back.
local function node_keys_ok()
  return holds(M, 'zset') and holds(U, 'hash') and holds(C, 'hash') and holds(E, 'stream')
end
local NODE_KEYS_DAMAGED = 'WRONGTYPE a node-wide mailbox key holds the wrong type of value'

-- Keys are only ever extended: a key lives until its latest message expired plus the grace.
local function extend(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end

-- The peer's queue is gone (Redis expired it, or someone deleted it) while the node's
-- index still counts it: forget it there, and count what Redis dropped as expired.
local function repair()
  if redis.call('EXISTS', Q) == 1 then return end
  local pn = tonumber(redis.call('HGET', U, F_MSGS) or '0')
  local pb = tonumber(redis.call('HGET', U, F_BYTES) or '0')
  if pn ~= 0 or pb ~= 0 then
    redis.call('HDEL', U, F_MSGS, F_BYTES)
    local tn = redis.call('HINCRBY', U, 'messages', -pn)
    redis.call('HINCRBY', U, 'bytes', -pb)
    if tn <= 0 then redis.call('DEL', U) end
    if pn > 0 then redis.call('HINCRBY', C, 'expired', pn) end
  end
  redis.call('ZREM', M, PEER)
  redis.call('DEL', D)
end

-- Book dn messages / db bytes more (or fewer) for the peer, and tidy up when it is empty.
local function account(dn, db)
  if dn ~= 0 or db ~= 0 then
    redis.call('HINCRBY', U, F_MSGS, dn)
    redis.call('HINCRBY', U, F_BYTES, db)
    redis.call('HINCRBY', U, 'messages', dn)
    redis.call('HINCRBY', U, 'bytes', db)
  end
  if redis.call('EXISTS', Q) == 0 then
    -- an empty queue owes nothing: what its fields still say was never booked right
    -- (a hand-removed element), so the node totals drop it too
    local pn = tonumber(redis.call('HGET', U, F_MSGS) or '0')
    local pb = tonumber(redis.call('HGET', U, F_BYTES) or '0')
    if pn ~= 0 or pb ~= 0 then
      redis.call('HINCRBY', U, 'messages', -pn)
      redis.call('HINCRBY', U, 'bytes', -pb)
    end
    redis.call('HDEL', U, F_MSGS, F_BYTES)
    redis.call('ZREM', M, PEER)
    redis.call('DEL', D)
  end
  if tonumber(redis.call('HGET', U, 'messages') or '0') <= 0 then redis.call('DEL', U) end
end

-- Position (0-based) and record of the message with this binary id, head first.
local function find(id)
  local head = redis.call('LINDEX', Q, 0)
  if not head then return nil end
  if rec_id(head) == id then return 0, head end
  local len = redis.call('LLEN', Q)
  local i = 1
  while i < len do
    local chunk = redis.call('LRANGE', Q, i, i + 31)
    for j, r in ipairs(chunk) do
      if rec_id(r) == id then return i + j - 1, r end
    end
    i = i + 32
  end
  return nil
end

-- Take one record out of the queue (at position pos) with its dedup entry.
local function take(pos, r)
  if pos == 0 then redis.call('LPOP', Q) else redis.call('LREM', Q, 1, r) end
  redis.call('HDEL', D, rec_digest(r))
end
"""
_LUA_PRELUDE = _LUA_EVENT + _LUA_PEER_HELPERS

# Several messages, possibly for several peers, in one atomic step.
# KEYS: the first message's six keys, then queue and dedup of each further message.
# ARGV: first peer, max messages, max bytes per peer, max bytes total, events maxlen, at
# (seconds), then for each message: peer, record, key ttl ms, id hex.
# Counts and publishes stored, duplicate and evicted with the change.
# Returns one reply per message: {0, id, evicted records...} | {1, existing id} | {2} (full)
# | {3} (the peer's keys hold the wrong types). Types are checked before anything is written,
# so that a damaged key costs its own message and never leaves a batch half done.
_LUA_PUT = """
local maxn, maxb, maxt = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local maxlen, at = ARGV[5], ARGV[6]
if not node_keys_ok() then return redis.error_reply(NODE_KEYS_DAMAGED) end

local function put(rec, ttl, id)
  if not (holds(Q, 'list') and holds(D, 'hash')) then return {3} end
  repair()
  local digest = rec_digest(rec)
  local existing = redis.call('HGET', D, digest)
  if existing == id then return {0, id} end -- this very write, run again: told already
  if existing then
    tell('duplicate', existing, rec_size(rec), '', maxlen, at)
    return {1, existing}
  end
  local size = rec_size(rec)
  if size > maxb then return {2} end
  local n = redis.call('LLEN', Q)
  local pb = tonumber(redis.call('HGET', U, F_BYTES) or '0')
  local total = tonumber(redis.call('HGET', U, 'bytes') or '0')
  local evicted, evb = {}, 0
  while #evicted < n and (n - #evicted + 1 > maxn or pb - evb + size > maxb) do
    local old = redis.call('LINDEX', Q, #evicted)
    evicted[#evicted + 1] = old
    evb = evb + rec_size(old)
  end
  if total - evb + size > maxt then return {2} end
  if #evicted > 0 then
    redis.call('LTRIM', Q, #evicted, -1)
    for _, old in ipairs(evicted) do
      redis.call('HDEL', D, rec_digest(old))
      tell('evicted', hex(rec_id(old)), rec_size(old), 'peer_cap', maxlen, at)
    end
  end
  redis.call('RPUSH', Q, rec)
  redis.call('HSET', D, digest, id)
  account(1 - #evicted, size - evb)
  redis.call('ZADD', M, 'LT', rec_expires(rec), PEER)
  for _, key in ipairs({Q, D, M, U}) do extend(key, ttl) end
  tell('stored', id, size, '', maxlen, at)
  local out = {0, id}
  for _, old in ipairs(evicted) do out[#out + 1] = old end
  return out
end

local replies = {}
local k = 0
for i = 7, #ARGV, 4 do
  if k > 0 then
    -- the prelude's functions work on these: point them at this message's peer
    Q, D = KEYS[5 + 2 * k], KEYS[6 + 2 * k]
    PEER = ARGV[i]
    F_MSGS, F_BYTES = 'messages:' .. PEER, 'bytes:' .. PEER
  end
  replies[#replies + 1] = put(ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3])
  k = k + 1
end
return replies
"""

# ARGV: peer, now ms, limit, binary ids to pass over... Walks from the head: records passed
# over stay as they are (the deliverer has them in hand), expired records met on the way are
# removed, the first `limit` other ones are returned (and stay queued).
# Returns {number of ready records, ready records..., expired records...}
_LUA_PEEK = """
repair()
local now, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local skip = {}
for i = 4, #ARGV do skip[ARGV[i]] = true end
local ready, expired = {}, {}
local pos, db = 0, 0
while #ready < limit do
  local chunk = redis.call('LRANGE', Q, pos, pos + limit + 15)
  if #chunk == 0 then break end
  for _, r in ipairs(chunk) do
    if skip[rec_id(r)] then
      -- in hand
    elseif rec_expires(r) <= now then
      expired[#expired + 1] = r
      db = db - rec_size(r)
    else
      ready[#ready + 1] = r
      if #ready >= limit then break end
    end
  end
  pos = pos + #chunk
end
for _, r in ipairs(expired) do take(1, r) end
if #expired > 0 then account(-#expired, db) end
local out = {#ready}
for _, r in ipairs(ready) do out[#out + 1] = r end
for _, r in ipairs(expired) do out[#out + 1] = r end
return out
"""

# ARGV: peer, binary id. Returns the removed record or ''.
_LUA_REMOVE = """
repair()
local pos, r = find(ARGV[2])
if not pos then return '' end
take(pos, r)
account(-1, -rec_size(r))
return r
"""

# ARGV: peer, events maxlen, at (seconds), then (binary id, size) of each message lnd
# accepted. Counts and publishes each as delivered, also one evicted, expired or purged
# while it was on its way (the peer got it all the same), and removes those still queued.
# Returns how many were still queued.
_LUA_REMOVE_DELIVERED = """
if not node_keys_ok() then return redis.error_reply(NODE_KEYS_DAMAGED) end
repair()
local n, db = 0, 0
for i = 4, #ARGV, 2 do
  local pos, r = find(ARGV[i])
  if pos then
    take(pos, r)
    n = n + 1
    db = db - rec_size(r)
  end
  tell('delivered', hex(ARGV[i]), ARGV[i + 1], '', ARGV[2], ARGV[3])
end
if n > 0 then account(-n, db) end
return n
"""

# ARGV: peer, binary id. Returns the new attempts count, or -1 if the message is gone.
_LUA_ATTEMPT = """
local pos, r = find(ARGV[2])
if not pos then return -1 end
local hi, lo = string.byte(r, 18, 19)
local attempts = math.min(hi * 256 + lo + 1, 65535)
local updated = string.sub(r, 1, 17) .. string.char(math.floor(attempts / 256), attempts % 256)
  .. string.sub(r, 20)
redis.call('LSET', Q, pos, updated)
return attempts
"""

# ARGV: peer, now ms. Removes every expired message of the peer, sets its exact earliest
# expiry in the index. Returns the expired records.
_LUA_SWEEP = """
repair()
local now = tonumber(ARGV[2])
local all = redis.call('LRANGE', Q, 0, -1)
local out = {}
local earliest = nil
local db = 0
for i, r in ipairs(all) do
  local e = rec_expires(r)
  if e <= now then
    out[#out + 1] = r
    db = db - rec_size(r)
  elseif earliest == nil or e < earliest then
    earliest = e
  end
end
if #out == #all then
  if #all > 0 then redis.call('DEL', Q) end
elseif #out > 0 then
  local leading = 0
  while leading < #all and rec_expires(all[leading + 1]) <= now do leading = leading + 1 end
  if leading == #out then
    redis.call('LTRIM', Q, leading, -1)
  else
    for _, r in ipairs(out) do redis.call('LREM', Q, 1, r) end
  end
end
for _, r in ipairs(out) do redis.call('HDEL', D, rec_digest(r)) end
account(-#out, db)
if earliest then redis.call('ZADD', M, earliest, PEER) end
return out
"""

# ARGV: peer, binary id or '' (everything). Returns the number of messages removed.
_LUA_PURGE = """
repair()
if ARGV[2] == '' then
  local n = redis.call('LLEN', Q)
  local pb = tonumber(redis.call('HGET', U, F_BYTES) or '0')
  redis.call('DEL', Q, D)
  account(-n, -pb)
  return n
end
local pos, r = find(ARGV[2])
if not pos then return 0 end
take(pos, r)
account(-1, -rec_size(r))
return 1
"""

# KEYS: usage, then one queue per peer; ARGV: the peers' hex. Read-only. Returns per peer
# {messages, bytes, first 17 bytes of the oldest record, of the newest record}.
_LUA_SUMMARIES = """#!lua flags=no-writes,no-cluster
local out = {}
for i, peer in ipairs(ARGV) do
  local q = KEYS[i + 1]
  local head = redis.call('LINDEX', q, 0) or ''
  local tail = redis.call('LINDEX', q, -1) or ''
  out[#out + 1] = redis.call('LLEN', q)
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[1], 'bytes:' .. peer) or '0')
  out[#out + 1] = string.sub(head, 1, 17)
  out[#out + 1] = string.sub(tail, 1, 17)
end
return out
"""

# KEYS: counters, events. ARGV: events maxlen, at, number of counters, (name, by)...,
# (kind, peer, id, size, reason)... One command, so a batch lands whole or not at all.
_LUA_RECORD = """
local C, E = KEYS[1], KEYS[2]
local maxlen, at, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  redis.call('HINCRBY', C, ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  append_event(E, maxlen, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], at)
  i = i + 5
end
return 1
"""

# KEYS: lock; ARGV: owner token, lease ms. Returns 1 if the owner still held it.
_LUA_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_LUA_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


# --------------------------------------------------------------------------- errors

_P = ParamSpec("_P")
_T = TypeVar("_T")


_PASSING_REFUSALS = ("OOM", "MASTERDOWN", "TRYAGAIN", "BUSY", "LOADING", "CLUSTERDOWN")


def _redis_errors(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Turns redis-py's exceptions into the store's (always chained with ``from``)."""

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except (rexc.AuthenticationError, rexc.AuthorizationError) as e:
            raise StoreError(f"Redis refused the credentials: {e}") from e
        except (rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError, OSError) as e:
            raise StoreUnavailableError(f"Redis is unavailable: {e}") from e
        except rexc.RedisError as e:
            if isinstance(e, rexc.OutOfMemoryError) or str(e).startswith(_PASSING_REFUSALS):
                # Redis will take the command again once memory, a failover or a busy
                # script has passed: the same as unreachable for the caller.
                raise StoreUnavailableError(f"Redis cannot take {fn.__name__} now: {e}") from e
            raise StoreError(f"Redis refused {fn.__name__}: {e}") from e

    return wrapper


def _check_pubkey(what: str, key: bytes) -> None:
    if len(key) != PUBKEY_SIZE:
        raise ValueError(f"{what} must be a 33-byte compressed pubkey, not {len(key)} bytes")


def _str(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise StoreError(f"unexpected reply from Redis: {value!r}")


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    raise StoreError(f"unexpected reply from Redis: {value!r}")


def _items(value: object) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    raise StoreError(f"unexpected reply from Redis: {value!r}")


# --------------------------------------------------------------------------- the store


class Store:
    """The mailbox's state in one Redis, namespaced by the lnd node it serves.

    ``redis`` must return bytes (``decode_responses=False``, the default): records are binary.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        node: bytes,
        limits: Limits | None = None,
        *,
        events_maxlen: int = _DEFAULT_EVENTS_MAXLEN,
    ) -> None:
        _check_pubkey("node", node)
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigError("the store needs a Redis client with decode_responses=False")
        self.redis = redis
        self.node = node
        self.limits = limits or Limits()
        self.events_maxlen = events_maxlen
        self._owns_client = False
        self.prefix = f"lndmailbox:{node.hex()}:"
        self._put = redis.register_script(_SHEBANG + _LUA_PRELUDE + _LUA_PUT)
        self._peek = redis.register_script(_SHEBANG + _LUA_PRELUDE + _LUA_PEEK)
        self._remove = redis.register_script(_SHEBANG + _LUA_PRELUDE + _LUA_REMOVE)
        self._remove_delivered = redis.register_script(
            _SHEBANG + _LUA_PRELUDE + _LUA_REMOVE_DELIVERED
        )
        self._attempt = redis.register_script(_SHEBANG + _LUA_PRELUDE + _LUA_ATTEMPT)
        self._sweep = redis.register_script(_SHEBANG + _LUA_PRELUDE + _LUA_SWEEP)
        self._purge = redis.register_script(_SHEBANG + _LUA_PRELUDE + _LUA_PURGE)
        self._summaries = redis.register_script(_LUA_SUMMARIES)
        self._record = redis.register_script(_SHEBANG + _LUA_EVENT + _LUA_RECORD)
        self._renew = redis.register_script(_SHEBANG + _LUA_RENEW)
        self._release = redis.register_script(_SHEBANG + _LUA_RELEASE)

    @classmethod
    def from_url(
        cls,
        url: str,
        node: bytes,
        limits: Limits | None = None,
        *,
        max_connections: int = 64,
        **redis_kwargs: Any,
    ) -> Store:
        """A store on its own connection pool: ``redis://[[user]:password@]host:port/db``,
        ``rediss://`` for TLS (``ssl_*`` keyword arguments, or ``?ssl_ca_certs=...`` in the
        URL), ``unix://path?db=0``. At most ``max_connections`` are opened; more concurrent
        calls wait for one (up to ``pool_timeout`` seconds, default 20) instead of failing.
        :meth:`aclose` closes the pool."""
        redis_kwargs.setdefault("socket_connect_timeout", 5.0)
        redis_kwargs.setdefault("socket_timeout", 30.0)
        # After a Redis restart every pooled connection is stale: a command that meets one
        # reconnects and is sent again, rather than failing once per pooled connection.
        redis_kwargs.setdefault(
            "retry", Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3)
        )
        redis_kwargs.setdefault("retry_on_error", [rexc.ConnectionError])
        pool_timeout = redis_kwargs.pop("pool_timeout", 20.0)
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=pool_timeout,
                decode_responses=False,
                **redis_kwargs,
            )
        except ValueError as e:
            raise ConfigError(f"bad Redis URL: {e}") from e
        store = cls(aioredis.Redis.from_pool(pool), node, limits)
        store._owns_client = True
        return store

    @staticmethod
    @_redis_errors
    async def nodes_at(url: str) -> list[bytes]:
        """The lnd nodes with a mailbox in the Redis at ``url`` (those with counters or a
        running daemon's heartbeat), sorted. One SCAN over the keyspace: for tools, not for
        the daemon."""
        client = aioredis.Redis.from_url(url, socket_connect_timeout=5.0, socket_timeout=30.0)
        nodes: set[bytes] = set()
        try:
            async for key in client.scan_iter(match="lndmailbox:*", count=1000):
                match = _NODE_KEY.fullmatch(_str(key))
                if match:
                    nodes.add(bytes.fromhex(match.group(1)))
        finally:
            await client.aclose()
        return sorted(nodes)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.redis.aclose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- key names: the only place they are spelled

    def _peer_prefix(self, peer: bytes) -> str:
        return f"{self.prefix}peer:{{{peer.hex()}}}:"

    def queue_key(self, peer: bytes) -> str:
        return self._peer_prefix(peer) + "queue"

    def dedup_key(self, peer: bytes) -> str:
        return self._peer_prefix(peer) + "dedup"

    @property
    def mail_key(self) -> str:
        return self.prefix + "mail"

    @property
    def usage_key(self) -> str:
        return self.prefix + "usage"

    @property
    def allow_key(self) -> str:
        return self.prefix + "allow"

    @property
    def counters_key(self) -> str:
        return self.prefix + "counters"

    @property
    def events_key(self) -> str:
        return self.prefix + "events"

    @property
    def lock_key(self) -> str:
        return self.prefix + "lock"

    @property
    def heartbeat_key(self) -> str:
        return self.prefix + "heartbeat"

    @property
    def delivery_requests_key(self) -> str:
        return self.prefix + "delivery-requests"

    @property
    def inbox_key(self) -> str:
        return self.prefix + "inbox"

    @property
    def key_pattern(self) -> str:
        """SCAN pattern matching every key of this node (and nothing of another node)."""
        return self.prefix + "*"

    def _script_keys(self, peer: bytes) -> list[str]:
        return [
            self.queue_key(peer),
            self.dedup_key(peer),
            self.mail_key,
            self.usage_key,
            self.counters_key,
            self.events_key,
        ]

    def _decode(self, peer: bytes, data: object) -> StoredMessage:
        return decode_record(peer, _bytes(data))

    # ---- messages

    async def put(
        self,
        peer: bytes,
        sender: bytes,
        path_key: bytes,
        onion: bytes,
        now: float,
        *,
        ttl: float | None = None,
    ) -> PutResult:
        """Queues a message for ``peer`` (atomically with all its indexes).

        STORED: ``evicted`` lists the peer's oldest messages that gave way to it.
        DUPLICATE: the same (path_key, onion) is already queued; ``message_id`` is that one's.
        REJECTED_FULL: the node's byte cap would be passed; nothing changed.
        Raises StoreError if the peer's keys hold the wrong types of value (nothing changed).
        """
        (result,) = await self.put_many([NewMessage(peer, sender, path_key, onion, now)], ttl=ttl)
        if result.status is PutStatus.REJECTED_DAMAGED:
            raise StoreError(f"Redis keys of peer {peer.hex()} hold values of the wrong type")
        return result

    @_redis_errors
    async def put_many(
        self, messages: Sequence[NewMessage], *, ttl: float | None = None
    ) -> list[PutResult]:
        """:meth:`put` for several messages (for any peers) in one round trip and one atomic
        step, in order; one result per message."""
        if not messages:
            return []
        for m in messages:
            _check_pubkey("peer", m.peer)
        keep_for = _ms(self.limits.ttl if ttl is None else ttl)
        stored = [
            StoredMessage(
                id=m.id or new_message_id(m.now),
                peer=m.peer,
                sender=m.sender,
                path_key=m.path_key,
                onion=m.onion,
                received_at=_ms(m.now) / 1000,
                expires_at=(_ms(m.now) + keep_for) / 1000,
                attempts=0,
            )
            for m in messages
        ]
        keys = self._script_keys(stored[0].peer)
        args: list[str | int | bytes] = [
            stored[0].peer.hex(),
            self.limits.max_messages_per_peer,
            self.limits.max_bytes_per_peer,
            self.limits.max_bytes_total,
            self.events_maxlen,
            _event_time(),
        ]
        key_ttl = max(keep_for + _ms(self.limits.key_grace), 1)
        for i, msg in enumerate(stored):
            if i:
                keys += (self.queue_key(msg.peer), self.dedup_key(msg.peer))
            args += (msg.peer.hex(), encode_record(msg), key_ttl, msg.id)
        replies = _items(await self._put(keys=keys, args=args))
        if len(replies) != len(stored):
            raise StoreError(f"Redis answered {len(replies)} puts for {len(stored)}")
        return [
            self._put_result(msg, _items(reply)) for msg, reply in zip(stored, replies, strict=True)
        ]

    def _put_result(self, msg: StoredMessage, reply: list[Any]) -> PutResult:
        code = int(reply[0])
        if code == 1:
            return PutResult(PutStatus.DUPLICATE, _str(reply[1]), size=msg.size)
        if code == 2:
            return PutResult(PutStatus.REJECTED_FULL, msg.id, size=msg.size)
        if code == 3:
            return PutResult(PutStatus.REJECTED_DAMAGED, msg.id, size=msg.size)
        # The write is done: a record that does not decode (another version, a hand-made
        # value) must not make it look failed. Its id is in the same place in every version.
        evicted_ids: list[str] = []
        evicted: list[StoredMessage] = []
        for raw in reply[2:]:
            record = _bytes(raw)
            try:
                evicted.append(decode_record(msg.peer, record))
            except (StoreError, ValueError):
                log.warning("evicted an unreadable record for %s", msg.peer.hex())
            evicted_ids.append(record[1 : 1 + ID_SIZE].hex())
        return PutResult(
            PutStatus.STORED,
            msg.id,
            evicted=tuple(evicted_ids),
            evicted_messages=tuple(evicted),
            message=msg,
            size=msg.size,
        )

    @_redis_errors
    async def peek(
        self, peer: bytes, now: float, *, limit: int = 1, skip: Collection[str] = ()
    ) -> tuple[list[StoredMessage], list[StoredMessage]]:
        """The peer's ``limit`` oldest unexpired messages, oldest first (they stay queued until
        :meth:`remove`), and the expired messages met before the last of them, which this
        call removed (for the caller to count and publish). Messages whose ids are in
        ``skip`` (in the caller's hands) are passed over and left as they are."""
        reply = await self._peek(
            keys=self._script_keys(peer),
            args=[peer.hex(), _ms(now), max(limit, 1), *(bytes.fromhex(i) for i in skip)],
        )
        ready = int(reply[0])
        records = reply[1:]
        return (
            [self._decode(peer, r) for r in records[:ready]],
            [self._decode(peer, r) for r in records[ready:]],
        )

    @_redis_errors
    async def remove(self, msg: StoredMessage) -> bool:
        """Removes a message by id (after lnd accepted it). False if it was no longer queued
        (evicted, expired or purged meanwhile)."""
        reply = await self._remove(
            keys=self._script_keys(msg.peer), args=[msg.peer.hex(), bytes.fromhex(msg.id)]
        )
        return bool(reply)

    @_redis_errors
    async def remove_delivered(self, messages: Sequence[StoredMessage]) -> int:
        """Removes messages lnd accepted, counting and publishing each as ``delivered`` in the
        same step (also one evicted, expired or purged meanwhile: the peer got it); one
        round trip and one atomic step per peer. How many were still queued."""
        by_peer: dict[bytes, list[bytes | int]] = {}
        for msg in messages:
            by_peer.setdefault(msg.peer, []).extend((bytes.fromhex(msg.id), msg.size))
        # Script calls one by one: a pipeline of scripts costs a SCRIPT EXISTS round trip.
        removed = 0
        at = _event_time()
        for peer, items in by_peer.items():
            removed += int(
                await self._remove_delivered(
                    keys=self._script_keys(peer),
                    args=[peer.hex(), self.events_maxlen, at, *items],
                )
            )
        return removed

    @_redis_errors
    async def record_attempt(self, msg: StoredMessage) -> int:
        """Adds one to the message's delivery attempts; the new count, or -1 if it is gone."""
        reply = await self._attempt(
            keys=self._script_keys(msg.peer), args=[msg.peer.hex(), bytes.fromhex(msg.id)]
        )
        return int(reply)

    @_redis_errors
    async def sweep_expired(self, now: float) -> list[StoredMessage]:
        """Removes every expired message of every peer whose earliest expiry has passed; each
        peer is one atomic step. Returns the removed messages for the caller to count."""
        peers = await self.redis.zrangebyscore(self.mail_key, "-inf", _ms(now))
        out: list[StoredMessage] = []
        for member in peers:
            peer = bytes.fromhex(_str(member))
            reply = await self._sweep(keys=self._script_keys(peer), args=[peer.hex(), _ms(now)])
            out.extend(self._decode(peer, r) for r in reply)
        return out

    @_redis_errors
    async def purge(self, peer: bytes, id: str | None = None) -> int:
        """Deletes one message (by id) or all of a peer's messages; how many went."""
        arg = bytes.fromhex(id) if id else b""
        return int(await self._purge(keys=self._script_keys(peer), args=[peer.hex(), arg]))

    @_redis_errors
    async def messages(self, peer: bytes) -> list[StoredMessage]:
        """Everything queued for the peer, oldest first (expired ones included)."""
        return [self._decode(peer, r) for r in await self.redis.lrange(self.queue_key(peer), 0, -1)]

    @_redis_errors
    async def peers_with_mail(self) -> list[bytes]:
        """Peers with queued messages, earliest expiry first."""
        return [bytes.fromhex(_str(m)) for m in await self.redis.zrange(self.mail_key, 0, -1)]

    @_redis_errors
    async def peer_summaries(self) -> list[PeerSummary]:
        """One summary per peer with mail, earliest expiry first (one round trip for all)."""
        peers = [bytes.fromhex(_str(m)) for m in await self.redis.zrange(self.mail_key, 0, -1)]
        if not peers:
            return []
        reply = _items(
            await self._summaries(
                keys=[self.usage_key, *(self.queue_key(p) for p in peers)],
                args=[p.hex() for p in peers],
            )
        )
        out = []
        for i, peer in enumerate(peers):
            count, nbytes, head, tail = reply[4 * i : 4 * i + 4]
            if not count:
                continue
            first_received, first_expires = _record_times(_bytes(head))
            last_received, _ = _record_times(_bytes(tail))
            out.append(
                PeerSummary(
                    peer=peer,
                    messages=int(count),
                    bytes=int(nbytes),
                    oldest_received_at=first_received,
                    newest_received_at=last_received,
                    next_expiry=first_expires,
                )
            )
        return out

    @_redis_errors
    async def stats(self) -> Stats:
        """Totals over every peer: peers with mail, messages, bytes, oldest message."""
        messages, nbytes = await self.redis.hmget(self.usage_key, ["messages", "bytes"])
        summaries = await self.peer_summaries()
        oldest = min(
            (s.oldest_received_at for s in summaries if s.oldest_received_at is not None),
            default=None,
        )
        return Stats(
            peers_with_mail=len(summaries),
            messages=int(messages or 0),
            bytes=int(nbytes or 0),
            oldest_received_at=oldest,
        )

    # ---- allowlist

    @_redis_errors
    async def allow_add(self, peers: Iterable[bytes]) -> int:
        """Adds peers to the allowlist; how many were new."""
        chosen = list(peers)
        for p in chosen:
            _check_pubkey("peer", p)
        members = [p.hex() for p in chosen]
        return int(await self.redis.sadd(self.allow_key, *members)) if members else 0

    @_redis_errors
    async def allow_remove(self, peers: Iterable[bytes]) -> int:
        members = [p.hex() for p in peers]
        return int(await self.redis.srem(self.allow_key, *members)) if members else 0

    @_redis_errors
    async def is_allowed(self, peer: bytes) -> bool:
        return bool(await self.redis.sismember(self.allow_key, peer.hex()))

    @_redis_errors
    async def allowlist(self) -> list[bytes]:
        """The allowed peers; a member that is no pubkey (written by hand) is passed over and
        logged, so that it cannot deny everyone else."""
        peers = []
        for member in await self.redis.smembers(self.allow_key):
            text = _str(member)
            try:
                peer = bytes.fromhex(text)
                _check_pubkey("allowlist member", peer)
            except ValueError:
                log.warning("allowlist member %r is not a pubkey in hex; ignored", text)
                continue
            peers.append(peer)
        return sorted(peers)

    # ---- counters

    @_redis_errors
    async def incr(self, name: str, by: int = 1) -> int:
        """Adds to a counter ("stored", "delivered", "expired", "dropped:<reason>", ...)."""
        return int(await self.redis.hincrby(self.counters_key, name, by))

    @_redis_errors
    async def counters(self) -> dict[str, int]:
        raw = await self.redis.hgetall(self.counters_key)
        return {_str(k): int(v) for k, v in sorted(raw.items())}

    @_redis_errors
    async def record(
        self,
        counters: Mapping[str, int] | None = None,
        events: Sequence[tuple[str, bytes | None, str, int, str]] = (),
        *,
        at: float | None = None,
    ) -> None:
        """Adds to several counters and appends several events (kind, peer, message id, size,
        reason) in one script, so a batch lands whole or not at all (a connection lost after
        the script went out leaves it unknown: a retry may then count twice)."""
        counted = [(name, by) for name, by in (counters or {}).items() if by]
        if not counted and not events:
            return
        args: list[str | int] = [self.events_maxlen, _event_time(at), len(counted)]
        for name, by in counted:
            args += (name, by)
        for kind, peer, message_id, size, reason in events:
            args += (kind, peer.hex() if peer else "", message_id, size, reason)
        await self._record(keys=[self.counters_key, self.events_key], args=args)

    # ---- events

    @staticmethod
    def _event(stream_id: object, raw: object) -> Event:
        if not isinstance(raw, Mapping):
            raise StoreError(f"unreadable event {stream_id!r}")
        f = {_str(k): _str(v) for k, v in raw.items()}
        sid = _str(stream_id)
        try:
            at = float(f["at"]) if f.get("at") else int(sid.split("-")[0]) / 1000
            return Event(
                stream_id=sid,
                kind=f.get("kind", ""),
                peer=bytes.fromhex(f["peer"]) if f.get("peer") else None,
                message_id=f.get("id", ""),
                size=int(f.get("size") or 0),
                reason=f.get("reason", ""),
                at=at,
            )
        except ValueError as e:
            raise StoreError(f"unreadable event {sid}: {e}") from e

    @_redis_errors
    async def read_events(
        self, last_id: str = "0-0", count: int = 100, block_ms: int | None = None
    ) -> list[Event]:
        """Events after ``last_id`` ("0-0": from the oldest kept; "$": only new ones, which
        makes sense with ``block_ms``), at most ``count``; waits up to ``block_ms`` for one."""
        reply: Any = await self.redis.xread({self.events_key: last_id}, count=count, block=block_ms)
        out: list[Event] = []
        for _stream, entries in _items(reply):
            out.extend(self._event(sid, fields) for sid, fields in _items(entries))
        return out

    @_redis_errors
    async def recent_events(self, count: int = 20) -> list[Event]:
        """The latest ``count`` events, oldest first."""
        entries = _items(await self.redis.xrevrange(self.events_key, count=count))
        return [self._event(sid, fields) for sid, fields in reversed(entries)]

    # ---- one daemon per node

    @_redis_errors
    async def acquire_lock(self, owner: str, lease: float) -> bool:
        """Takes the node's daemon lock for ``lease`` seconds if nobody holds it."""
        return bool(await self.redis.set(self.lock_key, owner, nx=True, px=max(_ms(lease), 1)))

    @_redis_errors
    async def renew_lock(self, owner: str, lease: float) -> bool:
        """Extends the lease; False if ``owner`` no longer holds the lock."""
        return bool(await self._renew(keys=[self.lock_key], args=[owner, max(_ms(lease), 1)]))

    @_redis_errors
    async def release_lock(self, owner: str) -> bool:
        return bool(await self._release(keys=[self.lock_key], args=[owner]))

    @_redis_errors
    async def lock_owner(self) -> str | None:
        owner = await self.redis.get(self.lock_key)
        return _str(owner) if owner is not None else None

    @_redis_errors
    async def heartbeat(self, info: Mapping[str, str | int | float], ttl: float = 30.0) -> None:
        """Replaces the daemon's heartbeat (pid, host, started_at, version, node...); it
        disappears ``ttl`` seconds after the last one."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.heartbeat_key)
            if info:
                mapping: dict[Any, Any] = dict(info)
                pipe.hset(self.heartbeat_key, mapping=mapping)
                pipe.pexpire(self.heartbeat_key, max(_ms(ttl), 1))
            await pipe.execute()

    @_redis_errors
    async def read_heartbeat(self) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.heartbeat_key)
        return {_str(k): _str(v) for k, v in raw.items()} if raw else None

    @_redis_errors
    async def totals(self) -> tuple[int, int, int]:
        """(peers with mail, messages, bytes) from the node's counters: O(1), for gauges."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.mail_key)
            pipe.hmget(self.usage_key, ["messages", "bytes"])
            peers, (messages, size) = await pipe.execute()
        return int(peers), int(messages or 0), int(size or 0)

    # ---- the inbox: messages read from lnd and not yet decided (a write-ahead journal)

    @_redis_errors
    async def inbox_write(
        self,
        added: Sequence[tuple[str, bytes, bytes, bytes, float]] = (),
        decided: Sequence[str] = (),
    ) -> None:
        """Journals messages just read from lnd and forgets decided ones, in one round trip.

        ``added``: (entry, sender, path_key, onion, received_at). lnd's streams have no
        acknowledgement: without the journal, a daemon that dies between reading a message
        and storing it loses it. Entry value: received_at (u64, ms) ‖ sender (33) ‖
        path_key (33) ‖ onion. The inbox expires with the TTL of mail.
        """
        if not added and not decided:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            if added:
                pipe.hset(
                    self.inbox_key,
                    mapping={
                        entry: _ms(at).to_bytes(8, "big") + sender + path_key + onion
                        for entry, sender, path_key, onion, at in added
                    },
                )
                pipe.pexpire(self.inbox_key, max(_ms(self.limits.ttl), 1))
            if decided:
                pipe.hdel(self.inbox_key, *decided)
            await pipe.execute()

    @_redis_errors
    async def inbox_pending(self) -> list[InboxEntry]:
        """Journaled messages a previous daemon left undecided, oldest first.

        An entry too short to hold a message is removed (it can only be damage)."""
        pending: list[InboxEntry] = []
        damaged: list[Any] = []
        for entry, raw in (await self.redis.hgetall(self.inbox_key)).items():
            if not isinstance(raw, bytes) or len(raw) < 8 + 2 * PUBKEY_SIZE + 1:
                damaged.append(entry)
                continue
            pending.append(
                InboxEntry(
                    entry=_str(entry),
                    received_at=int.from_bytes(raw[:8], "big") / 1000,
                    sender=raw[8:41],
                    path_key=raw[41:74],
                    onion=raw[74:],
                )
            )
        if damaged:
            await self.redis.hdel(self.inbox_key, *damaged)
        return sorted(pending, key=lambda e: e.received_at)

    # ---- delivery requests (mailboxctl deliver -> daemon)

    @_redis_errors
    async def request_delivery(self, peer: bytes) -> None:
        """Asks the running daemon to try delivering to ``peer`` now (kept for an hour)."""
        _check_pubkey("peer", peer)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self.delivery_requests_key, peer.hex())
            pipe.pexpire(self.delivery_requests_key, _DELIVERY_REQUEST_TTL_MS)
            await pipe.execute()

    @_redis_errors
    async def pop_delivery_requests(self) -> list[bytes]:
        """Every pending request, oldest first, each peer once; does not wait."""
        raw = await self.redis.lpop(self.delivery_requests_key, 10_000)
        return self._unique_peers(_items(raw))

    @_redis_errors
    async def wait_delivery_requests(self, timeout: float) -> list[bytes]:  # noqa: ASYNC109
        # (a server-side BLPOP wait: cancelling it from the client would spoil the connection)
        """Like :meth:`pop_delivery_requests` but waits up to ``timeout`` seconds for one.

        The wait is cut to stay under the client's socket timeout; an empty list means
        nothing came, so call it in a loop.
        """
        socket_timeout = self.redis.connection_pool.connection_kwargs.get("socket_timeout")
        if socket_timeout:
            timeout = min(timeout, max(float(socket_timeout) - 1.0, 0.1))
        first = _items(
            await self.redis.blpop([self.delivery_requests_key], timeout=max(timeout, 0.01))
        )
        if not first:
            return []
        rest = _items(await self.redis.lpop(self.delivery_requests_key, 10_000))
        return self._unique_peers([first[1], *rest])

    @staticmethod
    def _unique_peers(raw: Iterable[object]) -> list[bytes]:
        seen: dict[bytes, None] = {}
        for item in raw:
            try:
                peer = bytes.fromhex(_str(item))
            except ValueError:
                continue
            if len(peer) == PUBKEY_SIZE:
                seen[peer] = None
        return list(seen)

    # ---- server

    @_redis_errors
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    @_redis_errors
    async def server_info(self) -> ServerInfo:
        info = await self.redis.info("server")
        memory = await self.redis.info("memory")
        version = str(info.get("valkey_version") or info.get("redis_version") or "?")
        return ServerInfo(version=version, used_memory=int(memory.get("used_memory", 0)))

    @_redis_errors
    async def memory_usage(self) -> int:
        """Bytes Redis spends on this node's keys (MEMORY USAGE summed over a SCAN)."""
        total = 0
        async for key in self.redis.scan_iter(match=self.key_pattern, count=500):
            total += int(await self.redis.memory_usage(key, samples=0) or 0)
        return total

    @_redis_errors
    async def audit(self) -> list[str]:
        """Consistency problems between the queues and the node's indexes (none: [])."""
        problems: list[str] = []
        queues: dict[bytes, list[bytes]] = {}
        prefix, suffix = self.prefix + "peer:{", "}:queue"
        async for key in self.redis.scan_iter(match=self.prefix + "peer:*:queue", count=500):
            name = _str(key)
            peer = bytes.fromhex(name[len(prefix) : -len(suffix)])
            queues[peer] = [_bytes(r) for r in await self.redis.lrange(key, 0, -1)]
        usage = {_str(k): int(v) for k, v in (await self.redis.hgetall(self.usage_key)).items()}
        mail = {bytes.fromhex(_str(m)) for m in await self.redis.zrange(self.mail_key, 0, -1)}
        total_n = total_b = 0
        for peer, records in queues.items():
            msgs = [self._decode(peer, r) for r in records]
            n, b = len(msgs), sum(m.size for m in msgs)
            total_n, total_b = total_n + n, total_b + b
            if usage.get(f"messages:{peer.hex()}") != n or usage.get(f"bytes:{peer.hex()}") != b:
                problems.append(f"usage of {peer.hex()} is not {n} messages / {b} bytes")
            if peer not in mail:
                problems.append(f"{peer.hex()} has mail but is not in the mail index")
            dedup = await self.redis.hgetall(self.dedup_key(peer))
            if sorted(_str(v) for v in dedup.values()) != sorted(m.id for m in msgs):
                problems.append(f"dedup of {peer.hex()} does not match its queue")
            if len({m.id for m in msgs}) != n:
                problems.append(f"{peer.hex()} has repeated ids")
        if (usage.get("messages", 0), usage.get("bytes", 0)) != (total_n, total_b):
            problems.append(f"node totals are not {total_n} messages / {total_b} bytes")
        for peer in mail - queues.keys():
            problems.append(f"{peer.hex()} is in the mail index without a queue")
        return problems
