"""BOLT 4 records of onion messages: ``onion_message``, encrypted data, payloads, paths.

Pure code: bytes in, frozen dataclasses out; nothing here touches the network or the node
key, and the only import from the package is :mod:`lndmailbox.onion.tlv`, the BOLT 1
encodings (BigSize, TLV streams, truncated integers) these records are made of.

What lives here (facts from BOLT 4 "Onion Messages", "Route Blinding"):

* ``onion_message`` (type 513): ``path_key`` (33-byte point), u16 ``len``, the
  ``onion_message_packet``, then an optional extension TLV stream.
* ``encrypted_data_tlv`` (:class:`EncryptedData`): what a blinded hop reads after decrypting
  ``encrypted_recipient_data``.
* ``onionmsg_tlv`` (:class:`OnionMessagePayload`): one hop's onion payload.
* ``blinded_path`` (:class:`BlindedPath`), the value of ``reply_path``.

Every decoding failure is a :class:`~lndmailbox.onion.tlv.WireError` (an
:class:`~lndmailbox.errors.OnionError`) whose ``reason`` says which rule broke. Points are
checked for shape only here (33 bytes, prefix 2 or 3); :mod:`lndmailbox.onion.reader`
checks that they are on the curve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from lndmailbox.onion.tlv import (
    POINT_LEN,
    LengthError,
    TlvError,
    check_point,
    decode_tlv_stream,
    decode_tu,
    encode_tlv_stream,
    encode_tu,
)

__all__ = [
    "ENCRYPTED_DATA_KNOWN_EVEN",
    "HMAC_LEN",
    "MAX_ONION_PACKET_LEN",
    "MIN_ONION_PACKET_LEN",
    "ONIONMSG_KNOWN_EVEN",
    "ONIONMSG_PAYLOAD_MIN_TYPE",
    "ONION_MESSAGE_TYPE",
    "BlindedHop",
    "BlindedPath",
    "EncryptedData",
    "OnionMessage",
    "OnionMessagePayload",
    "PaymentConstraints",
    "PaymentRelay",
]

ONION_MESSAGE_TYPE: Final = 513
"""Lightning message type of ``onion_message``."""

HMAC_LEN: Final = 32
MIN_ONION_PACKET_LEN: Final = 1 + POINT_LEN + 1 + HMAC_LEN
"""Shortest ``onion_message_packet`` with room for the version, the key, the HMAC and at
least one byte of ``onionmsg_payloads``."""
MAX_ONION_PACKET_LEN: Final = 0xFFFF
"""``len`` is a u16: no packet can be longer."""

# encrypted_data_tlv record types (BOLT 4 "Route Blinding").
TLV_PADDING: Final = 1
TLV_SHORT_CHANNEL_ID: Final = 2
TLV_NEXT_NODE_ID: Final = 4
TLV_PATH_ID: Final = 6
TLV_NEXT_PATH_KEY_OVERRIDE: Final = 8
TLV_PAYMENT_RELAY: Final = 10
TLV_PAYMENT_CONSTRAINTS: Final = 12
TLV_ALLOWED_FEATURES: Final = 14
ENCRYPTED_DATA_KNOWN_EVEN: Final = frozenset({2, 4, 6, 8, 10, 12, 14})
_ENCRYPTED_DATA_FIELDS: Final = ENCRYPTED_DATA_KNOWN_EVEN | {TLV_PADDING}

# onionmsg_tlv record types (BOLT 4 "Onion Messages").
TLV_REPLY_PATH: Final = 2
TLV_ENCRYPTED_RECIPIENT_DATA: Final = 4
ONIONMSG_PAYLOAD_MIN_TYPE: Final = 64
"""Types from 64 up are payloads for the final hop (64 invoice_request, 66 invoice,
68 invoice_error)."""
ONIONMSG_KNOWN_EVEN: Final = frozenset({2, 4, 64, 66, 68})


# --- encrypted_data_tlv ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentRelay:
    """``payment_relay`` (type 10): fees and delta for a blinded payment hop."""

    cltv_expiry_delta: int
    fee_proportional_millionths: int
    fee_base_msat: int = 0

    def encode(self) -> bytes:
        return (
            self.cltv_expiry_delta.to_bytes(2, "big")
            + self.fee_proportional_millionths.to_bytes(4, "big")
            + encode_tu(self.fee_base_msat, 4)
        )

    @classmethod
    def decode(cls, value: bytes) -> PaymentRelay:
        if not 6 <= len(value) <= 10:
            raise TlvError(f"payment_relay: {len(value)} bytes")
        return cls(
            int.from_bytes(value[0:2], "big"),
            int.from_bytes(value[2:6], "big"),
            decode_tu(value[6:], 4, "payment_relay.fee_base_msat"),
        )


@dataclass(frozen=True, slots=True)
class PaymentConstraints:
    """``payment_constraints`` (type 12): limits on a blinded payment."""

    max_cltv_expiry: int
    htlc_minimum_msat: int = 0

    def encode(self) -> bytes:
        return self.max_cltv_expiry.to_bytes(4, "big") + encode_tu(self.htlc_minimum_msat, 8)

    @classmethod
    def decode(cls, value: bytes) -> PaymentConstraints:
        if not 4 <= len(value) <= 12:
            raise TlvError(f"payment_constraints: {len(value)} bytes")
        return cls(
            int.from_bytes(value[0:4], "big"),
            decode_tu(value[4:], 8, "payment_constraints.htlc_minimum_msat"),
        )


def _frozen_map(records: Mapping[int, bytes]) -> Mapping[int, bytes]:
    return MappingProxyType(dict(records))


@dataclass(frozen=True)
class EncryptedData:
    """``encrypted_data_tlv``: the instructions a blinded hop decrypts.

    Every field BOLT 4 defines today; ``None`` means the record is absent. ``padding`` and
    ``allowed_features`` keep their raw bytes (an empty value is a present record).
    ``unknown`` holds other records: decoding keeps unknown odd ones; encoding writes
    whatever it is given (tests use that to craft invalid data).
    """

    padding: bytes | None = None
    short_channel_id: int | None = None
    next_node_id: bytes | None = None
    path_id: bytes | None = None
    next_path_key_override: bytes | None = None
    payment_relay: PaymentRelay | None = None
    payment_constraints: PaymentConstraints | None = None
    allowed_features: bytes | None = None
    unknown: Mapping[int, bytes] = field(default_factory=dict)

    def records(self) -> dict[int, bytes]:
        """The record set ``{type: value}`` this value encodes to."""
        out: dict[int, bytes] = dict(self.unknown)
        if self.padding is not None:
            out[TLV_PADDING] = self.padding
        if self.short_channel_id is not None:
            out[TLV_SHORT_CHANNEL_ID] = self.short_channel_id.to_bytes(8, "big")
        if self.next_node_id is not None:
            out[TLV_NEXT_NODE_ID] = self.next_node_id
        if self.path_id is not None:
            out[TLV_PATH_ID] = self.path_id
        if self.next_path_key_override is not None:
            out[TLV_NEXT_PATH_KEY_OVERRIDE] = self.next_path_key_override
        if self.payment_relay is not None:
            out[TLV_PAYMENT_RELAY] = self.payment_relay.encode()
        if self.payment_constraints is not None:
            out[TLV_PAYMENT_CONSTRAINTS] = self.payment_constraints.encode()
        if self.allowed_features is not None:
            out[TLV_ALLOWED_FEATURES] = self.allowed_features
        return out

    def encode(self) -> bytes:
        return encode_tlv_stream(self.records())

    @classmethod
    def decode(cls, data: bytes) -> EncryptedData:
        """Parse a decrypted ``encrypted_data_tlv``; raises :class:`TlvError`/:class:`PointError`."""
        return cls.from_records(decode_tlv_stream(data, ENCRYPTED_DATA_KNOWN_EVEN))

    @classmethod
    def from_records(cls, records: Mapping[int, bytes]) -> EncryptedData:
        """Interpret an already parsed record set, checking each known value's format."""
        scid_value: int | None = None
        raw = records.get(TLV_SHORT_CHANNEL_ID)
        if raw is not None:
            if len(raw) != 8:
                raise TlvError(f"short_channel_id: {len(raw)} bytes, expected 8")
            scid_value = int.from_bytes(raw, "big")
        next_node_id = records.get(TLV_NEXT_NODE_ID)
        if next_node_id is not None:
            check_point(next_node_id, "next_node_id")
        override = records.get(TLV_NEXT_PATH_KEY_OVERRIDE)
        if override is not None:
            check_point(override, "next_path_key_override")
        raw = records.get(TLV_PAYMENT_RELAY)
        relay = None if raw is None else PaymentRelay.decode(raw)
        raw = records.get(TLV_PAYMENT_CONSTRAINTS)
        constraints = None if raw is None else PaymentConstraints.decode(raw)
        unknown = {t: v for t, v in records.items() if t not in _ENCRYPTED_DATA_FIELDS}
        return cls(
            padding=records.get(TLV_PADDING),
            short_channel_id=scid_value,
            next_node_id=next_node_id,
            path_id=records.get(TLV_PATH_ID),
            next_path_key_override=override,
            payment_relay=relay,
            payment_constraints=constraints,
            allowed_features=records.get(TLV_ALLOWED_FEATURES),
            unknown=_frozen_map(unknown),
        )


