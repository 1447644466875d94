"""The names of the store's Redis keys: the only place they are spelled.

Every key of a node starts with ``lndmailbox:{<node hex>}:``: the node in braces is the keys'
hash tag, so all of one node's keys share one Redis Cluster slot and every script, which
touches a peer's keys and the node's together, runs on a Cluster as on one Redis. A peer's
keys follow as ``peer:<peer hex>:queue``. The table of keys, types and TTLs is
docs/redis-schema.md.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

_NODE_KEY = re.compile(
    r"lndmailbox:(?:\{((?:02|03)[0-9a-f]{64})\}|((?:02|03)[0-9a-f]{64})):(?:counters|heartbeat)"
)
"""Keys only a node with a mailbox has: how tools find the nodes a Redis serves (in the old
key layout too, so that ``mailboxctl migrate`` finds a node without being told)."""

ALL_MAILBOXES = "lndmailbox:*"
"""SCAN pattern matching the keys of every node's mailbox."""


def node_of(key: str) -> bytes | None:
    """The node whose mailbox ``key`` shows exists (its counters or heartbeat), else None."""
    match = _NODE_KEY.fullmatch(key)
    return bytes.fromhex(match.group(1) or match.group(2)) if match else None


class Keys:
    """The key names of one node's mailbox."""

    def __init__(self, node: bytes) -> None:
        self.prefix = f"lndmailbox:{{{node.hex()}}}:"

    def _peer_prefix(self, peer: bytes) -> str:
        return f"{self.prefix}peer:{peer.hex()}:"

    def queue_key(self, peer: bytes) -> str:
        return self._peer_prefix(peer) + "queue"

    def dedup_key(self, peer: bytes) -> str:
        return self._peer_prefix(peer) + "dedup"

    def unconfirmed_key(self, peer: bytes) -> str:
        """The peer's messages lnd accepted and not yet confirmed, in the order it took
        them (store/lua/delivered.lua)."""
        return self._peer_prefix(peer) + "unconfirmed"

    def webhooks_key(self, peer: bytes) -> str:
        """The peer's LSPS5 webhooks: app_name -> JSON of its URL and when it was set
        (store/webhooks.py)."""
        return self._peer_prefix(peer) + "webhooks"

    @property
    def webhook_clients_key(self) -> str:
        """The peers with LSPS5 webhooks (hex), scored by when each was last seen (ms)."""
        return self.prefix + "webhook_clients"

    @property
    def queue_pattern(self) -> str:
        """SCAN pattern matching every peer's queue of this node."""
        return self.prefix + "peer:*:queue"

    def peer_of_queue(self, key: str) -> bytes:
        """The peer whose queue ``key`` (one :attr:`queue_pattern` matched) is."""
        start, end = self.prefix + "peer:", ":queue"
        return bytes.fromhex(key[len(start) : -len(end)])

    @property
    def unconfirmed_pattern(self) -> str:
        """SCAN pattern matching every peer's unconfirmed list of this node."""
        return self.prefix + "peer:*:unconfirmed"

    def peer_of_unconfirmed(self, key: str) -> bytes:
        """The peer whose unconfirmed list ``key`` (one :attr:`unconfirmed_pattern` matched) is."""
        start, end = self.prefix + "peer:", ":unconfirmed"
        return bytes.fromhex(key[len(start) : -len(end)])

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
    def summary_key(self) -> str:
        """The current interval's summary of what peers' traffic caused (store/events.py)."""
        return self.prefix + "summary"

    @property
    def lock_key(self) -> str:
        return self.prefix + "lock"

    @property
    def heartbeat_key(self) -> str:
        return self.prefix + "heartbeat"

    @property
    def daemons_key(self) -> str:
        """Every running daemon's own heartbeat, leader and standbys (store/control.py)."""
        return self.prefix + "daemons"

    @property
    def delivery_requests_key(self) -> str:
        return self.prefix + "delivery-requests"

    @property
    def journal_key(self) -> str:
        """The journal of messages read from lnd and not yet decided (named ``inbox`` in
        Redis, as docs/redis-schema.md lists it)."""
        return self.prefix + "inbox"

    @property
    def decided_key(self) -> str:
        """The journal entries decided in the last few seconds (store/journal.py)."""
        return self.prefix + "decided"

    @property
    def key_pattern(self) -> str:
        """SCAN pattern matching every key of this node (and nothing of another node)."""
        return self.prefix + "*"

    def peer_keys(self, peer: bytes) -> list[str]:
        """KEYS of a per-peer script: queue, dedup, mail, usage, counters, events,
        unconfirmed."""
        return [
            self.queue_key(peer),
            self.dedup_key(peer),
            self.mail_key,
            self.usage_key,
            self.counters_key,
            self.events_key,
            self.unconfirmed_key(peer),
        ]


class OldLayoutKeys:
    """The key names of one node's mailbox as the releases before the node's hash tag wrote
    them (``lndmailbox:<node hex>:``, a peer's keys ``peer:{<peer hex>}:queue``), for
    moving such a mailbox into :class:`Keys` (store/migrate.py). Only ever on one Redis:
    those releases refused Cluster."""

    def __init__(self, node: bytes) -> None:
        self.prefix = f"lndmailbox:{node.hex()}:"

    def peer_keys(self, peer: bytes) -> list[str]:
        """A peer's queue, dedup hash and unconfirmed list."""
        start = f"{self.prefix}peer:{{{peer.hex()}}}:"
        return [start + "queue", start + "dedup", start + "unconfirmed"]

    @property
    def peer_pattern(self) -> str:
        """SCAN pattern matching every peer key of this node in the old layout."""
        return self.prefix + "peer:*"

    def peer_of(self, key: str) -> bytes | None:
        """The peer whose key ``key`` (one :attr:`peer_pattern` matched) is, if it is one."""
        match = _OLD_PEER_KEY.fullmatch(key[len(self.prefix) :])
        return bytes.fromhex(match.group(1)) if match else None

    def node_key(self, name: str) -> str:
        """The node-wide key ``name`` (``mail``, ``usage``, ``counters``, ``lock``...)."""
        return self.prefix + name

    @property
    def journal_key(self) -> str:
        """The old release's journal (``inbox``): same values, same script."""
        return self.node_key("inbox")

    @property
    def decided_key(self) -> str:
        return self.node_key("decided")


_OLD_PEER_KEY = re.compile(r"peer:\{((?:02|03)[0-9a-f]{64})\}:(?:queue|dedup|unconfirmed)")
