"""BOLT 1 encodings: BigSize, TLV streams, truncated integers and the byte formats' errors.

Pure code: bytes in, values out; nothing here touches the network or the node key, and the
only import from the package is :mod:`lndmailbox.errors`. :mod:`lndmailbox.onion.wire`
builds the BOLT 4 records on top of this module.

What lives here (facts from BOLT 1 "Type-Length-Value Format" and "Fundamental Types"):

* BigSize integers, minimally encoded (a reader rejects any other encoding).
* TLV streams: strictly increasing types, minimal type and length, an unknown even type
  fails the stream, unknown odd types are kept.
* Truncated unsigned integers (``tu32``, ``tu64``): big-endian with no leading zero byte.
* ``short_channel_id`` as an int, from its parts or ``BLOCKxTXxOUT`` and back.
* The shape check of a point: 33 bytes, prefix 2 or 3 (:mod:`lndmailbox.onion.reader`
  checks that points are on the curve).

Every decoding failure of the byte formats, here or in :mod:`lndmailbox.onion.wire`, is a
:class:`WireError` (an :class:`~lndmailbox.errors.OnionError`) whose ``reason`` says which
rule broke.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Final

from lndmailbox.errors import OnionError

__all__ = [
    "POINT_LEN",
    "BigSizeError",
    "LengthError",
    "PointError",
    "TlvError",
    "WireError",
    "check_point",
    "decode_bigsize",
    "decode_tlv_stream",
    "decode_tu",
    "encode_bigsize",
    "encode_tlv_stream",
    "encode_tu",
    "format_scid",
    "parse_scid",
    "scid",
]

POINT_LEN: Final = 33
"""A compressed secp256k1 point: prefix byte 2 or 3, then the 32-byte x coordinate."""


class WireError(OnionError):
    """Bytes that do not follow the wire format."""

    reason = "bad_encoding"


class BigSizeError(WireError):
    """A BigSize that is truncated or not minimally encoded."""

    reason = "bad_bigsize"


class TlvError(WireError):
    """A TLV stream that breaks BOLT 1's rules, or a known record with a malformed value."""

    reason = "bad_tlv"


class LengthError(WireError):
    """A message or packet whose length the format does not allow."""

    reason = "bad_length"


class PointError(WireError):
    """A 33-byte point field that is not a valid compressed secp256k1 point."""

    reason = "bad_point"


# --- BigSize -----------------------------------------------------------------------------

_U64_MAX: Final = (1 << 64) - 1


def encode_bigsize(n: int) -> bytes:
    """The minimal BigSize encoding of ``n`` (0 <= n < 2**64)."""
    if n < 0xFD:
        if n < 0:
            raise ValueError(f"BigSize cannot hold a negative number: {n}")
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "big")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "big")
    if n <= _U64_MAX:
        return b"\xff" + n.to_bytes(8, "big")
    raise ValueError(f"BigSize cannot hold {n}: more than 64 bits")