# --- blinded_path ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlindedHop:
    """``blinded_path_hop``: a blinded node id and the data encrypted for that node."""

    blinded_node_id: bytes
    encrypted_recipient_data: bytes

    def encode(self) -> bytes:
        return (
            self.blinded_node_id
            + len(self.encrypted_recipient_data).to_bytes(2, "big")
            + self.encrypted_recipient_data
        )


@dataclass(frozen=True, slots=True)
class BlindedPath:
    """``blinded_path``: the introduction node, its first path key and the blinded hops.

    ``first_node_id`` is a 33-byte node id, or the 9-byte ``sciddir`` form (direction byte
    0 or 1 and a short_channel_id) BOLT 1 calls ``sciddir_or_pubkey``.
    """

    first_node_id: bytes
    first_path_key: bytes
    hops: tuple[BlindedHop, ...]

    def encode(self) -> bytes:
        if len(self.hops) > 255:
            raise ValueError("a blinded path holds at most 255 hops")
        return b"".join(
            [self.first_node_id, self.first_path_key, bytes((len(self.hops),))]
            + [hop.encode() for hop in self.hops]
        )

    @classmethod
    def decode(cls, data: bytes) -> BlindedPath:
        """Parse a whole ``blinded_path`` (nothing may follow it)."""
        path, end = cls.decode_from(data, 0)
        if end != len(data):
            raise TlvError(f"blinded_path: {len(data) - end} bytes after the path")
        return path

    @classmethod
    def decode_from(cls, data: bytes, offset: int) -> tuple[BlindedPath, int]:
        """Parse one ``blinded_path`` at ``offset``; return it and the offset after it."""
        if offset >= len(data):
            raise TlvError("blinded_path: empty")
        kind = data[offset]
        id_len = 9 if kind in (0, 1) else POINT_LEN
        first_node_id = data[offset : offset + id_len]
        if len(first_node_id) != id_len:
            raise TlvError("blinded_path: truncated first_node_id")
        if id_len == POINT_LEN:
            check_point(first_node_id, "blinded_path.first_node_id")
        pos = offset + id_len
        first_path_key = check_point(data[pos : pos + POINT_LEN], "blinded_path.first_path_key")
        pos += POINT_LEN
        if pos >= len(data):
            raise TlvError("blinded_path: missing num_hops")
        count = data[pos]
        pos += 1
        hops: list[BlindedHop] = []
        for _ in range(count):
            node = check_point(data[pos : pos + POINT_LEN], "blinded_path.blinded_node_id")
            pos += POINT_LEN
            if pos + 2 > len(data):
                raise TlvError("blinded_path: truncated enclen")
            enclen = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
            if pos + enclen > len(data):
                raise TlvError("blinded_path: encrypted_recipient_data runs past the end")
            hops.append(BlindedHop(node, data[pos : pos + enclen]))
            pos += enclen
        return cls(first_node_id, first_path_key, tuple(hops)), pos

    def points(self) -> list[bytes]:
        """Every 33-byte point in the path (for a caller that checks them on the curve)."""
        out = [self.first_path_key] + [hop.blinded_node_id for hop in self.hops]
        if len(self.first_node_id) == POINT_LEN:
            out.insert(0, self.first_node_id)
        return out


