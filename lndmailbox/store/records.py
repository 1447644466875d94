"""What the store holds and hands out: the value types and the binary record codec.

Pure code (no Redis here): a queued message is one compact record (:func:`encode_record`),
its peer is the key it is queued under. The layout is drawn in :func:`encode_record` and in
docs/redis-schema.md; ``lua/peer.lua`` reads the same offsets.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import time
from dataclasses import dataclass

from lndmailbox.errors import ConfigError, RecordError

__all__ = [
    "HEADER_SIZE",
    "ID_SIZE",
    "PUBKEY_SIZE",
    "READABLE_VERSIONS",
    "RECORD_VERSION",
    "SENT_AT_SIZE",
    "Event",
    "JournalEntry",
    "Limits",
    "NewMessage",
    "PeerSummary",
    "PutResult",
    "PutStatus",
    "ServerInfo",
    "Stats",
    "StoredMessage",
    "Unconfirmed",
    "Webhook",
    "WebhookClient",
    "WebhookSet",
    "check_pubkey",
    "decode_record",
    "decode_unconfirmed",
    "decode_webhook",
    "encode_record",
    "encode_webhook",
    "message_id_bytes",
    "new_message_id",
    "record_id",
    "record_times",
]

log = logging.getLogger(__name__)

RECORD_VERSION = 2
"""First byte of every record this code writes. Version 1 (bytes 17-18 a u16 of attempts,
no redelivery count) is still read, and rewritten as version 2 by the first script that
changes the record; a record of any other version is refused."""
READABLE_VERSIONS = (1, 2)

SENT_AT_SIZE = 6
"""Bytes before the record in an unconfirmed entry: when lnd took it, in ms (u48)."""

PUBKEY_SIZE = 33
ID_SIZE = 10
"""Message ids are 10 bytes (20 hex digits): received_at in ms (6 bytes) + 4 random bytes."""

HEADER_SIZE = 1 + ID_SIZE + 6 + 2 + PUBKEY_SIZE
"""Bytes before path_key in a record: version, id, expires_at, attempts and redeliveries,
sender (52)."""

_MAX_U48 = (1 << 48) - 1
_MAX_U8 = 0xFF


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds (rounded down): the store's unit in Redis."""
    return math.floor(seconds * 1000)


def event_time(at: float | None = None) -> str:
    """An event's ``at`` field: seconds since the epoch, to the millisecond."""
    return f"{time.time() if at is None else at:.3f}"


def check_pubkey(what: str, key: bytes) -> None:
    """:class:`RecordError` unless ``key`` has the size of a compressed pubkey."""
    if len(key) != PUBKEY_SIZE:
        raise RecordError(f"{what} must be a 33-byte compressed pubkey, not {len(key)} bytes")


