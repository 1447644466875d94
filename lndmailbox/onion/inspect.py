"""What an onion_message shows to someone without the recipient's key.

``mailboxctl show --decode`` and ``mailboxctl decode`` read messages with it: the body with
or without its 2-byte type, and the packet's header fields (version, ephemeral key, the
length of the encrypted hop payloads, the HMAC). Pure: bytes in, values out (and, like
the rest of :mod:`lndmailbox.onion`, no logger: nothing here has anything to tell).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lndmailbox.errors import OnionError
from lndmailbox.onion.primitives import point
from lndmailbox.onion.tlv import POINT_LEN, PointError
from lndmailbox.onion.wire import HMAC_LEN, MIN_ONION_PACKET_LEN, ONION_MESSAGE_TYPE, OnionMessage

__all__ = ["Decoded", "packet_fields", "parse_onion_message"]

_TYPE_PREFIX = ONION_MESSAGE_TYPE.to_bytes(2, "big")


@dataclass(frozen=True)
class Decoded:
    """An onion_message as given: with its type or without, and its extension TLV bytes."""

    message: OnionMessage
    typed: bool
    extension: bytes


def parse_onion_message(data: bytes) -> Decoded:
    """The body of an onion_message, with or without the 2-byte type 513 in front.

    A body starts with its path key (02/03...), so ``02 01`` in front is ambiguous: it is
    read as the type first and as a bare body if that fails. Raises the first
    :class:`~lndmailbox.errors.OnionError` when neither reading works.
    """
    attempts: list[tuple[bytes, bool]] = []
    if data[:2] == _TYPE_PREFIX:
        attempts.append((data[2:], True))
    attempts.append((data, False))
    first: OnionError | None = None
    for body, typed in attempts:
        try:
            msg = OnionMessage.decode(body)
        except OnionError as e:
            first = first or e
            continue
        end = POINT_LEN + 2 + len(msg.onion)
        return Decoded(msg, typed, body[end:])
    assert first is not None
    raise first


def packet_fields(onion: bytes) -> dict[str, Any]:
    """What an onion_message_packet shows without the recipient's key.

    ``version`` (0 is the only one defined), ``length``, ``ephemeral_key`` (and whether it
    is a valid point), ``payloads_length`` (the encrypted hop payloads), ``hmac``; only the
    fields the bytes are long enough for.
    """
    fields: dict[str, Any] = {"length": len(onion)}
    if not onion:
        return fields
    fields["version"] = onion[0]
    if len(onion) >= 1 + POINT_LEN:
        key = onion[1 : 1 + POINT_LEN]
        fields["ephemeral_key"] = key.hex()
        fields["ephemeral_key_valid"] = _is_point(key)
    if len(onion) >= MIN_ONION_PACKET_LEN:
        fields["payloads_length"] = len(onion) - 1 - POINT_LEN - HMAC_LEN
        fields["hmac"] = onion[-HMAC_LEN:].hex()
    return fields


def _is_point(key: bytes) -> bool:
    try:
        point(key, "ephemeral key")
    except PointError:
        return False
    return True
