"""Waiting for replicas after the writes that matter: journal, put, removals after delivery.

A write the primary acknowledged and did not pass to a replica before it died is gone
after a failover. :class:`DurableWrites` runs such a write's script and then ``WAIT``
(or ``WAITAOF``) so that the caller hears back only once the replicas hold it, or the
timeout passed.

Rules that hold:

- One connection per attempt, taken from the client's pool (on a Cluster: from the node
  that holds the keys' slot in the client's slot map now), and on it, in turn: ``EVALSHA``,
  its reply, then the wait, its reply. ``WAIT`` counts the replicas that hold the last
  write *of the connection that sends it*, so the wait never goes anywhere else, and it
  is sent only once the script's reply says the script ran there. No pipeline: its
  retries would send the wait to another node, or the script a second time.
- A write that may have run is never sent again by this module. A connection that fails
  before or while the script's reply is read is closed and the error goes up, as for a
  plain script call (the caller's retry rules decide). A wait that comes back short
  (fewer replicas than asked within the timeout, or an error or a lost connection while
  waiting) never undoes or repeats the write: the write is done on the primary. It is
  counted (:attr:`DurableWrites.short`, the ``replica_wait_short`` metric) and logged as
  an outage (lndmailbox/retry.py): one WARNING when replicas stop confirming, one INFO
  when they confirm again, at most one WARNING per :data:`WARN_EVERY`.
- Redirections: a ``MOVED`` or ``ASK`` reply to the script means it did not run on that
  node. ``MOVED`` updates the slot map and the pair goes to the new owner, ``ASK`` sends
  the pair after ``ASKING`` to the node named; at most :data:`REDIRECTIONS` hops.
- ``NOSCRIPT``: the script did not run; it is loaded on that connection's node and the
  pair sent once more. ``NOSCRIPT`` again right after loading means the node changed under
  the connection (a failover in progress): :class:`StoreUnavailableError`.
- A connection whose node the Cluster client no longer has (a failover dropped it) is
  closed when the attempt ends, never given back to the dropped node's pool.
- ``auto`` waits for as many replicas as the primary has online (``INFO replication``,
  the ``slaveN`` lines with ``state=online``: not those still loading a full sync), looked
  at on the write's connection every :data:`LOOK_EVERY` seconds, and at once after a short
  wait: a standalone Redis or the embedded server is never waited on, and a shard whose
  replica left stops costing the timeout on the next write.
- Off (no replicas asked, no AOF), a write is the plain script call, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.commands.core import AsyncScript

from lndmailbox.errors import StoreUnavailableError
from lndmailbox.retry import Outage
from lndmailbox.store.client import RedisClient, as_str

log = logging.getLogger(__name__)

LOOK_EVERY = 5.0
"""Seconds between two looks at how many replicas the primary has (``auto``)."""
WARN_EVERY = 60.0
"""Seconds at least between two WARNINGs about short waits (a replica that keeps
falling behind and catching up logs its later spells at debug)."""
REDIRECTIONS = 5
"""MOVED/ASK hops one write may take before it is given up as a Cluster in flux."""


@dataclass(frozen=True)
class ReplicaWait:
    """What a write that matters waits for."""

    replicas: int | None = None
    """Replicas that must hold it: a number (0: none), or None for as many as the primary
    has online (``auto``)."""
    timeout: float = 0.1
    """Seconds the wait may take; past it the write stands, counted as short."""
    aof: bool = False
    """WAITAOF instead of WAIT: the primary's own append-only file and the replicas' must
    have synced it to disk (needs ``appendonly yes`` on each)."""

    @property
    def off(self) -> bool:
        return self.replicas == 0 and not self.aof

    @property
    def timeout_ms(self) -> int:
        # WAIT 0 would wait for ever.
        return max(round(self.timeout * 1000), 1)


OFF = ReplicaWait(replicas=0)


def online_replicas(info: str) -> int:
    """The replicas an ``INFO replication`` text lists as online."""
    count = 0
    for line in info.splitlines():
        name, _, fields = line.partition(":")
        if name.startswith("slave") and name[5:].isdigit() and "state=online" in fields.split(","):
            count += 1
    return count


class DurableWrites:
    """Runs a store script, then waits for the replicas (see the module's rules)."""

    def __init__(self, redis: RedisClient, wait: ReplicaWait = OFF) -> None:
        self.redis = redis
        self.wait = wait
        self.short = 0
        """Writes whose wait came back short since start."""
        self.on_short: Callable[[], None] | None = None
        """Called once per short wait (the daemon's metric)."""
        self._looked: dict[str, tuple[float, int]] = {}
        self._outage = Outage(
            "Redis replicas confirming writes",
            log,
            meanwhile="each unconfirmed write stands on the primary and would be lost if "
            "the primary failed now; counting lndmailbox_replica_wait_short_total",
            warn_every=WARN_EVERY,
        )

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The script's reply, once the wait is over (or at once when nothing is waited for)."""
        if self.wait.off or self._no_replica_to_wait_for():
            return await script(keys=keys, args=args)
        if isinstance(self.redis, RedisCluster):
            return await self._on_cluster(self.redis, script, keys, args)
        return await self._on_pool(self.redis, script, keys, args)

    def _no_replica_to_wait_for(self) -> bool:
        """``auto`` on one server (or Sentinel's primary) whose last look, still fresh,
        found no replica online: the script goes the plain way, with the client's own
        connection handling, as with the wait off (one write in :data:`LOOK_EVERY` s
        looks again)."""
        if self.wait.replicas is not None or self.wait.aof or isinstance(self.redis, RedisCluster):
            return False
        if len(self._looked) != 1:
            return False
        (at, count), now = next(iter(self._looked.values())), time.monotonic()
        return count == 0 and now - at < LOOK_EVERY

    async def _on_pool(
        self, redis: aioredis.Redis, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]
    ) -> Any:
        pool = redis.connection_pool
        # The pool hands out a connected connection, reconnecting one it finds stale.
        connection: Connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            # Named by its server: after a Sentinel failover the new primary is looked at
            # afresh, not taken for the old one.
            server = _server_of(connection)
            return await self._write_and_wait(connection, server, script, keys, args, asking=False)
        finally:
            # Shielded: a cancellation while the pool's lock is contended would otherwise
            # keep the connection out of the pool for good.
            await asyncio.shield(pool.release(connection))

    async def _on_cluster(
        self, cluster: RedisCluster, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]
    ) -> Any:
        if not keys:
            raise TypeError("a write that matters names its keys")
        slot = cluster.keyslot(keys[0])
        asked: ClusterNode | None = None
        for _ in range(REDIRECTIONS + 1):  # the first try, then the hops
            await cluster.initialize()  # the slot map, read again once a node failed
            nodes = cluster.nodes_manager
            node = asked or nodes.get_node_from_slot(slot)
            connection = node.acquire_connection()
            try:
                await _fresh(node, connection)
                return await self._write_and_wait(
                    connection, node.name, script, keys, args, asking=asked is not None
                )
            except rexc.MovedError as e:
                # The script did not run there: the slot has a new owner.
                await nodes.move_slot(e)
                asked = None
            except rexc.AskError as e:
                asked = nodes.get_node(host=e.host, port=e.port)
                if asked is None:
                    _reread_slot_map(cluster)
                    raise rexc.TryAgainError(
                        f"slot {slot} is migrating to {e.host}:{e.port}, a node not in the "
                        "slot map yet"
                    ) from e
            except (rexc.ConnectionError, rexc.TimeoutError, OSError):
                nodes.move_node_to_end_of_cached_nodes(node.name)
                _reread_slot_map(cluster)
                raise
            except rexc.ClusterDownError:
                _reread_slot_map(cluster)  # a shard without its primary: a failover under way
                raise
            finally:
                await _release(cluster, node, connection)
        raise rexc.ClusterError(f"slot {slot} redirected {REDIRECTIONS} times in one write")

    async def _write_and_wait(
        self,
        connection: Connection,
        node: str,
        script: AsyncScript,
        keys: Sequence[Any],
        args: Sequence[Any],
        *,
        asking: bool,
    ) -> Any:
        """The script's reply, after the wait; the connection is left clean or closed."""
        try:
            replicas = await self._replicas(connection, node)
            reply = await _evalsha(connection, script, keys, args, asking=asking)
        except rexc.ResponseError:
            raise  # a reply read whole: the connection is in step
        except BaseException:
            # Not in step with its replies any more (or already closed by redis-py).
            await _close(connection)
            raise
        if replicas == 0 and not self.wait.aof:
            return reply
        # The write ran: from here on nothing but a cancellation reaches the caller, or it
        # would retry (repeat) a write that stands. Whatever else goes wrong is a short wait.
        try:
            await connection.send_command(*self._wait_command(replicas))
            waited = await connection.read_response()
        except rexc.ResponseError as e:
            self._short(node, f"the wait was refused: {e}")
        except Exception as e:
            await _close(connection)
            self._short(node, f"the wait failed: {e}")
        except BaseException:
            await _close(connection)
            raise  # cancelled: the write stands, and the caller is told nothing else
        else:
            try:
                self._check(node, waited, replicas)
            except (TypeError, ValueError):
                self._short(node, f"the wait's reply was unreadable: {waited!r}")
        return reply

    def _wait_command(self, replicas: int) -> tuple[Any, ...]:
        if self.wait.aof:
            return ("WAITAOF", 1, replicas, self.wait.timeout_ms)
        return ("WAIT", replicas, self.wait.timeout_ms)

    async def _replicas(self, connection: Connection, node: str) -> int:
        if self.wait.replicas is not None:
            return self.wait.replicas
        now = time.monotonic()
        looked = self._looked.get(node)
        if looked is not None and now - looked[0] < LOOK_EVERY:
            return looked[1]
        await connection.send_command("INFO", "replication")
        count = online_replicas(as_str(await connection.read_response()))
        if looked is None or looked[1] != count:
            if count:
                log.info(
                    "the Redis primary %s has %d replicas online: writes that matter wait for them",
                    node,
                    count,
                )
            else:
                log.info("the Redis primary %s has no replica online: writes wait for none", node)
        self._looked[node] = (now, count)
        return count

    def _check(self, node: str, waited: Any, replicas: int) -> None:
        if self.wait.aof:
            local, remote = (int(x) for x in waited)
            if local < 1 or remote < replicas:
                self._short(
                    node,
                    f"{remote} of {replicas} replicas and {local} of 1 local append-only "
                    f"file synced within {self.wait.timeout_ms} ms",
                )
                return
        elif int(waited) < replicas:
            self._short(
                node, f"{int(waited)} of {replicas} replicas within {self.wait.timeout_ms} ms"
            )
            return
        self._outage.recovered()

    def _short(self, node: str, what: str) -> None:
        self.short += 1
        if self.on_short is not None:
            self.on_short()
        # A replica may have left (a failover, a resync): the next write looks again (the
        # count is kept, so that an unchanged one is not logged again).
        looked = self._looked.get(node)
        if looked is not None:
            self._looked[node] = (-math.inf, looked[1])
        self._outage.failed(what)


