"""Moving one node's mailbox from one Redis deployment to another (standalone, Cluster,
Sentinel: whatever :func:`~lndmailbox.store.client.connect` reaches), while no daemon runs.

Rules that hold:

- Nothing moves while a daemon of the node runs on either side (its lock, or its entry in
  the daemons hash, which outlives its last heartbeat by 10 s): it would write on after
  its keys were copied. :class:`~lndmailbox.errors.MigrationRefusedError` says which side.
  The move holds the node's lock on both sides from before the copy until after the
  source is removed (an owner token naming mailboxctl, a :data:`MOVE_LEASE` renewed every
  quarter of it), so a daemon starting meanwhile stands by as for any leader; the daemons
  hash is checked before the copy and again before the source is removed, and a lease
  found lost then refuses too.
- A destination that holds any key of the node is refused, unless ``overwrite``: then its
  keys of the node go first. One that is the source (the same server's run id and
  database; on a Cluster, the primary of the node's slot) is refused whatever the flags.
- Key by key, a page at a time (:data:`KEYS_PER_CALL`): ``DUMP`` and ``PEXPIRETIME`` on the
  source, ``RESTORE ... ABSTTL`` on the destination, so each key keeps its content,
  encoding and expiry to the millisecond. The daemons' own keys (lock, heartbeats) are
  not copied; a stopped daemon's last heartbeat is removed from the source with the rest.
- Then every key is checked on the destination: the same ``DUMP`` payload and expiry (or,
  where the two servers' payloads differ, the same content read back by type). Only when
  all match is the source removed; otherwise the source stays as it was and the error
  names the first key that differs.
- ``DUMP`` payloads carry the server's RDB version: the destination must run the same
  Redis or valkey version as the source, or a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

from lndmailbox.errors import MigrationRefusedError, StoreError
from lndmailbox.store.client import as_items, as_str, redis_errors
from lndmailbox.store.control import LockRenewal
from lndmailbox.store.handle import Store

log = logging.getLogger(__name__)

KEYS_PER_CALL = 100
"""Keys dumped, restored, checked or removed in one round trip."""
_SCAN_COUNT = 1000
MOVE_LEASE = 10.0
"""Seconds of the node lock a move holds on each side, renewed every quarter of it: a
mailboxctl killed mid-move keeps a daemon standing by that long at most."""


@dataclasses.dataclass(frozen=True)
class Copied:
    """What one move copied."""

    keys: int
    payload_bytes: int
    """The DUMP payloads' size: about what the keys take on disk."""
    replaced: int
    """Keys of the node the destination held before, removed first (``overwrite``)."""


@redis_errors
async def move_mailbox(source: Store, destination: Store, *, overwrite: bool = False) -> Copied:
    """Copies ``source``'s mailbox to ``destination`` (the same node), checks the copy, then
    removes the source's keys. See the module docstring for the rules."""
    if source.node != destination.node:
        raise StoreError("source and destination stores are of different nodes")
    here = await _place(source)
    if here is not None and here == await _place(destination):
        raise MigrationRefusedError("the destination is the source (the same server and database)")
    async with _holding_locks(source, destination) as held:
        return await _move(source, destination, overwrite, held)


async def _move(source: Store, destination: Store, overwrite: bool, held: _Held) -> Copied:
    await _refuse_if_running(source, "the source", held.owner)
    await _refuse_if_running(destination, "the destination", held.owner)
    names = await _keys_of(source)
    there = await _keys_of(destination)
    if there and not overwrite:
        raise MigrationRefusedError(
            f"the destination holds this node's mailbox already ({len(there)} keys, such as "
            f"{there[0]}); pass --overwrite to replace it"
        )
    await _delete(destination, there)
    size = 0
    for page in _pages(names):
        dumped = await _dump(source, page)
        size += sum(len(d) for d, _ in dumped.values())
        await _restore(destination, dumped)
    await _check(source, destination, names)
    await held.still_held()
    await _refuse_if_running(source, "the source", held.owner)
    # a stopped daemon's last heartbeat too: nothing of the node stays on the source
    await _delete(source, [*names, source.keys.heartbeat_key])
    return Copied(keys=len(names), payload_bytes=size, replaced=len(there))


async def _place(store: Store) -> tuple[str, int] | None:
    """Which server and database hold a store's keys: the run id of the server (on a
    Cluster, of the primary of the node's slot), and the db (always 0 on a Cluster)."""
    run_id = await store.server.run_id()
    pool = getattr(store.redis, "connection_pool", None)
    db = 0 if pool is None else int(pool.connection_kwargs.get("db", 0))
    return None if run_id is None else (run_id, db)


