"""Moving a node's mailbox from the old key layout into the current one, on the same Redis.

The releases before the node's hash tag wrote ``lndmailbox:<node>:...``, with a peer's keys
``peer:{<peer>}:queue|dedup|unconfirmed`` (:class:`~lndmailbox.store.keys.OldLayoutKeys`).
Record formats did not change: what moves is where things are. Those releases refused
Redis Cluster, so an old-layout mailbox only exists on one Redis, and the scripts here
carry ``no-cluster`` (one node's old keys span slots); on a Cluster there is nothing to
move and nothing is tried.

Rules that hold:

- Each peer moves in one script (``lua/migrate_peer.lua``): its queue, unconfirmed list
  and dedup hash, its ``mail`` entry and ``usage`` fields, the node totals that count it,
  with their TTLs. A run cut short between peers (a crash, Redis gone) leaves every
  message in exactly one layout, and the next run moves the rest.
- A message both layouts hold (the same digest) is held once: the current layout's copy
  stays. Journal entries keep the copy received first.
- No call reads the whole mailbox: the peers come from the old ``mail`` index a page at a
  time, then from a SCAN for stray old per-peer keys and from the old ``usage``'s
  per-peer fields; the journal and the event stream move a page at a time; the node-wide
  rest (counters, allowlist, summary, delivery requests) in one last script. The old
  ``decided`` goes first of all (``lua/migrate_decided.lua``): it expires 15 s after the
  old leader's last decision, and it takes out of the current journal the late copies of
  what the old leader decided.
- Every script refuses while a daemon of the old release runs (its lock, or its daemons
  hash, which outlives its last heartbeat by 10 s): it would go on writing the old layout.
  That is :class:`~lndmailbox.errors.MigrationRefusedError`, before anything moved or
  between two peers.
- The lock, heartbeat and daemons hash of the old layout are not moved: they belong to
  daemons, which make their own.
- A run after a complete one costs one ``EXISTS`` and changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

from redis.asyncio.cluster import RedisCluster

from lndmailbox.errors import MigrationRefusedError
from lndmailbox.store import lua
from lndmailbox.store.client import RedisClient, as_items, as_str, redis_errors
from lndmailbox.store.keys import Keys, OldLayoutKeys
from lndmailbox.store.records import PUBKEY_SIZE

log = logging.getLogger(__name__)

PEERS_PER_CALL = 100
"""Peers moved in one round trip (one script each, pipelined)."""
ENTRIES_PER_CALL = 100
"""Journal entries or stream entries moved in one script."""
_SCAN_COUNT = 1000
_REFUSED, _DAMAGED = -1, -2
_NODE_KEYS = (
    *("mail", "usage", "allow", "counters", "events", "summary", "inbox", "decided"),
    "delivery-requests",
)
"""The old layout's node-wide keys that a run moves (or empties): one is left until the
run's end."""
_USAGE_PEER_FIELDS = ("messages", "bytes", "flood", "woke")


