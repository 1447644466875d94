"""How the daemons and mailboxctl coordinate through Redis: one leader per node (a lock with
a lease), the leader's heartbeat and every daemon's own (leader or standby), and the
delivery requests ``mailboxctl deliver`` leaves for the leader."""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from lndmailbox.errors import StoreError
from lndmailbox.store import lua
from lndmailbox.store.client import (
    RedisClient,
    as_items,
    as_str,
    connect,
    redis_errors,
    socket_timeout,
)
from lndmailbox.store.keys import Keys
from lndmailbox.store.records import PUBKEY_SIZE, check_pubkey, ms

log = logging.getLogger(__name__)

_DELIVERY_REQUEST_TTL_MS = 3_600_000
_MAX_REQUESTS_READ = 10_000


class LockRenewal(enum.Enum):
    """What renewing the node's lock found."""

    RENEWED = 1
    """The owner still held it: its lease is extended."""
    RETAKEN = 2
    """Nobody held it (the lease ran out, say while Redis was away): the owner has it again."""
    TAKEN = 0
    """Another owner holds it."""


class Control:
    """The node's daemon lock, heartbeat and delivery requests."""

    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._acquire = redis.register_script(lua.program("acquire_lock"))
        self._renew = redis.register_script(lua.program("renew_lock"))
        self._release = redis.register_script(lua.program("release_lock"))
        self._daemons = redis.register_script(lua.program("daemons"))
        self._owns_client = False

    @classmethod
    def on_own_connection(cls, url: str, node: bytes, *, timeout: float) -> Control:
        """A control on a small pool of its own (two connections), for the node lock: its
        renewals never wait for the store's pool, and a connection that hangs (lost
        silently) fails within ``timeout`` seconds, not the store's 30.
        :meth:`aclose` closes the pool."""
        redis = connect(
            url,
            max_connections=2,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            pool_timeout=timeout,
        )
        control = cls(redis, Keys(node))
        control._owns_client = True
        return control

    async def aclose(self) -> None:
        if self._owns_client:
            await self.redis.aclose()

    # ---- one daemon per node

    async def acquire_lock(self, owner: str, lease: float) -> bool:
        """Takes the node's daemon lock for ``lease`` seconds if nobody holds it."""
        return await self.take_lock(owner, lease) == owner

    @redis_errors
    async def take_lock(self, owner: str, lease: float) -> str:
        """Takes the lock for ``lease`` seconds if nobody holds it (counting a change of
        leader); returns who holds it then: ``owner``, or the daemon that leads. Works
        while Redis is over maxmemory."""
        keys = [self.keys.lock_key, self.keys.counters_key]
        return as_str(await self._acquire(keys=keys, args=[owner, max(ms(lease), 1)]))

    @redis_errors
    async def renew_lock(self, owner: str, lease: float) -> LockRenewal:
        """Extends the lease, or takes the lock again when nobody holds it; works while
        Redis is over maxmemory."""
        reply = await self._renew(keys=[self.keys.lock_key], args=[owner, max(ms(lease), 1)])
        return LockRenewal(int(reply))

    @redis_errors
    async def release_lock(self, owner: str) -> bool:
        """Frees the lock if ``owner`` still holds it (True), else leaves it alone."""
        return bool(await self._release(keys=[self.keys.lock_key], args=[owner]))

    @redis_errors
    async def lock_owner(self) -> str | None:
        owner = await self.redis.get(self.keys.lock_key)
        return as_str(owner) if owner is not None else None

    # ---- the daemon's heartbeat

    @redis_errors
    async def write_heartbeat(
        self, info: Mapping[str, str | int | float], ttl: float = 30.0
    ) -> None:
        """Replaces the daemon's heartbeat (pid, host, started_at, version, node...); it
        disappears ``ttl`` seconds after the last one."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.heartbeat_key)
            if info:
                mapping: dict[Any, Any] = dict(info)
                pipe.hset(self.keys.heartbeat_key, mapping=mapping)
                pipe.pexpire(self.keys.heartbeat_key, max(ms(ttl), 1))
            await pipe.execute()

    @redis_errors
    async def read_heartbeat(self) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.keys.heartbeat_key)
        return {as_str(k): as_str(v) for k, v in raw.items()} if raw else None

    # ---- every daemon's own heartbeat, leader and standbys

    @redis_errors
    async def write_daemon(
        self, owner: str, info: Mapping[str, str | int | float | None], *, stale: float, ttl: float
    ) -> int:
        """Writes ``owner``'s heartbeat (its role, pid, host...; ``at`` is added from
        Redis's clock) and removes those older than ``stale`` seconds; the hash expires
        ``ttl`` seconds after the last write. Returns how many daemons it holds."""
        beat = json.dumps(dict(info), separators=(",", ":"))
        args: list[str | int] = [owner, beat, max(ms(stale), 1), max(ms(ttl), 1)]
        return int(await self._daemons(keys=[self.keys.daemons_key], args=args))

    @redis_errors
    async def remove_daemon(self, owner: str, *, stale: float, ttl: float) -> None:
        """Removes ``owner``'s heartbeat (a daemon that stops)."""
        args: list[str | int] = [owner, "", max(ms(stale), 1), max(ms(ttl), 1)]
        await self._daemons(keys=[self.keys.daemons_key], args=args)

    @redis_errors
    async def read_daemons(self) -> dict[str, dict[str, Any]]:
        """Every daemon's heartbeat by owner token (what does not parse is left out)."""
        found: dict[str, dict[str, Any]] = {}
        for owner, raw in (await self.redis.hgetall(self.keys.daemons_key)).items():
            try:
                beat = json.loads(raw)
            except ValueError:
                continue
            if isinstance(beat, dict):
                found[as_str(owner)] = beat
        return found

    # ---- delivery requests (mailboxctl deliver -> daemon)

    @redis_errors
    async def request_delivery(self, peer: bytes) -> None:
        """Asks the running daemon to try delivering to ``peer`` now (kept for an hour)."""
        check_pubkey("peer", peer)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self.keys.delivery_requests_key, peer.hex())
            pipe.pexpire(self.keys.delivery_requests_key, _DELIVERY_REQUEST_TTL_MS)
            await pipe.execute()

    @redis_errors
    async def wait_delivery_requests(self, timeout: float) -> list[bytes]:  # noqa: ASYNC109
        # (a server-side BLPOP wait: cancelling it from the client would spoil the connection)
        """Every pending request, oldest first, each peer once; waits up to ``timeout``
        seconds for the first.

        The wait is cut to stay under the client's socket timeout; an empty list means
        nothing came, so call it in a loop.
        """
        limit = socket_timeout(self.redis)
        if limit:
            timeout = min(timeout, max(limit - 1.0, 0.1))
        key = self.keys.delivery_requests_key
        first = as_items(await self.redis.blpop([key], timeout=max(timeout, 0.01)))
        if not first:
            return []
        rest = as_items(await self.redis.lpop(key, _MAX_REQUESTS_READ))
        return _unique_peers([first[1], *rest])


def _unique_peers(raw: Iterable[object]) -> list[bytes]:
    """The peers requested, in order, each once; what is not a pubkey in hex is dropped."""
    seen: dict[bytes, None] = {}
    for item in raw:
        try:
            peer = bytes.fromhex(as_str(item))
        except (ValueError, StoreError):
            continue
        if len(peer) == PUBKEY_SIZE:
            seen[peer] = None
    return list(seen)