def decode_bigsize(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Read one BigSize at ``offset``; return ``(value, offset just past it)``.

    Raises :class:`BigSizeError` when the data ends early or the encoding is not minimal.
    """
    if offset < 0 or offset >= len(data):
        raise BigSizeError("BigSize: no byte to read")
    first = data[offset]
    if first < 0xFD:
        return first, offset + 1
    if first == 0xFD:
        end, minimum = offset + 3, 0xFD
    elif first == 0xFE:
        end, minimum = offset + 5, 0x10000
    else:
        end, minimum = offset + 9, 0x100000000
    if end > len(data):
        raise BigSizeError("BigSize: truncated")
    value = int.from_bytes(data[offset + 1 : end], "big")
    if value < minimum:
        raise BigSizeError("BigSize: not minimally encoded")
    return value, end


# --- TLV streams -------------------------------------------------------------------------


def encode_tlv_stream(records: Mapping[int, bytes]) -> bytes:
    """Serialise ``records`` (type -> value) in increasing type order."""
    parts: list[bytes] = []
    for typ in sorted(records):
        value = records[typ]
        parts.append(encode_bigsize(typ))
        parts.append(encode_bigsize(len(value)))
        parts.append(value)
    return b"".join(parts)


def decode_tlv_stream(data: bytes, known_even: Container[int] = frozenset()) -> dict[int, bytes]:
    """Parse a whole TLV stream into ``{type: value}`` (every record, known or odd).

    BOLT 1's reader rules: types strictly increasing, type and length minimally encoded,
    no length past the end, an even type not in ``known_even`` fails the stream.
    Raises :class:`TlvError` (or its :class:`BigSizeError` for a broken BigSize).
    """
    records: dict[int, bytes] = {}
    end = len(data)
    pos = 0
    last = -1
    while pos < end:
        # The common one-byte type and length are read inline: this runs on every peel.
        typ = data[pos]
        if typ < 0xFD:
            pos += 1
        else:
            try:
                typ, pos = decode_bigsize(data, pos)
            except BigSizeError as e:
                raise TlvError(f"TLV type: {e}") from e
        if typ <= last:
            raise TlvError(f"TLV type {typ} after {last}: types must strictly increase")
        if pos >= end:
            raise TlvError(f"TLV type {typ}: missing length")
        length = data[pos]
        if length < 0xFD:
            pos += 1
        else:
            try:
                length, pos = decode_bigsize(data, pos)
            except BigSizeError as e:
                raise TlvError(f"TLV type {typ} length: {e}") from e
        if length > end - pos:
            raise TlvError(f"TLV type {typ}: length {length} runs past the end")
        if not typ & 1 and typ not in known_even:
            raise TlvError(f"TLV type {typ}: unknown even type")
        records[typ] = data[pos : pos + length]
        pos += length
        last = typ
    return records


# --- small field helpers -----------------------------------------------------------------


def check_point(value: bytes, what: str) -> bytes:
    """``value`` if it has the shape of a compressed point (33 bytes, prefix 2 or 3).

    Raises :class:`PointError` naming ``what`` otherwise; :mod:`lndmailbox.onion.reader`
    checks that the point is on the curve.
    """
    if len(value) != POINT_LEN or value[0] not in (2, 3):
        raise PointError(f"{what}: not a 33-byte compressed point")
    return value


def decode_tu(value: bytes, max_len: int, what: str) -> int:
    """A truncated unsigned integer: at most ``max_len`` bytes, no leading zero."""
    if len(value) > max_len:
        raise TlvError(f"{what}: {len(value)} bytes, at most {max_len} allowed")
    if value[:1] == b"\x00":
        raise TlvError(f"{what}: truncated integer with a leading zero")
    return int.from_bytes(value, "big")


def encode_tu(n: int, max_len: int) -> bytes:
    """``n`` as a truncated unsigned integer of at most ``max_len`` bytes (0 is empty)."""
    if n < 0 or n >= 1 << (8 * max_len):
        raise ValueError(f"{n} does not fit in {max_len} bytes")
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def scid(block: int, tx: int, output: int) -> int:
    """A ``short_channel_id`` as an int from its block height, tx index and output index."""
    if not (0 <= block < 1 << 24 and 0 <= tx < 1 << 24 and 0 <= output < 1 << 16):
        raise ValueError(f"short_channel_id parts out of range: {block}x{tx}x{output}")
    return block << 40 | tx << 16 | output


def parse_scid(text: str) -> int:
    """``"BLOCKxTXxOUT"`` (the form BOLT 7 and the vectors use) to an int."""
    parts = text.split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a short_channel_id of the form BLOCKxTXxOUT: {text!r}")
    return scid(int(parts[0]), int(parts[1]), int(parts[2]))


def format_scid(value: int) -> str:
    """An int ``short_channel_id`` as ``"BLOCKxTXxOUT"``."""
    return f"{value >> 40}x{(value >> 16) & 0xFFFFFF}x{value & 0xFFFF}"