def message_id_bytes(message_id: str) -> bytes:
    """The binary id of a message id in hex (as records and the scripts hold it)."""
    try:
        return bytes.fromhex(message_id)
    except ValueError as e:
        raise RecordError(f"message id {message_id!r} is not hex") from e


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Limits:
    """How much the mailbox keeps and for how long (defaults justified in docs/redis-schema.md).

    ``ttl``: seconds a message is kept. ``max_messages_per_peer`` / ``max_bytes_per_peer``: when
    a new message would pass either, the peer's oldest messages give way. ``max_bytes_total``:
    when the node's queued bytes would pass it, the new message is rejected. Bytes are message
    bytes (path_key + onion). ``key_grace``: seconds Redis keeps a key after its last message
    expired, so that the sweep, not Redis, removes (and counts) expired messages.
    """

    ttl: float = 86_400.0
    max_messages_per_peer: int = 64
    max_bytes_per_peer: int = 256 * 1024
    max_bytes_total: int = 256 * 1024 * 1024
    key_grace: float = 3_600.0

    def __post_init__(self) -> None:
        if not self.ttl > 0:
            raise ConfigError(f"ttl must be positive, not {self.ttl}")
        for name in ("max_messages_per_peer", "max_bytes_per_peer", "max_bytes_total"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.key_grace < 0:
            raise ConfigError(f"key_grace must not be negative, not {self.key_grace}")


@dataclass(frozen=True)
class StoredMessage:
    """One queued onion message for ``peer`` (the next hop), received from ``sender``."""

    id: str
    peer: bytes
    sender: bytes
    path_key: bytes
    onion: bytes
    received_at: float
    expires_at: float
    attempts: int
    redeliveries: int = 0
    """Times lnd took it and it went back to the queue unconfirmed (its peer left within
    the confirmation window)."""

    @property
    def size(self) -> int:
        """Message bytes (path_key + onion): what the byte caps and totals count."""
        return len(self.path_key) + len(self.onion)

    def expired(self, now: float) -> bool:
        return ms(now) >= ms(self.expires_at)


@dataclass(frozen=True)
class Unconfirmed:
    """A message lnd accepted for its peer at ``sent_ms`` (Unix ms, as Redis holds it: the
    key of its confirmation), kept until it is confirmed, goes back to the queue, or is
    given up."""

    message: StoredMessage
    sent_ms: int

    @property
    def sent_at(self) -> float:
        """``sent_ms`` in Unix seconds."""
        return self.sent_ms / 1000


class PutStatus(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    """The same (path_key, onion) is already queued for this peer; ``message_id`` is its id."""
    REJECTED_FULL = "rejected_full"
    """The node's byte cap would be passed (or the message is larger than a peer's byte cap)."""
    REJECTED_DAMAGED = "rejected_damaged"
    """The peer's keys hold values of the wrong type (written by something else): untouched."""


@dataclass(frozen=True)
class NewMessage:
    """A message to queue for ``peer``, which arrived at ``now`` from ``sender``.

    ``id``: give one (:func:`new_message_id`) to write the same message again after an
    unknown outcome (a lost reply): the copy already stored is then reported STORED, not
    DUPLICATE. None: a fresh one."""

    peer: bytes
    sender: bytes
    path_key: bytes
    onion: bytes
    now: float
    id: str | None = None


@dataclass(frozen=True)
class PutResult:
    """What :meth:`Queues.put_many` did with one message.

    STORED: ``evicted`` are the ids of the peer's oldest messages that gave way to it
    (``evicted_messages`` the messages themselves, for events). DUPLICATE: the same
    (path_key, onion) is already queued; ``message_id`` is that one's. REJECTED_FULL: the
    node's byte cap would be passed. REJECTED_DAMAGED: the peer's keys hold the wrong types
    of value. Nothing changed for the last three. ``flooded``: STORED for a peer flooded past
    its cap, so summarized rather than published one by one (put.lua; a flooded peer's first
    store each interval is published, and is not ``flooded``)."""

    status: PutStatus
    message_id: str
    evicted: tuple[str, ...] = ()
    evicted_messages: tuple[StoredMessage, ...] = ()
    message: StoredMessage | None = None
    size: int = 0
    flooded: bool = False


@dataclass(frozen=True)
class Stats:
    """Node-wide totals of what is held: queued, or delivered and not yet confirmed
    (``unconfirmed`` of the ``messages``)."""

    peers_with_mail: int
    messages: int
    bytes: int
    oldest_received_at: float | None
    unconfirmed: int = 0


@dataclass(frozen=True)
class PeerSummary:
    """One peer with mail (queued or unconfirmed), for ``mailboxctl peers`` and metrics."""

    peer: bytes
    messages: int
    bytes: int
    oldest_received_at: float | None
    newest_received_at: float | None
    next_expiry: float | None
    """expires_at of the oldest message (the next to expire when the TTL is uniform)."""
    unconfirmed: int = 0
    """Of ``messages``, those lnd accepted and that wait for confirmation (the oldest)."""


@dataclass(frozen=True)
class Event:
    """One entry of the node's event stream. A ``summary`` entry (what peers' traffic
    caused in one interval) also has ``of`` (the kind it counts), ``count``, ``top`` (the
    peers or senders with the most, largest first), ``peers`` (how many there were) and
    ``since`` (when the interval began)."""

    stream_id: str
    kind: str
    peer: bytes | None
    message_id: str
    size: int
    reason: str
    at: float
    of: str = ""
    count: int = 0
    top: tuple[tuple[bytes, int], ...] = ()
    peers: int = 0
    since: float | None = None


@dataclass(frozen=True)
class Webhook:
    """One LSPS5 webhook of a client (bLIP-55): the URL its app ``app_name`` set, and when
    (Unix ms). The URL is a secret (lndmailbox/lsps/webhook_url.py): show its label."""

    app_name: str
    url: str
    registered_at_ms: int


@dataclass(frozen=True)
class WebhookClient:
    """A client with webhooks, as operators look at it: when it was last seen (Unix ms) and
    how many webhooks it has."""

    peer: bytes
    last_seen_ms: int
    webhooks: int


@dataclass(frozen=True)
class WebhookSet:
    """What :meth:`Webhooks.set` did. ``no_change``: the app_name had this very URL already
    (only the client's last seen was written). ``too_many``: a new app_name for a client
    at its maximum already (nothing written). ``num_webhooks``: the client's webhooks
    after the call."""

    num_webhooks: int
    no_change: bool = False
    too_many: bool = False


@dataclass(frozen=True)
class JournalEntry:
    """A message the daemon read from lnd and had not decided when it stopped."""

    entry: str
    received_at: float
    sender: bytes
    path_key: bytes
    onion: bytes
    encrypted_recipient_data: bytes = b""
    """As lnd 0.21 published it with the message (journal v3); empty before."""


@dataclass(frozen=True)
class ServerInfo:
    version: str
    used_memory: int


# --------------------------------------------------------------------------- records


def new_message_id(now: float) -> str:
    """A fresh id: received time in ms (sortable) then 4 random bytes, as 20 hex digits."""
    return (ms(now).to_bytes(6, "big") + os.urandom(ID_SIZE - 6)).hex()


def encode_record(msg: StoredMessage) -> bytes:
    """The bytes queued in Redis for ``msg`` (its ``peer`` is the key, not in the record).

    Layout (big-endian), version 2::

        0   1   version (0x02)
        1  10   id: received_at in ms (u48) + 4 random bytes
        11  6   expires_at in ms (u48)
        17  1   attempts lnd refused (u8)
        18  1   redeliveries (u8)
        19 33   sender pubkey (the peer that handed us the message)
        52 33   path_key
        85  ..  onion packet (the rest)

    Version 1 is the same but for bytes 17-18: attempts (u16), no redeliveries. Counts
    past 255 are held at 255. :class:`RecordError` for a message that does not fit.
    """
    id_bytes = message_id_bytes(msg.id)
    if len(id_bytes) != ID_SIZE:
        raise RecordError(f"message id must be {ID_SIZE} bytes, not {len(id_bytes)}")
    if len(msg.sender) != PUBKEY_SIZE or len(msg.path_key) != PUBKEY_SIZE:
        raise RecordError("sender and path_key must be 33-byte compressed points")
    if not msg.onion:
        raise RecordError("empty onion")
    expires = ms(msg.expires_at)
    if not 0 <= expires <= _MAX_U48:
        raise RecordError(f"expires_at out of range: {msg.expires_at}")
    return b"".join(
        (
            bytes((RECORD_VERSION,)),
            id_bytes,
            expires.to_bytes(6, "big"),
            bytes((min(msg.attempts, _MAX_U8), min(msg.redeliveries, _MAX_U8))),
            msg.sender,
            msg.path_key,
            msg.onion,
        )
    )


def decode_record(peer: bytes, data: bytes) -> StoredMessage:
    """The message in a queued record (version 1 or 2); :class:`RecordError` if it cannot
    be read."""
    if len(data) <= HEADER_SIZE + PUBKEY_SIZE:
        raise RecordError(f"record of {len(data)} bytes is too short for a message")
    if data[0] not in READABLE_VERSIONS:
        raise RecordError(
            f"record version {data[0]} is not one this store reads "
            f"({', '.join(map(str, READABLE_VERSIONS))})"
        )
    id_bytes = data[1 : 1 + ID_SIZE]
    if data[0] == 1:
        attempts, redeliveries = int.from_bytes(data[17:19], "big"), 0
    else:
        attempts, redeliveries = data[17], data[18]
    return StoredMessage(
        id=id_bytes.hex(),
        peer=peer,
        sender=data[19:52],
        path_key=data[52:85],
        onion=data[85:],
        received_at=int.from_bytes(id_bytes[:6], "big") / 1000,
        expires_at=int.from_bytes(data[11:17], "big") / 1000,
        attempts=attempts,
        redeliveries=redeliveries,
    )


def decode_unconfirmed(peer: bytes, data: bytes) -> Unconfirmed:
    """An entry of a peer's unconfirmed list: when lnd took it (ms, u48), then its record."""
    if len(data) <= SENT_AT_SIZE:
        raise RecordError(f"unconfirmed entry of {len(data)} bytes holds no record")
    sent_ms = int.from_bytes(data[:SENT_AT_SIZE], "big")
    return Unconfirmed(decode_record(peer, data[SENT_AT_SIZE:]), sent_ms)


def record_id(data: bytes) -> str:
    """The id of a record in hex: in the same place in every version, so it can be read
    from a record that does not decode."""
    return data[1 : 1 + ID_SIZE].hex()


def record_times(header: bytes) -> tuple[float, float]:
    """(received_at, expires_at) from the first 17 bytes of a record (any version read)."""
    if len(header) < 17 or header[0] not in READABLE_VERSIONS:
        raise RecordError(f"record header {header.hex()!r} is not one this store reads")
    return int.from_bytes(header[1:7], "big") / 1000, int.from_bytes(header[11:17], "big") / 1000


def encode_webhook(url: str, registered_at_ms: int) -> bytes:
    """A webhook's value in its client's hash: compact JSON ``{"url": ..., "at": ms}``
    (webhook_set.lua reads the ``url`` back to tell a replacement from no change)."""
    try:
        return json.dumps({"url": url, "at": registered_at_ms}, separators=(",", ":")).encode()
    except UnicodeEncodeError as e:  # a lone surrogate: no URL anyone can call
        raise RecordError(f"a webhook URL that is not text: {e}") from e


def decode_webhook(app_name: bytes, value: bytes) -> Webhook:
    """The webhook a client's hash holds under ``app_name``; :class:`RecordError` for a
    field or value this store did not write (not UTF-8, not the JSON object it writes)."""
    try:
        name = app_name.decode("utf-8")
        fields = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise RecordError(f"webhook {app_name!r} is unreadable: {e}") from e
    url = fields.get("url") if isinstance(fields, dict) else None
    at = fields.get("at") if isinstance(fields, dict) else None
    if not isinstance(url, str) or not isinstance(at, int) or isinstance(at, bool):
        # the value is not shown: it may hold a URL, a secret
        raise RecordError(f"webhook {app_name!r} is not the JSON of a url and a time")
    return Webhook(app_name=name, url=url, registered_at_ms=at)
