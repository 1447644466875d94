"""The store: the mailbox's state in one Redis, namespaced by the lnd node it serves.

:class:`Store` owns the client, the node's namespace (:class:`Keys`), the limits, and one
part per job, reached as attributes:

* ``queues``: the peers' messages (put, peek, deliver, sweep, purge, stats);
* ``allowlist``: the peers mail is held for;
* ``events``: the counters and the event stream;
* ``control``: the daemon lock, heartbeat and delivery requests;
* ``journal``: messages read from lnd and not yet decided;
* ``webhooks``: the clients' LSPS5 webhooks and when each client was last seen;
* ``server``: what the Redis server reports.

Rules that hold across the parts:

* Only this package names a Redis key or runs a Redis command.
* The store never reads the wall clock for a decision: every call that needs the time takes
  ``now`` (Unix seconds). Redis key TTLs are set relative to that ``now`` (the time left
  plus a grace period), so they are right whatever clock the caller uses.
* The store counts nothing on its own behalf except messages whose keys Redis expired
  before any sweep saw them (added to the ``expired`` counter by the sweep that notices);
  everything else is counted by the caller from the results.
* The scripts touch one peer's keys and the node's keys together: every key of a node
  carries the node's hash tag (store/keys.py), so that is atomic on one Redis and on a
  Redis Cluster alike.
"""

from __future__ import annotations

import logging
from typing import Any

from lndmailbox.store.allowlist import Allowlist
from lndmailbox.store.client import RedisClient, as_str, check_binary, connect, redis_errors
from lndmailbox.store.control import Control
from lndmailbox.store.durability import OFF, DurableWrites, ReplicaWait
from lndmailbox.store.events import Events, stream_bound
from lndmailbox.store.journal import Journal
from lndmailbox.store.keys import ALL_MAILBOXES, Keys, OldLayoutKeys, node_of
from lndmailbox.store.migrate import LayoutMigration
from lndmailbox.store.queues import Queues
from lndmailbox.store.records import Limits, check_pubkey
from lndmailbox.store.server import Server
from lndmailbox.store.webhooks import Webhooks

log = logging.getLogger(__name__)

_NEVER = 10**15
"""An event stream bound (entries, seconds) no traffic reaches: no trimming."""


class Store:
    """One node's mailbox in one Redis (a server, a Sentinel group's primary or a Cluster).

    ``redis`` must return bytes (``decode_responses=False``, the default): records are binary.
    """

    def __init__(
        self,
        redis: RedisClient,
        node: bytes,
        limits: Limits | None = None,
        *,
        events_maxlen: int | None = None,
        wait: ReplicaWait = OFF,
    ) -> None:
        check_pubkey("node", node)
        check_binary(redis)
        self.redis = redis
        self.node = node
        self.limits = limits or Limits()
        # Without the daemon's limits (mailboxctl) a write must not trim by other caps or
        # another TTL than the daemon's: it leaves the trimming to the daemon.
        keep = self.limits.ttl if limits is not None else _NEVER
        if events_maxlen is None:
            events_maxlen = stream_bound(self.limits) if limits is not None else _NEVER
        self.events_maxlen = events_maxlen
        self.keys = Keys(node)
        self.prefix = self.keys.prefix
        self._owns_client = False
        self.durable = DurableWrites(redis, wait)
        """The writes that matter, waiting for the replicas as ``wait`` says."""
        self.queues = Queues(
            redis,
            self.keys,
            self.limits,
            events_maxlen=events_maxlen,
            events_keep=keep,
            durable=self.durable,
        )
        self.allowlist = Allowlist(redis, self.keys)
        self.events = Events(redis, self.keys, events_maxlen=events_maxlen, events_keep=keep)
        self.control = Control(redis, self.keys)
        self.journal = Journal(redis, self.keys, self.limits, self.durable)
        self.old_journal = Journal(redis, OldLayoutKeys(node), self.limits, self.durable)
        """The old release's journal of this node (its ``inbox`` and ``decided``): where a
        standby of this release journals while a daemon of the old release leads
        (daemon/old_layout.py), so that the old leader's own decisions cover it."""
        self.webhooks = Webhooks(redis, self.keys, durable=self.durable)
        self.server = Server(redis, self.keys)
        self.layout = LayoutMigration(redis, self.keys, node)

    @classmethod
    def from_url(
        cls,
        url: str,
        node: bytes,
        limits: Limits | None = None,
        *,
        max_connections: int = 64,
        wait: ReplicaWait = OFF,
        **redis_kwargs: Any,
    ) -> Store:
        """A store on its own connection pool: ``redis://[[user]:password@]host:port/db``,
        ``rediss://`` for TLS (``ssl_*`` keyword arguments, or ``?ssl_ca_certs=...`` in the
        URL), ``unix://path?db=0``, ``redis+cluster://`` and ``redis+sentinel://``
        (store/urls.py). At most ``max_connections`` are opened (per Cluster node); more
        concurrent calls wait for one (up to ``pool_timeout`` seconds, default 20) on a
        server or Sentinel's primary, and fail as unavailable on a Cluster.
        :meth:`aclose` closes the pool. ``wait``: what the writes that matter wait for."""
        client = connect(url, max_connections=max_connections, **redis_kwargs)
        store = cls(client, node, limits, wait=wait)
        store._owns_client = True
        return store

    @staticmethod
    @redis_errors
    async def nodes_at(url: str) -> list[bytes]:
        """The lnd nodes with a mailbox in the Redis at ``url`` (those with counters or a
        running daemon's heartbeat), sorted. One SCAN over the keyspace (every primary's on a
        Cluster): for tools, not for the daemon."""
        client = connect(url, max_connections=2)
        nodes: set[bytes] = set()
        try:
            async for key in client.scan_iter(match=ALL_MAILBOXES, count=1000):
                node = node_of(as_str(key))
                if node is not None:
                    nodes.add(node)
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