async def _evalsha(
    connection: Connection,
    script: AsyncScript,
    keys: Sequence[Any],
    args: Sequence[Any],
    *,
    asking: bool,
) -> Any:
    """The script's reply; loads it on the connection's node after a NOSCRIPT."""
    for loaded in (False, True):
        if asking:
            await connection.send_command("ASKING")
            await connection.read_response()
        await connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await connection.read_response()
        except rexc.NoScriptError as e:
            if loaded:
                raise StoreUnavailableError(
                    "Redis lost the script right after loading it: a failover in progress"
                ) from e
        # It did not run, so running it after the load is safe.
        await connection.send_command("SCRIPT", "LOAD", script.script)
        await connection.read_response()
    raise AssertionError("unreachable")  # pragma: no cover


async def _fresh(node: ClusterNode, connection: Connection) -> None:
    """Closes a connection of the node's free list that a failover left stale (marked
    for reconnect, or closed by the server): nothing has been sent on it yet, so it
    reconnects when the script goes out."""
    await node.disconnect_if_needed(connection)
    try:
        stale = connection.is_connected and await connection.can_read()
    except rexc.ConnectionError:
        stale = True
    if stale:
        await connection.disconnect()


async def _release(cluster: RedisCluster, node: ClusterNode, connection: Connection) -> None:
    if cluster.nodes_manager.nodes_cache.get(node.name) is node:
        node.release(connection)
    else:
        # A failover dropped the node: its pool is nobody's to close any more.
        await _close(connection)


def _server_of(connection: Connection) -> str:
    """The server a pooled connection talks to: a unix socket's path, or host:port."""
    path = getattr(connection, "path", "")
    return str(path) if path else f"{connection.host}:{connection.port}"


async def _close(connection: Connection) -> None:
    """Closes without waiting for the peer (a dying primary may never answer a TLS
    shutdown), and never raises: it runs where a script's reply is already in hand."""
    with contextlib.suppress(Exception):
        await connection.disconnect(nowait=True)


def _reread_slot_map(cluster: RedisCluster) -> None:
    # What the Cluster client does itself after a failed connection: the next command
    # (this module's next attempt, or any other) reads the slot map again first.
    cluster._initialize = True