# --- onionmsg_tlv ------------------------------------------------------------------------


@dataclass(frozen=True)
class OnionMessagePayload:
    """``onionmsg_tlv``: one hop's payload inside the onion.

    ``records`` holds every record other than ``reply_path`` and
    ``encrypted_recipient_data``: final-hop payloads (types >= 64) and unknown odd ones.
    """

    encrypted_recipient_data: bytes | None = None
    reply_path: BlindedPath | None = None
    records: Mapping[int, bytes] = field(default_factory=dict)

    def to_records(self) -> dict[int, bytes]:
        out = dict(self.records)
        if self.reply_path is not None:
            out[TLV_REPLY_PATH] = self.reply_path.encode()
        if self.encrypted_recipient_data is not None:
            out[TLV_ENCRYPTED_RECIPIENT_DATA] = self.encrypted_recipient_data
        return out

    def encode(self) -> bytes:
        return encode_tlv_stream(self.to_records())

    @classmethod
    def decode(cls, data: bytes) -> OnionMessagePayload:
        records = decode_tlv_stream(data, ONIONMSG_KNOWN_EVEN)
        raw_reply = records.pop(TLV_REPLY_PATH, None)
        reply = None if raw_reply is None else BlindedPath.decode(raw_reply)
        erd = records.pop(TLV_ENCRYPTED_RECIPIENT_DATA, None)
        return cls(erd, reply, _frozen_map(records))


