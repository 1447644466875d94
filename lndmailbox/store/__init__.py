"""The mailbox's Redis store: the only package that names a Redis key or runs a command.

What lives where (the full table, TTLs and redis-cli recipes are in docs/redis-schema.md):

* one list per peer, ``lndmailbox:{<node>}:peer:<peer>:queue``, oldest message first, each
  element a compact binary record (:func:`encode_record`: version byte, id, expiry,
  attempts, sender, path_key, onion);
* beside it ``...:peer:<peer>:dedup``, a hash from a digest of (path_key, onion) to the id, so
  the same message is queued once;
* node-wide: ``lndmailbox:{<node>}:mail`` (a sorted set of the peers with mail, scored by the
  earliest expiry, which the sweep walks), ``:usage`` (message and byte totals, per peer and
  for the node, which the caps read), the allowlist, the counters, the event stream, the
  daemon's lock and heartbeat, the journal and the delivery requests;
* LSPS5 webhooks: ``...:peer:<peer>:webhooks``, a hash of app_name -> JSON of the URL and
  when it was set, and node-wide ``webhook_clients``, the peers with webhooks scored by
  when each was last seen.

Modules: ``records`` (value types and the record codec), ``keys`` (key names), ``lua``
(the scripts in ``lua/*.lua``), ``urls`` (what a ``--redis-url`` names: one server, a
Cluster, a Sentinel group), ``client`` (connections, error mapping, replies), one
module per part of :class:`Store` (``queues``, ``allowlist``, ``events``, ``control``,
``journal``, ``webhooks``, ``server``, and ``migrate``: the move from the old key layout),
``durability`` (the writes that matter waiting for the replicas), ``handle``
(:class:`Store`), ``transfer`` (a mailbox moved to another Redis), ``embedded`` (a Redis server
process of our own), ``settings`` (which Redis and which limits the settings ask for)
and ``audit`` (the tests' invariant check).
"""

from __future__ import annotations

from lndmailbox.store.allowlist import Allowlist
from lndmailbox.store.client import refused_for_memory
from lndmailbox.store.control import Control, LockRenewal
from lndmailbox.store.durability import DurableWrites, ReplicaWait
from lndmailbox.store.embedded import (
    RedisServer,
    embedded_redis,
    embedded_socket_path,
    find_server_binary,
    free_port,
)
from lndmailbox.store.events import Events, NewEvent
from lndmailbox.store.handle import Store
from lndmailbox.store.journal import Journal, NewEntry
from lndmailbox.store.keys import Keys
from lndmailbox.store.migrate import LayoutMigration, LayoutMove
from lndmailbox.store.queues import Queues
from lndmailbox.store.records import (
    HEADER_SIZE,
    RECORD_VERSION,
    Event,
    JournalEntry,
    Limits,
    NewMessage,
    PeerSummary,
    PutResult,
    PutStatus,
    ServerInfo,
    Stats,
    StoredMessage,
    Unconfirmed,
    Webhook,
    WebhookClient,
    WebhookSet,
    decode_record,
    encode_record,
    new_message_id,
)
from lndmailbox.store.server import Server
from lndmailbox.store.settings import limits_for, redis_url_for, replica_wait_for
from lndmailbox.store.transfer import Copied, move_mailbox
from lndmailbox.store.urls import RedisTarget, parse_redis_url
from lndmailbox.store.webhooks import Webhooks

__all__ = [
    "HEADER_SIZE",
    "RECORD_VERSION",
    "Allowlist",
    "Control",
    "Copied",
    "DurableWrites",
    "Event",
    "Events",
    "Journal",
    "JournalEntry",
    "Keys",
    "LayoutMigration",
    "LayoutMove",
    "Limits",
    "LockRenewal",
    "NewEntry",
    "NewEvent",
    "NewMessage",
    "PeerSummary",
    "PutResult",
    "PutStatus",
    "Queues",
    "RedisServer",
    "RedisTarget",
    "ReplicaWait",
    "Server",
    "ServerInfo",
    "Stats",
    "Store",
    "StoredMessage",
    "Unconfirmed",
    "Webhook",
    "WebhookClient",
    "WebhookSet",
    "Webhooks",
    "decode_record",
    "embedded_redis",
    "embedded_socket_path",
    "encode_record",
    "find_server_binary",
    "free_port",
    "limits_for",
    "move_mailbox",
    "new_message_id",
    "parse_redis_url",
    "redis_url_for",
    "refused_for_memory",
    "replica_wait_for",
]
