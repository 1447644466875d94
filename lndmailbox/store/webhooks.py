"""The clients' LSPS5 webhook registrations (bLIP-55) and when each client was last seen.

Each client (a peer) has a hash ``peer:<peer>:webhooks`` of app_name -> compact JSON
``{"url", "at"}`` (:func:`encode_webhook`), and a member in the node's ``webhook_clients``
sorted set, scored by when it was last seen (Unix ms). A peer is in ``webhook_clients``
exactly while it has a webhook: the scripts that add and remove webhooks keep both.

Rules that hold:

- ``set`` and ``remove`` are one script each (``webhook_set.lua``, ``webhook_remove.lua``)
  run through :class:`DurableWrites`: the daemon answers the client only once the write
  stands (and the replicas hold it, as ``--redis-wait-replicas`` says).
- No call reads the whole index in one command: ``clients``, ``count`` and ``prune`` read
  it :data:`PAGE` members at a time, and ``touch`` writes it that many a command.
- ``prune`` removes a client in one script that checks its last seen again, so a client
  seen after the index was read stays.
- A value this store did not write (a hand-made one) is skipped and logged, never raised
  to the caller; a key of the wrong type is a :class:`StoreError`.
- Only the client moves its last seen: a removal the operator makes (``now_ms`` None)
  leaves it, so ``mailboxctl`` cannot keep a client from being pruned.
- A URL is a secret: nothing here logs one (lndmailbox/lsps/webhook_url.py).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from lndmailbox.errors import RecordError, StoreError
from lndmailbox.store import lua
from lndmailbox.store.client import RedisClient, as_bytes, as_items, as_str, redis_errors
from lndmailbox.store.durability import DurableWrites
from lndmailbox.store.keys import Keys
from lndmailbox.store.queues import PAGE
from lndmailbox.store.records import (
    Webhook,
    WebhookClient,
    WebhookSet,
    check_pubkey,
    decode_webhook,
    encode_webhook,
)

log = logging.getLogger(__name__)

_WRITTEN, _NO_CHANGE, _TOO_MANY = 0, 1, 2


class Webhooks:
    """The node's webhook clients and their webhooks."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        durable: DurableWrites | None = None,
        page: int = PAGE,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.durable = durable or DurableWrites(redis)
        """Runs ``set`` and ``remove``."""
        self.page = max(page, 1)
        self._set = redis.register_script(lua.program("webhook_set"))
        self._remove = redis.register_script(lua.program("webhook_remove"))
        self._prune = redis.register_script(lua.program("webhook_prune"))

    def _keys_of(self, peer: bytes) -> list[str]:
        return [self.keys.webhooks_key(peer), self.keys.webhook_clients_key]

    @redis_errors
    async def set(
        self, peer: bytes, app_name: str, url: str, *, max_webhooks: int, now_ms: int
    ) -> WebhookSet:
        """Sets (inserts or replaces) the webhook of ``peer``'s ``app_name`` and the peer's
        last seen, unless the URL is the one set already (no change: only the last seen)
        or ``app_name`` is new and the peer has ``max_webhooks`` already (too many: nothing
        written)."""
        check_pubkey("peer", peer)
        value = encode_webhook(url, now_ms)
        reply = as_items(
            await self.durable.run(
                self._set,
                self._keys_of(peer),
                [peer.hex(), _utf8(app_name), value, _utf8(url), max_webhooks, now_ms],
            )
        )
        count, code = int(reply[0]), int(reply[1])
        if code not in (_WRITTEN, _NO_CHANGE, _TOO_MANY):
            raise StoreError(f"webhook_set answered {code}")
        return WebhookSet(
            num_webhooks=count, no_change=code == _NO_CHANGE, too_many=code == _TOO_MANY
        )

    @redis_errors
    async def remove(self, peer: bytes, app_name: str, *, now_ms: int | None) -> bool:
        """Removes the webhook of ``peer``'s ``app_name``; False if it had none. A peer left
        without webhooks is no client any more; one left with some is seen at ``now_ms``.
        ``now_ms`` None is a removal the client did not ask for (``mailboxctl``): its last
        seen stays, so the operator's command cannot keep it from being pruned."""
        check_pubkey("peer", peer)
        seen = "" if now_ms is None else now_ms
        reply = await self.durable.run(
            self._remove, self._keys_of(peer), [peer.hex(), _utf8(app_name), seen]
        )
        return bool(int(reply))

    @redis_errors
    async def list(self, peer: bytes) -> tuple[Webhook, ...]:
        """The peer's webhooks, by app_name. One that does not parse is left out (and
        logged without its value: it may hold a URL)."""
        held = await self.redis.hgetall(self.keys.webhooks_key(peer))
        out = []
        for field, value in held.items():
            try:
                out.append(decode_webhook(as_bytes(field), as_bytes(value)))
            except RecordError as e:
                log.warning("a webhook of %s is unreadable, skipped: %s", peer.hex(), e)
        return tuple(sorted(out, key=lambda w: w.app_name))

    @redis_errors
    async def touch(self, peers: Iterable[bytes], *, now_ms: int) -> None:
        """Sets the last seen of those of ``peers`` that are clients to ``now_ms``; a peer
        that is none is not made one (``ZADD XX``). One command per :attr:`page` of peers,
        all in one round trip."""
        chosen = list(peers)
        for p in chosen:
            check_pubkey("peer", p)
        members = list(dict.fromkeys(p.hex() for p in chosen))
        if not members:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(members), self.page):
                chunk = members[start : start + self.page]
                pipe.zadd(self.keys.webhook_clients_key, dict.fromkeys(chunk, now_ms), xx=True)
            await pipe.execute()

    @redis_errors
    async def clients(self, *, limit: int | None = None) -> builtins.list[tuple[bytes, int]]:
        """Every client and when it was last seen (Unix ms), by peer; the first ``limit``
        only if given (the index is still read whole, a page at a time, to sort it)."""
        out = [item async for page in self._pages() for item in page]
        out.sort()
        return out if limit is None else out[: max(limit, 0)]

    @redis_errors
    async def last_seen(self, peer: bytes) -> int | None:
        """When ``peer`` was last seen (Unix ms); None if it is no client."""
        check_pubkey("peer", peer)
        score = await self.redis.zscore(self.keys.webhook_clients_key, peer.hex())
        return None if score is None else int(score)

    @redis_errors
    async def summaries(self) -> builtins.list[WebhookClient]:
        """Every client with its last seen and number of webhooks, by peer: the index a
        page at a time, each page's ``HLEN`` in one round trip. A client whose last webhook
        went between the two reads is left out: it is no client any more."""
        out: builtins.list[WebhookClient] = []
        async for page in self._pages():
            async with self.redis.pipeline(transaction=False) as pipe:
                for peer, _ in page:
                    pipe.hlen(self.keys.webhooks_key(peer))
                counts = [int(n) for n in await pipe.execute()]
            out.extend(
                WebhookClient(peer, seen, n)
                for (peer, seen), n in zip(page, counts, strict=True)
                if n
            )
        out.sort(key=lambda c: c.peer)
        return out

    @redis_errors
    async def prune(self, *, seen_before_ms: int, keep: Callable[[bytes], bool]) -> int:
        """Removes every client last seen before ``seen_before_ms`` for which ``keep`` is
        False, with its webhooks, one script each; how many were removed. The due clients
        are read :attr:`page` at a time from the front of the index: a removed client
        leaves it, and one kept is passed over from then on. A client kept, or seen
        meanwhile, that leaves the range while a page is read may shift a later one past
        this run; the next run finds it."""
        removed = 0
        passed = 0
        done: set[bytes] = set()
        while True:
            members = await self.redis.zrangebyscore(
                self.keys.webhook_clients_key,
                "-inf",
                f"({seen_before_ms}",
                start=passed,
                num=self.page,
            )
            due = [as_bytes(m) for m in members if as_bytes(m) not in done]
            passed += len(members) - len(due)
            for member in due:
                done.add(member)
                peer = _peer(member)
                if peer is None or keep(peer):
                    passed += 1  # it stays in the range, in front of those not looked at
                    continue
                # one seen meanwhile is left, and leaves the range: it is seen since
                removed += int(
                    await self._prune(keys=self._keys_of(peer), args=[peer.hex(), seen_before_ms])
                )
            if len(members) < self.page:
                return removed

    @redis_errors
    async def count(self) -> tuple[int, int]:
        """(clients, webhooks): ``ZCARD`` of the index, and the clients' ``HLEN`` summed, a
        page of them per round trip (two round trips per :attr:`page` of clients)."""
        clients = int(await self.redis.zcard(self.keys.webhook_clients_key))
        webhooks = 0
        async for page in self._pages():
            async with self.redis.pipeline(transaction=False) as pipe:
                for peer, _ in page:
                    pipe.hlen(self.keys.webhooks_key(peer))
                webhooks += sum(int(n) for n in await pipe.execute())
        return clients, webhooks

    async def _pages(self) -> AsyncIterator[builtins.list[tuple[bytes, int]]]:
        """The index, (client, last seen ms) about :attr:`page` at a time, each client once,
        in no order (ZSCAN: every client that stays in the index throughout is met)."""
        seen: set[bytes] = set()
        cursor = 0
        while True:
            cursor, items = await self.redis.zscan(
                self.keys.webhook_clients_key, cursor, count=self.page
            )
            page = []
            for member, score in items:
                peer = _peer(member)
                if peer is not None and peer not in seen:
                    seen.add(peer)
                    page.append((peer, int(score)))
            if page:
                yield page
            if not cursor:
                return


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RecordError(f"not text: {e}") from e


def _peer(member: object) -> bytes | None:
    """The client a member of the index names; None (logged) for one this store did not
    write."""
    try:
        text = as_str(member)
    except StoreError:
        log.warning("webhook_clients holds %r, not a peer; skipped", member)
        return None
    try:
        peer = bytes.fromhex(text)
    except ValueError:
        peer = b""
    if len(peer) != 33 or peer.hex() != text:
        log.warning("webhook_clients holds %r, not a peer; skipped", text)
        return None
    return peer
