"""The peers' queues: storing, reading, delivering, confirming, expiring and purging.

Every write that touches a message is one Lua script, so a message is stored with its
dedup entry, byte totals, index entry and key TTLs, or not at all; it leaves the same way.
A message is never returned for delivery once ``now >= expires_at``: expired messages are
removed and handed back to the caller so that it can count and publish them.

A peer's messages are held in two lists: its queue (waiting to be delivered) and its
unconfirmed list (lnd accepted them; they wait to be confirmed). What lnd accepts moves
from the first to the second (:meth:`Queues.move_delivered`), and leaves it confirmed
(:meth:`Queues.confirm`), or goes back to the front of the queue when the peer left
(:meth:`Queues.requeue`). The caps, the usage totals, the dedup hash, the mail index and
expiry count both lists: a message is held until it is confirmed or given up.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import Any

from lndmailbox.errors import RecordError, StoreError
from lndmailbox.store import lua
from lndmailbox.store.client import RedisClient, as_bytes, as_items, as_str, redis_errors
from lndmailbox.store.durability import DurableWrites
from lndmailbox.store.events import trim_argument, wake_argument
from lndmailbox.store.keys import Keys
from lndmailbox.store.records import (
    Limits,
    NewMessage,
    PeerSummary,
    PutResult,
    PutStatus,
    Stats,
    StoredMessage,
    Unconfirmed,
    check_pubkey,
    decode_record,
    decode_unconfirmed,
    encode_record,
    event_time,
    message_id_bytes,
    ms,
    new_message_id,
    record_id,
    record_times,
)

log = logging.getLogger(__name__)


def decode(peer: bytes, data: object) -> StoredMessage:
    """The message in a record Redis returned for ``peer``."""
    return decode_record(peer, as_bytes(data))


class Queues:
    """One FIFO queue per peer, with the node's index of peers with mail and byte totals."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        limits: Limits,
        *,
        events_maxlen: int,
        events_keep: float | None = None,
        durable: DurableWrites | None = None,
    ) -> None:
        self.redis = redis
        self.durable = durable or DurableWrites(redis)
        """Runs the writes that matter: put, and the removals after delivery."""
        self.keys = keys
        self.limits = limits
        self.events_maxlen = events_maxlen
        keep = limits.ttl if events_keep is None else events_keep
        self.events_trim = trim_argument(events_maxlen, keep)
        self.wake_ups = wake_argument()
        self._put = redis.register_script(lua.program("put"))
        self._peek = redis.register_script(lua.program("peek"))
        self._remove = redis.register_script(lua.program("remove"))
        self._delivered = redis.register_script(lua.program("delivered"))
        self._confirm = redis.register_script(lua.program("confirm"))
        self._requeue = redis.register_script(lua.program("requeue"))
        self._attempt = redis.register_script(lua.program("attempt"))
        self._sweep = redis.register_script(lua.program("sweep"))
        self._purge = redis.register_script(lua.program("purge"))
        self._summaries = redis.register_script(lua.program("summaries"))

    # ---- in

    @redis_errors
    async def put_many(
        self, messages: Sequence[NewMessage], *, ttl: float | None = None
    ) -> list[PutResult]:
        """Queues several messages (for any peers) in one round trip and one atomic step, in
        order; one :class:`PutResult` per message. Each is stored with all its indexes, or
        refused as a duplicate, over the node's cap, or for damaged keys (nothing changed).
        ``ttl``: seconds to keep them (default: the limits' ``ttl``)."""
        if not messages:
            return []
        for m in messages:
            check_pubkey("peer", m.peer)
        keep_for = ms(self.limits.ttl if ttl is None else ttl)
        stored = [
            StoredMessage(
                id=m.id or new_message_id(m.now),
                peer=m.peer,
                sender=m.sender,
                path_key=m.path_key,
                onion=m.onion,
                received_at=ms(m.now) / 1000,
                expires_at=(ms(m.now) + keep_for) / 1000,
                attempts=0,
            )
            for m in messages
        ]
        keys = self.keys.peer_keys(stored[0].peer)
        args: list[str | int | bytes] = [
            stored[0].peer.hex(),
            self.limits.max_messages_per_peer,
            self.limits.max_bytes_per_peer,
            self.limits.max_bytes_total,
            self.events_trim,
            event_time(),
            self.wake_ups,
        ]
        keys.append(self.keys.summary_key)
        key_ttl = max(keep_for + ms(self.limits.key_grace), 1)
        for i, msg in enumerate(stored):
            if i:
                keys += (
                    self.keys.queue_key(msg.peer),
                    self.keys.dedup_key(msg.peer),
                    self.keys.unconfirmed_key(msg.peer),
                )
            args += (msg.peer.hex(), encode_record(msg), key_ttl, msg.id)
        replies = as_items(await self.durable.run(self._put, keys, args))
        if len(replies) != len(stored):
            raise StoreError(f"Redis answered {len(replies)} puts for {len(stored)}")
        return [
            _put_result(msg, as_items(reply)) for msg, reply in zip(stored, replies, strict=True)
        ]

    # ---- out

    @redis_errors
    async def peek(
        self, peer: bytes, now: float, *, limit: int = 1, skip: Collection[str] = ()
    ) -> tuple[list[StoredMessage], list[StoredMessage]]:
        """The peer's ``limit`` oldest unexpired messages, oldest first (they stay queued until
        :meth:`remove`), and the expired messages met before the last of them, which this
        call removed (for the caller to count and publish). Messages whose ids are in
        ``skip`` (in the caller's hands) are passed over and left as they are."""
        reply = await self._peek(
            keys=self.keys.peer_keys(peer),
            args=[peer.hex(), ms(now), max(limit, 1), *(message_id_bytes(i) for i in skip)],
        )
        ready = int(reply[0])
        records = reply[1:]
        return (
            [decode(peer, r) for r in records[:ready]],
            [decode(peer, r) for r in records[ready:]],
        )

    @redis_errors
    async def remove(self, msg: StoredMessage) -> bool:
        """Removes a queued message by id. False if it was no longer queued (evicted,
        expired or purged meanwhile)."""
        reply = await self.durable.run(
            self._remove, self.keys.peer_keys(msg.peer), [msg.peer.hex(), message_id_bytes(msg.id)]
        )
        return bool(reply)

    @redis_errors
    async def move_delivered(self, messages: Sequence[StoredMessage], sent_ms: int) -> int:
        """lnd accepted ``messages`` (in that order) at ``sent_ms`` (Unix ms): each is
        counted and published as ``delivered`` (also one evicted, expired or purged
        meanwhile: the peer got it), and those still queued move to the end of their peer's
        unconfirmed list, still held, in one atomic step per peer (one round trip each).
        How many were still queued."""
        by_peer: dict[bytes, list[bytes | int]] = {}
        for msg in messages:
            by_peer.setdefault(msg.peer, []).extend((message_id_bytes(msg.id), msg.size))
        # Script calls one by one: a pipeline of scripts costs a SCRIPT EXISTS round trip.
        moved = 0
        at = event_time()
        grace = max(ms(self.limits.key_grace), 1)
        for peer, items in by_peer.items():
            moved += int(
                await self.durable.run(
                    self._delivered,
                    self.keys.peer_keys(peer),
                    [peer.hex(), self.events_trim, at, sent_ms, grace, *items],
                )
            )
        return moved

    @redis_errors
    async def confirm(
        self, peer: bytes, deliveries: Sequence[tuple[str, int]]
    ) -> list[StoredMessage]:
        """Removes the unconfirmed messages of ``deliveries`` ((message id, sent_ms) each),
        counting and publishing each as ``confirmed``, in one atomic step. One that went
        back to the queue since, or out again with another ``sent_ms``, is left alone.
        Returns the messages confirmed."""
        if not deliveries:
            return []
        args: list[str | int | bytes] = [peer.hex(), self.events_trim, event_time()]
        for message_id, sent_ms in deliveries:
            args += (message_id_bytes(message_id), sent_ms)
        reply = await self.durable.run(self._confirm, self.keys.peer_keys(peer), args)
        return [decode(peer, r) for r in as_items(reply)]

    @redis_errors
    async def requeue(
        self, peer: bytes, max_redeliveries: int, *, sent_by: int | None = None
    ) -> tuple[list[StoredMessage], list[StoredMessage]]:
        """The peer left: its unconfirmed messages that lnd took at or before ``sent_by``
        (Unix ms; None: all of them) go back to the front of its queue, in the order lnd
        took them, each counted and published as ``redelivered``, but those redelivered
        ``max_redeliveries`` times already, which are removed, counted and published as
        ``unconfirmed``; one atomic step. Those taken later (on a connection after the
        departure) stay unconfirmed. Returns (put back, given up)."""
        reply = as_items(
            await self._requeue(
                keys=self.keys.peer_keys(peer),
                args=[
                    peer.hex(),
                    self.events_trim,
                    event_time(),
                    max_redeliveries,
                    "" if sent_by is None else sent_by,
                ],
            )
        )
        back = int(reply[0])
        records = reply[1:]
        return (
            [decode(peer, r) for r in records[:back]],
            [decode(peer, r) for r in records[back:]],
        )

    @redis_errors
    async def record_attempt(self, msg: StoredMessage) -> int:
        """Adds one to the message's delivery attempts; the new count, or -1 if it is gone."""
        reply = await self._attempt(
            keys=self.keys.peer_keys(msg.peer), args=[msg.peer.hex(), message_id_bytes(msg.id)]
        )
        return int(reply)

    @redis_errors
    async def sweep_expired(self, now: float) -> list[StoredMessage]:
        """Removes every expired message, queued or unconfirmed, of every peer whose earliest
        expiry has passed; each peer is one atomic step. Returns the removed messages for
        the caller to count."""
        peers = await self.redis.zrangebyscore(self.keys.mail_key, "-inf", ms(now))
        out: list[StoredMessage] = []
        for member in peers:
            peer = _peer(member)
            reply = await self._sweep(keys=self.keys.peer_keys(peer), args=[peer.hex(), ms(now)])
            out.extend(decode(peer, r) for r in reply)
        return out

    @redis_errors
    async def purge(self, peer: bytes, id: str | None = None) -> int:
        """Deletes one message (by id) or all of a peer's messages, queued or unconfirmed;
        how many went."""
        arg = message_id_bytes(id) if id else b""
        return int(await self._purge(keys=self.keys.peer_keys(peer), args=[peer.hex(), arg]))

    # ---- reading

    @redis_errors
    async def messages(self, peer: bytes) -> list[StoredMessage]:
        """Everything queued for the peer, oldest first (expired ones included; the
        unconfirmed ones are :meth:`unconfirmed`)."""
        records = await self.redis.lrange(self.keys.queue_key(peer), 0, -1)
        return [decode(peer, r) for r in records]

    @redis_errors
    async def unconfirmed(self, peer: bytes) -> list[Unconfirmed]:
        """The peer's messages lnd accepted and not yet confirmed, in the order it took them."""
        entries = await self.redis.lrange(self.keys.unconfirmed_key(peer), 0, -1)
        return [decode_unconfirmed(peer, as_bytes(e)) for e in entries]

    @redis_errors
    async def unconfirmed_by_peer(self) -> dict[bytes, list[Unconfirmed]]:
        """Every peer's unconfirmed messages (peers without any left out): one round trip
        over the peers with mail, for the daemon's start."""
        peers = await self.peers_with_mail()
        if not peers:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for peer in peers:
                pipe.lrange(self.keys.unconfirmed_key(peer), 0, -1)
            replies = await pipe.execute(raise_on_error=False)
        out: dict[bytes, list[Unconfirmed]] = {}
        for peer, entries in zip(peers, replies, strict=True):
            if isinstance(entries, Exception):  # a key of the wrong type: left alone
                log.warning("the unconfirmed list of %s is unreadable: %s", peer.hex(), entries)
                continue
            for entry in entries:
                try:
                    out.setdefault(peer, []).append(decode_unconfirmed(peer, as_bytes(entry)))
                except RecordError as e:
                    # Left as it is: it goes back to the queue with the rest of the
                    # peer's unconfirmed mail (requeue.lua moves the whole list), or
                    # expires.
                    log.warning("an unconfirmed message of %s is unreadable: %s", peer.hex(), e)
        return out

    @redis_errors
    async def held(self, peer: bytes) -> list[StoredMessage]:
        """Everything held for the peer in held order: unconfirmed, then queued."""
        return [u.message for u in await self.unconfirmed(peer)] + await self.messages(peer)

    @redis_errors
    async def peers_with_mail(self) -> list[bytes]:
        """Peers with messages held (queued or unconfirmed), earliest expiry first."""
        return [_peer(m) for m in await self.redis.zrange(self.keys.mail_key, 0, -1)]

    @redis_errors
    async def peer_summaries(self) -> list[PeerSummary]:
        """One summary per peer with mail, earliest expiry first (one round trip for all)."""
        peers = [_peer(m) for m in await self.redis.zrange(self.keys.mail_key, 0, -1)]
        if not peers:
            return []
        keys = [self.keys.usage_key]
        for p in peers:
            keys += (self.keys.queue_key(p), self.keys.unconfirmed_key(p))
        reply = as_items(await self._summaries(keys=keys, args=[p.hex() for p in peers]))
        out = []
        for i, peer in enumerate(peers):
            count, nbytes, head, tail, unconfirmed = reply[5 * i : 5 * i + 5]
            if not count:
                continue
            first_received, first_expires = record_times(as_bytes(head))
            last_received, _ = record_times(as_bytes(tail))
            out.append(
                PeerSummary(
                    peer=peer,
                    messages=int(count),
                    bytes=int(nbytes),
                    oldest_received_at=first_received,
                    newest_received_at=last_received,
                    next_expiry=first_expires,
                    unconfirmed=int(unconfirmed),
                )
            )
        return out

    @redis_errors
    async def stats(self) -> Stats:
        """Totals over every peer: peers with mail, messages and bytes held, oldest message,
        unconfirmed messages."""
        messages, nbytes = await self.redis.hmget(self.keys.usage_key, ["messages", "bytes"])
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
            unconfirmed=sum(s.unconfirmed for s in summaries),
        )

    @redis_errors
    async def totals(self) -> tuple[int, int, int]:
        """(peers with mail, messages, bytes) from the node's counters: O(1), for gauges."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.mail_key)
            pipe.hmget(self.keys.usage_key, ["messages", "bytes"])
            peers, (messages, size) = await pipe.execute()
        return int(peers), int(messages or 0), int(size or 0)


def _peer(member: object) -> bytes:
    """A peer as the mail index holds it (hex)."""
    text = as_str(member)
    try:
        return bytes.fromhex(text)
    except ValueError as e:
        raise StoreError(f"the mail index holds {text!r}, not a peer") from e


def _put_result(msg: StoredMessage, reply: list[Any]) -> PutResult:
    code = int(reply[0])  # 0 stored and told, 4 stored for a flooded peer (summarized)
    if code == 1:
        return PutResult(PutStatus.DUPLICATE, as_str(reply[1]), size=msg.size)
    if code == 2:
        return PutResult(PutStatus.REJECTED_FULL, msg.id, size=msg.size)
    if code == 3:
        return PutResult(PutStatus.REJECTED_DAMAGED, msg.id, size=msg.size)
    # The write is done: a record that does not decode (another version, a hand-made
    # value) must not make it look failed. Its id is in the same place in every version.
    evicted_ids: list[str] = []
    evicted: list[StoredMessage] = []
    for raw in reply[2:]:
        record = as_bytes(raw)
        try:
            evicted.append(decode_record(msg.peer, record))
        except RecordError:
            log.warning("evicted an unreadable record for %s", msg.peer.hex())
        evicted_ids.append(record_id(record))
    return PutResult(
        PutStatus.STORED,
        msg.id,
        evicted=tuple(evicted_ids),
        evicted_messages=tuple(evicted),
        message=msg,
        size=msg.size,
        flooded=code == 4,
    )
