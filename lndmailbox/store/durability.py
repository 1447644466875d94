"""Waiting for replicas after the writes that matter: journal, put, removals after delivery.

A write the primary acknowledged and did not pass to a replica before it died is gone
after a failover. :class:`DurableWrites` runs such a write's script and then ``WAIT``
(or ``WAITAOF``) so that the caller hears back only once the replicas hold it, or the
timeout passed.

Rules that hold:

- The wait goes out on the write's own connection, in one pipeline with it (no MULTI):
  ``WAIT`` counts the replicas that hold the last write *of the connection that sends
  it*, so a wait on another pooled connection would prove nothing. On a Cluster the
  pipeline sends the wait to the node of the write's keys, where it runs on the same
  connection.
- A wait that comes back short (fewer replicas than asked within the timeout, or an
  error from the wait itself) never undoes or repeats the write: the write is done on
  the primary, and a second try would store or count it twice. It is counted
  (:attr:`DurableWrites.short`, the ``replica_wait_short`` metric) and logged: one
  WARNING when replicas stop confirming, one INFO when they confirm again (a spell
  that starts within :data:`WARN_EVERY` of the last WARNING is logged at debug).
- ``auto`` waits for as many replicas as the primary has connected (``INFO
  replication``, looked at every :data:`LOOK_EVERY` seconds): a standalone Redis or the
  embedded server is never waited on, and a replica that leaves stops costing the wait
  at the next look.
- Off (no replicas asked, no AOF), a write is the plain script call, as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript

from lndmailbox.store.client import RedisClient

log = logging.getLogger(__name__)

LOOK_EVERY = 5.0
"""Seconds between two looks at how many replicas the primary has (``auto``)."""
WARN_EVERY = 60.0
"""Seconds at least between two WARNINGs about short waits (a replica that keeps
falling behind and catching up logs its later spells at debug)."""


@dataclass(frozen=True)
class ReplicaWait:
    """What a write that matters waits for."""

    replicas: int | None = None
    """Replicas that must hold it: a number (0: none), or None for as many as the primary
    has connected (``auto``)."""
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


class DurableWrites:
    """Runs a store script, then waits for the replicas (see the module's rules)."""

    def __init__(self, redis: RedisClient, wait: ReplicaWait = OFF) -> None:
        self.redis = redis
        self.wait = wait
        self.short = 0
        """Writes whose wait came back short since start."""
        self.on_short: Callable[[], None] | None = None
        """Called once per short wait (the daemon's metric)."""
        self._connected: dict[str, tuple[float, int]] = {}
        self._short_since: float | None = None
        self._short_in_row = 0
        self._warned_at: float | None = None
        self._spell_warned = False

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The script's reply, once the wait is over (or at once when nothing is waited for)."""
        if self.wait.off:
            return await script(keys=keys, args=args)
        node = await self._node_of(keys)
        replicas = await self._replicas(node)
        if replicas == 0 and not self.wait.aof:
            return await script(keys=keys, args=args)
        reply, waited = await self._write_and_wait(script, keys, args, replicas, node)
        if waited is None:
            # The script was not loaded: it did not run, so running it again is safe.
            await self.redis.script_load(script.script)
            reply, waited = await self._write_and_wait(script, keys, args, replicas, node)
        self._check(waited, replicas)
        return reply

    async def _node_of(self, keys: Sequence[Any]) -> ClusterNode | None:
        """On a Cluster, the primary that holds the slot of ``keys`` (one slot: they all
        carry the node's hash tag), as the client's slot map says now."""
        if isinstance(self.redis, RedisCluster) and keys:
            await self.redis.initialize()  # the slot map, once (later calls return at once)
            return self.redis.get_node_from_key(keys[0])
        return None

    def _wait_command(self, replicas: int) -> tuple[Any, ...]:
        if self.wait.aof:
            return ("WAITAOF", 1, replicas, self.wait.timeout_ms)
        return ("WAIT", replicas, self.wait.timeout_ms)

    async def _write_and_wait(
        self,
        script: AsyncScript,
        keys: Sequence[Any],
        args: Sequence[Any],
        replicas: int,
        node: ClusterNode | None,
    ) -> tuple[Any, Any]:
        """(the script's reply, the wait's), or (None, None) when Redis lacked the script."""
        target = {} if node is None else {"target_nodes": node}
        async with self.redis.pipeline(transaction=False) as pipe:
            # Not pipe.evalsha, which a Cluster pipeline refuses; the command is the same.
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            pipe.execute_command(*self._wait_command(replicas), **target)
            reply, waited = await pipe.execute(raise_on_error=False)
        if isinstance(reply, rexc.NoScriptError):
            return None, None
        if isinstance(reply, Exception):
            raise reply
        return reply, waited

    async def _replicas(self, node: ClusterNode | None) -> int:
        if self.wait.replicas is not None:
            return self.wait.replicas
        name = "" if node is None else node.name
        now = time.monotonic()
        looked = self._connected.get(name)
        if looked is not None and now - looked[0] < LOOK_EVERY:
            return looked[1]
        target = {} if node is None else {"target_nodes": node}
        info = await self.redis.info("replication", **target)
        count = int(info.get("connected_slaves", 0))
        if looked is None or looked[1] != count:
            log.info("the Redis primary has %d replicas: writes that matter wait for them", count)
        self._connected[name] = (now, count)
        return count

    def _check(self, waited: Any, replicas: int) -> None:
        if isinstance(waited, Exception):
            self._short(f"the wait failed: {waited}")
        elif self.wait.aof:
            local, remote = (int(x) for x in waited)
            if local < 1 or remote < replicas:
                self._short(
                    f"{remote} of {replicas} replicas and {local} of 1 local append-only "
                    f"file synced within {self.wait.timeout_ms} ms"
                )
            else:
                self._confirmed()
        elif int(waited) < replicas:
            self._short(f"{int(waited)} of {replicas} replicas within {self.wait.timeout_ms} ms")
        else:
            self._confirmed()

    def _short(self, what: str) -> None:
        self.short += 1
        self._short_in_row += 1
        if self.on_short is not None:
            self.on_short()
        now = time.monotonic()
        if self._short_since is None:
            self._short_since = now
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            self._spell_warned = True
            log.warning(
                "Redis replicas did not confirm a write (%s); it stands on the primary "
                "and would be lost if the primary failed now; counting "
                "lndmailbox_replica_wait_short_total",
                what,
            )
        else:
            log.debug("Redis replicas did not confirm a write (%s)", what)

    def _confirmed(self) -> None:
        if self._short_since is not None:
            log.log(
                logging.INFO if self._spell_warned else logging.DEBUG,
                "Redis replicas confirm writes again after %.1fs and %d unconfirmed writes",
                time.monotonic() - self._short_since,
                self._short_in_row,
            )
        self._short_since = None
        self._short_in_row = 0
        self._spell_warned = False