@dataclasses.dataclass
class _Held:
    """The node lock a move holds on both sides, and whether a renewal found it lost."""

    owner: str
    stores: tuple[tuple[Store, str], ...]
    lost: str | None = None

    async def renew(self) -> None:
        for store, side in self.stores:
            renewal = await store.control.renew_lock(self.owner, MOVE_LEASE)
            if renewal is LockRenewal.TAKEN and self.lost is None:
                owner = await store.control.lock_owner()
                self.lost = f"{store.keys.lock_key} on {side} was taken by {owner}"

    async def still_held(self) -> None:
        """Raises unless every renewal so far, and one now, found the lock this move's."""
        await self.renew()
        if self.lost is not None:
            raise MigrationRefusedError(
                f"the move lost the node's lock ({self.lost}): a daemon may have written "
                "meanwhile, so the source is left as it was"
            )


@contextlib.asynccontextmanager
async def _holding_locks(source: Store, destination: Store) -> AsyncIterator[_Held]:
    """The node lock on both sides (taken without counting a change of leader: no
    daemon leads), renewed until the move ends, then released."""
    owner = f"mailboxctl-migrate:{socket.gethostname()}:pid={os.getpid()}:{secrets.token_hex(4)}"
    held = _Held(owner, ((source, "the source"), (destination, "the destination")))
    try:
        for store, side in held.stores:
            if await store.control.renew_lock(owner, MOVE_LEASE) is LockRenewal.TAKEN:
                await _refuse_if_running(store, side, owner)
                raise MigrationRefusedError(f"the node's lock on {side} was held; try again")
        renewing = asyncio.create_task(_renew_until_cancelled(held))
        try:
            yield held
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
    finally:
        for store, _ in held.stores:
            with contextlib.suppress(StoreError):
                await store.control.release_lock(owner)


async def _renew_until_cancelled(held: _Held) -> None:
    while True:
        await asyncio.sleep(MOVE_LEASE / 4)
        try:
            await held.renew()
        except StoreError as e:  # the next renewal, or the check before removal, decides
            log.warning("renewing the move's lock: %s", e)


async def _refuse_if_running(store: Store, side: str, ours: str) -> None:
    owner = await store.control.lock_owner()
    beats = await store.control.read_daemons()
    if owner is not None and owner != ours:
        why = f"{store.keys.lock_key} is held by {owner}"
    elif beats:
        why = f"{store.keys.daemons_key} holds the heartbeats of {', '.join(sorted(beats))}"
    else:
        return
    raise MigrationRefusedError(
        f"a daemon runs on {side} ({why}); stop every daemon of the node before moving its "
        "mailbox (or wait 10 s after one was killed)"
    )


async def _keys_of(store: Store) -> list[str]:
    """Every key of the node but the daemons' own, sorted."""
    skip = {store.keys.lock_key, store.keys.heartbeat_key, store.keys.daemons_key}
    found = {
        as_str(key)
        async for key in store.redis.scan_iter(match=store.keys.key_pattern, count=_SCAN_COUNT)
    }
    return sorted(found - skip)


def _pages(names: list[str]) -> list[list[str]]:
    return [names[i : i + KEYS_PER_CALL] for i in range(0, len(names), KEYS_PER_CALL)]


async def _dump(store: Store, names: list[str]) -> dict[str, tuple[bytes, int]]:
    """Each key's DUMP payload and expiry (absolute ms, 0 for none); gone keys left out."""
    async with store.redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.dump(name)
            pipe.pexpiretime(name)
        replies = await pipe.execute()
    out: dict[str, tuple[bytes, int]] = {}
    for i, name in enumerate(names):
        payload, expires = replies[2 * i], int(replies[2 * i + 1])
        if payload is not None and expires != -2:
            out[name] = (payload, max(expires, 0))
    return out


async def _restore(store: Store, dumped: dict[str, tuple[bytes, int]]) -> None:
    async with store.redis.pipeline(transaction=False) as pipe:
        for name, (payload, expires) in dumped.items():
            pipe.restore(name, expires, payload, absttl=True)
        await pipe.execute()


async def _check(source: Store, destination: Store, names: list[str]) -> None:
    for page in _pages(names):
        mine, theirs = await _dump(source, page), await _dump(destination, page)
        for name, (payload, expires) in mine.items():
            copy = theirs.get(name)
            if copy is None:
                raise StoreError(f"the copy lacks {name}; the source is left as it was")
            if copy[1] != expires or (
                copy[0] != payload
                and await _content(source, name) != await _content(destination, name)
            ):
                raise StoreError(f"the copy of {name} differs; the source is left as it was")


async def _content(store: Store, name: str) -> Any:
    """A key's content read back by its type (for servers whose DUMP payloads differ)."""
    redis = store.redis
    kind = as_str(await redis.type(name))
    if kind == "list":
        return await redis.lrange(name, 0, -1)
    if kind == "hash":
        return await redis.hgetall(name)
    if kind == "set":
        return sorted(as_items(await redis.smembers(name)))
    if kind == "zset":
        return await redis.zrange(name, 0, -1, withscores=True)
    if kind == "stream":
        return await redis.xrange(name)
    return await redis.get(name)


async def _delete(store: Store, names: list[str]) -> None:
    for page in _pages(names):
        # one node's keys share a slot, so one call takes a page on a Cluster too
        await store.redis.unlink(*page)