# --- onion_message -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OnionMessage:
    """The ``onion_message`` body: the path key and the onion packet for the receiving peer."""

    path_key: bytes
    onion: bytes

    def encode(self) -> bytes:
        """``path_key || u16 len || onion_message_packet`` (without the 2-byte type)."""
        return self.path_key + len(self.onion).to_bytes(2, "big") + self.onion

    def encode_with_type(self) -> bytes:
        """The whole Lightning message, type 513 first."""
        return ONION_MESSAGE_TYPE.to_bytes(2, "big") + self.encode()

    @classmethod
    def decode(cls, data: bytes) -> OnionMessage:
        """Parse a body (without the type).

        A trailing BOLT 1 extension TLV stream is checked (no even records) and dropped.
        Raises :class:`LengthError`, :class:`PointError` or :class:`TlvError`.
        """
        if len(data) < POINT_LEN + 2:
            raise LengthError(f"onion_message: {len(data)} bytes is too short")
        path_key = check_point(data[:POINT_LEN], "onion_message.path_key")
        length = int.from_bytes(data[POINT_LEN : POINT_LEN + 2], "big")
        end = POINT_LEN + 2 + length
        if end > len(data):
            raise LengthError(f"onion_message: len {length} but {len(data) - POINT_LEN - 2} bytes")
        if length < MIN_ONION_PACKET_LEN:
            raise LengthError(f"onion_message: packet of {length} bytes is too short")
        if end < len(data):
            decode_tlv_stream(data[end:])
        return cls(path_key, data[POINT_LEN + 2 : end])

    @classmethod
    def decode_with_type(cls, data: bytes) -> OnionMessage:
        """Parse a whole message starting with its 2-byte type, which must be 513."""
        if len(data) < 2 or int.from_bytes(data[:2], "big") != ONION_MESSAGE_TYPE:
            raise LengthError("not an onion_message (type 513)")
        return cls.decode(data[2:])