@dataclasses.dataclass
class LayoutMove:
    """What one run moved from the old key layout (all zero: nothing was there)."""

    peers: int = 0
    """Peers whose old keys were moved (with mail or only stale books)."""
    messages: int = 0
    bytes: int = 0
    unconfirmed: int = 0
    """Of the messages, those lnd had taken and not confirmed (still held, as before)."""
    duplicates: int = 0
    """Old copies of messages the current layout held already: dropped, held once."""
    expired: int = 0
    """Messages the old books counted that Redis had dropped: counted as expired."""
    journal: int = 0
    journal_kept: int = 0
    """Journal entries the current layout held with an earlier receipt: the old copy went."""
    events: int = 0
    events_dropped: int = 0
    """Old stream entries not newer than the current stream's last (see migrate_events.lua)."""
    counters: int = 0
    allowed: int = 0
    """Peers added to the current allowlist."""
    decided: int = 0
    summary: int = 0
    delivery_requests: int = 0
    damaged: int = 0
    """Peers or keys left in the old layout: they hold values of the wrong type."""

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line for a log or a person: what moved, then what was left or dropped."""
        if not self:
            return "nothing in the old key layout"
        parts = []
        if self.peers:
            parts.append(
                f"{_n(self.peers, 'peer')} ({_n(self.messages, 'message')}, {self.bytes} "
                f"bytes, {self.unconfirmed} of them unconfirmed)"
            )
        for count, what in (
            (self.journal, "journal entr|y|ies"),
            (self.events, "event"),
            (self.counters, "counter"),
            (self.allowed, "allowlist addition"),
            (self.decided, "decided entr|y|ies"),
            (self.summary, "summary count"),
            (self.delivery_requests, "delivery request"),
        ):
            if count:
                parts.append(_n(count, what))
        notes = [
            f"{_n(count, what)} {why}"
            for count, what, why in (
                (self.duplicates, "old cop|y|ies", "of messages held already dropped"),
                (self.expired, "message", "Redis had dropped counted as expired"),
                (self.journal_kept, "journal entr|y|ies", "kept in the earlier current copy"),
                (self.events_dropped, "event", "older than the current stream dropped"),
                (self.damaged, "damaged |peer or key|peers or keys", "left in the old layout"),
            )
            if count
        ]
        moved = "moved " + ", ".join(parts) if parts else "moved nothing"
        return moved + ("; " + ", ".join(notes) if notes else "")


def _n(count: int, what: str) -> str:
    """``count`` and ``what`` ("word", or "stem|one|many"), plural when count is not 1."""
    stem, _, forms = what.partition("|")
    one, _, many = forms.partition("|") if forms else ("", "", "s")
    return f"{count} {stem}{one if count == 1 else many}"


class LayoutMigration:
    """Moves one node's mailbox from the old key layout into :class:`Keys`."""

    def __init__(self, redis: RedisClient, keys: Keys, node: bytes) -> None:
        self.redis = redis
        self.keys = keys
        self.old = OldLayoutKeys(node)
        self._peer = redis.register_script(lua.program("migrate_peer"))
        self._inbox = redis.register_script(lua.program("migrate_inbox"))
        self._events = redis.register_script(lua.program("migrate_events"))
        self._node = redis.register_script(lua.program("migrate_node"))
        self._decided = redis.register_script(lua.program("migrate_decided"))
        self._running = [self.old.node_key("lock"), self.old.node_key("daemons")]

    @redis_errors
    async def pending(self) -> bool:
        """Whether the old layout holds a node-wide key of this node: one ``EXISTS`` (none
        at all on a Cluster, where the old layout never ran). Every run that found one
        moves them last, so a run cut short leaves one behind."""
        if await self._on_cluster():
            return False
        return int(await self.redis.exists(*map(self.old.node_key, _NODE_KEYS))) > 0

    @redis_errors
    async def run(self) -> LayoutMove:
        """Moves whatever the old layout holds of this node; what it moved. Raises
        :class:`MigrationRefusedError` while a daemon of the old release runs."""
        moved = LayoutMove()
        if not await self.pending():
            return moved
        if int(await self.redis.exists(*self._running)):
            raise await self._refusal()
        await self._move_decided(moved)
        await self._move_peers(moved)
        await self._move_journal(moved)
        await self._move_events(moved)
        await self._move_node_keys(moved)
        return moved

    @redis_errors
    async def old_release_runs(self) -> str | None:
        """What shows that a daemon of the old release runs for this node (its lock, or its
        daemons hash), else None: two commands (none on a Cluster)."""
        if await self._on_cluster() or not int(await self.redis.exists(*self._running)):
            return None
        return await self._why_refused()

    async def _on_cluster(self) -> bool:
        if isinstance(self.redis, RedisCluster):
            return True
        info = await self.redis.info("cluster")
        return bool(int(info.get("cluster_enabled", 0)))

    async def _why_refused(self) -> str:
        lock = self.old.node_key("lock")
        owner = await self.redis.get(lock)
        if owner is not None:
            return (
                f"a daemon of the old release leads this node ({lock} is held by {as_str(owner)})"
            )
        return (
            "a daemon of the old release runs, or stopped less than 10 s ago "
            f"({self.old.node_key('daemons')} holds its heartbeat)"
        )

    async def _refusal(self) -> MigrationRefusedError:
        why = await self._why_refused()
        return MigrationRefusedError(
            f"cannot move the mailbox to this release's key layout: {why}; stop every daemon "
            "of the old release first (what moved so far stays moved; the next run does the "
            "rest)"
        )

    # ---- peers

    async def _move_peers(self, moved: LayoutMove) -> None:
        left: set[bytes] = set()  # damaged: stays in the old layout, tried once
        mail = self.old.node_key("mail")
        while page := as_items(
            await self.redis.zrange(mail, len(left), len(left) + PEERS_PER_CALL - 1)
        ):
            peers = []
            for member in page:
                peer = _pubkey(as_str(member))
                if peer is None:  # not a peer: nothing the old release wrote
                    await self.redis.zrem(mail, member)
                    moved.damaged += 1
                else:
                    peers.append(peer)
            left |= await self._move(peers, moved)
        cursor = 0
        while True:
            cursor, found = await self.redis.scan(
                cursor, match=self.old.peer_pattern, count=_SCAN_COUNT
            )
            strays = {self.old.peer_of(as_str(k)) for k in found} - {None} - left
            left |= await self._move([p for p in strays if p is not None], moved)
            if cursor == 0:
                break
        booked = {
            peer
            async for field, _ in self.redis.hscan_iter(self.old.node_key("usage"), count=500)
            if (peer := _usage_peer(as_str(field))) is not None and peer not in left
        }
        await self._move(booked, moved)

    async def _move(self, peers: Iterable[bytes], moved: LayoutMove) -> set[bytes]:
        """Moves each peer in its own script, :data:`PEERS_PER_CALL` to a round trip;
        returns the peers left where they were (damaged)."""
        left: set[bytes] = set()
        redis = self.redis
        if isinstance(redis, RedisCluster):  # the old layout never lived on a Cluster
            return left
        chosen = list(peers)
        for start in range(0, len(chosen), PEERS_PER_CALL):
            page = chosen[start : start + PEERS_PER_CALL]
            async with redis.pipeline(transaction=False) as pipe:
                for peer in page:
                    keys = [
                        *self.keys.peer_keys(peer),
                        *self.old.peer_keys(peer),
                        self.old.node_key("mail"),
                        self.old.node_key("usage"),
                        *self._running,
                    ]
                    await self._peer(keys=keys, args=[peer.hex()], client=pipe)
                replies = await pipe.execute()
            refused = False
            for peer, reply in zip(page, replies, strict=True):
                counts = _counts(reply)
                if counts[0] == _REFUSED:
                    refused = True
                    continue
                if counts[0] == _DAMAGED:
                    log.warning(
                        "peer %s left in the old key layout: its keys are damaged", peer.hex()
                    )
                    moved.damaged += 1
                    left.add(peer)
                    continue
                n, size, duplicates, unconfirmed, expired = counts
                moved.peers += 1
                moved.messages += n
                moved.bytes += size
                moved.duplicates += duplicates
                moved.unconfirmed += unconfirmed
                moved.expired += expired
            if refused:
                raise await self._refusal()
        return left

    # ---- the old leader's last decisions, first (their record expires 15 s after)

    async def _move_decided(self, moved: LayoutMove) -> None:
        keys = [
            self.old.decided_key,
            self.keys.decided_key,
            self.keys.journal_key,
            *self._running,
        ]
        counts = _counts(await self._decided(keys=keys))
        if counts[0] == _REFUSED:
            raise await self._refusal()
        if counts[0] != _DAMAGED:  # else left for migrate_node.lua, which reports it
            moved.decided += counts[0]

    # ---- the journal and the event stream, a page at a time

    async def _move_journal(self, moved: LayoutMove) -> None:
        keys = [self.old.node_key("inbox"), self.keys.journal_key, *self._running]
        cursor = "0"
        while True:
            reply = as_items(await self._inbox(keys=keys, args=[cursor, ENTRIES_PER_CALL]))
            if len(reply) == 1:
                await self._not_moved(int(reply[0]), "journal", moved)
                return
            cursor = as_str(reply[0])
            moved.journal += int(reply[1])
            moved.journal_kept += int(reply[2])
            if cursor == "0" and not await self.redis.exists(keys[0]):
                return

    async def _move_events(self, moved: LayoutMove) -> None:
        keys = [self.old.node_key("events"), self.keys.events_key, *self._running]
        while True:
            counts = _counts(await self._events(keys=keys, args=[ENTRIES_PER_CALL]))
            if len(counts) == 1:
                await self._not_moved(counts[0], "event stream", moved)
                return
            moved.events += counts[0]
            moved.events_dropped += counts[1]
            if counts[2]:
                return

    async def _not_moved(self, status: int, what: str, moved: LayoutMove) -> None:
        if status == _REFUSED:
            raise await self._refusal()
        log.warning("the old key layout's %s is left where it is: it is damaged", what)
        moved.damaged += 1

    async def _move_node_keys(self, moved: LayoutMove) -> None:
        keys: list[str] = []
        for old, new in (
            ("counters", self.keys.counters_key),
            ("allow", self.keys.allow_key),
            ("decided", self.keys.decided_key),
            ("summary", self.keys.summary_key),
            ("delivery-requests", self.keys.delivery_requests_key),
            ("usage", self.keys.usage_key),
        ):
            keys += [self.old.node_key(old), new]
        keys += [self.keys.journal_key, *self._running]
        counts = _counts(await self._node(keys=keys))
        if counts[0] == _REFUSED:
            raise await self._refusal()
        moved.counters += counts[0]
        moved.allowed += counts[1]
        moved.decided += counts[2]
        moved.summary += counts[3]
        moved.delivery_requests += counts[4]
        moved.damaged += counts[5]


def _counts(reply: object) -> list[int]:
    return [int(v) for v in as_items(reply)]


def _pubkey(text: str) -> bytes | None:
    """The peer ``text`` names, only if it is spelt as the old release wrote it (lowercase
    hex, nothing around it): the scripts address the peer by that spelling, so a member
    spelt otherwise would never leave the old ``mail`` index."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        return None
    if key.hex() != text:
        return None
    return key if len(key) == PUBKEY_SIZE and key[0] in (2, 3) else None


def _usage_peer(field: str) -> bytes | None:
    kind, _, peer = field.partition(":")
    return _pubkey(peer) if kind in _USAGE_PEER_FIELDS else None
