"""lndmailbox.onion.inspect: what an onion_message shows without the recipient's key.

mailboxctl's ``decode`` and ``show --decode`` print these (tests/test_cli.py runs them
through ``main``); here the reading itself, on bytes.
"""

from __future__ import annotations

import pytest

from lndmailbox.errors import OnionError
from lndmailbox.onion import LocalNodeKey, message_via
from lndmailbox.onion.inspect import packet_fields, parse_onion_message
from lndmailbox.onion.wire import OnionMessage


def key(n: int) -> LocalNodeKey:
    return LocalNodeKey(n.to_bytes(32, "big"))


def _message() -> OnionMessage:
    return message_via([key(2).pubkey])[1]


def test_decode_reads_a_body_whose_path_key_looks_like_the_type() -> None:
    # A path key 02 01 ... makes the body start like the type 513: it is still read.
    n = 1
    while (k := key(n).pubkey)[:2] != b"\x02\x01":
        n += 1
    msg = OnionMessage(k, _message().onion)
    decoded = parse_onion_message(msg.encode())
    assert (decoded.message, decoded.typed) == (msg, False)
    decoded = parse_onion_message(msg.encode_with_type())
    assert (decoded.message, decoded.typed) == (msg, True)


def test_parse_keeps_the_extension_and_says_why_bytes_are_not_a_message() -> None:
    msg = _message()
    decoded = parse_onion_message(msg.encode_with_type() + b"\x01\x00")
    assert (decoded.message, decoded.typed, decoded.extension) == (msg, True, b"\x01\x00")
    with pytest.raises(OnionError, match=r"^onion_message: len 1366 but 1356 bytes$"):
        parse_onion_message(msg.encode()[:-10])


def test_packet_fields_of_short_or_odd_packets() -> None:
    assert packet_fields(b"") == {"length": 0}
    assert packet_fields(b"\x01\x02") == {"length": 2, "version": 1}
    fields = packet_fields(b"\x00" + b"\x02" + b"\xff" * 32 + b"\x00" + b"\x11" * 32)
    assert fields["ephemeral_key_valid"] is False
    assert fields["payloads_length"] == 1
    assert fields["hmac"] == "11" * 32
