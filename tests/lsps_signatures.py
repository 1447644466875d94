"""Checks lnd-style message signatures on their own, for the tests of LSPS5's notifications.

lnd's SignMessage (and LSPS0's signature, which is the same thing) is z-base-32 of a
65-byte compact recoverable ECDSA signature, ``(31 + recovery id) ‖ r ‖ s``, over
SHA256(SHA256("Lightning Signed Message:" + message)). This module decodes and recovers it
with nothing but coincurve: simnet has its own encoder (simnet/signing.py), and a test
that checked simnet with simnet's code would prove nothing.

The decoder is strict where lnd's is lenient: every character in the alphabet, and the
bits past the last whole byte zero (a z-base-32 encoder never writes others), so a
signature cut short or padded shows here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Final

import coincurve

__all__ = [
    "INCOMING",
    "REGISTERED",
    "ZBASE32_ALPHABET",
    "check_notification",
    "lightning_signer",
    "signed_digest",
    "zbase32_decode",
]

ZBASE32_ALPHABET: Final = "ybndrfg8ejkmcpqxot1uwisza345h769"
_PREFIX: Final = b"Lightning Signed Message:"
_INDEX: Final = {char: value for value, char in enumerate(ZBASE32_ALPHABET)}

#: The bodies of LSPS5's two notifications the mailbox sends, byte for byte.
REGISTERED: Final = b'{"jsonrpc":"2.0","method":"lsps5.webhook_registered","params":{}}'
INCOMING: Final = b'{"jsonrpc":"2.0","method":"lsps5.onion_message_incoming","params":{}}'
_TIMESTAMP: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")


def zbase32_decode(text: str) -> bytes:
    """The bytes z-base-32 ``text`` holds: 5 bits a character, most significant first,
    as many whole bytes as there are bits. Raises ValueError for a character outside the
    alphabet or leftover bits that are not zero."""
    value = 0
    for position, char in enumerate(text):
        digit = _INDEX.get(char)
        if digit is None:
            raise ValueError(f"not z-base-32: {char!r} at {position}")
        value = value << 5 | digit
    bits = len(text) * 5
    spare = bits % 8
    if value & ((1 << spare) - 1):
        raise ValueError(f"not z-base-32: the last {spare} bits are not zero")
    size = bits // 8
    return (value >> spare).to_bytes(size, "big") if size else b""


def signed_digest(message: bytes) -> bytes:
    """What lnd's SignMessage signs for ``message`` (single_hash false)."""
    inner = hashlib.sha256(_PREFIX + message).digest()
    return hashlib.sha256(inner).digest()


def lightning_signer(message: bytes, signature: str) -> bytes:
    """The 33-byte compressed key that made the lnd-style ``signature`` of ``message``.

    Raises ValueError when ``signature`` is not z-base-32 of 65 bytes, its header is not
    31 to 34 (lnd signs for a compressed key), or no key can be recovered from it. A
    signature of another message still recovers a key: compare it with the one expected.
    """
    raw = zbase32_decode(signature)
    if len(raw) != 65:
        raise ValueError(f"a signature is 65 bytes, this one {len(raw)}")
    header = raw[0]
    if not 31 <= header <= 34:
        raise ValueError(f"header byte {header}: not 31 + a recovery id of 0 to 3")
    compact = raw[1:] + bytes([header - 31])
    try:
        key = coincurve.PublicKey.from_signature_and_message(
            compact, signed_digest(message), hasher=None
        )
    except ValueError as e:
        raise ValueError(f"no key recovers from this signature: {e}") from e
    return key.format(compressed=True)


def check_notification(headers: Mapping[str, str], body: bytes, node: bytes) -> str:
    """The timestamp of an LSPS5 notification received with ``headers`` and ``body``, once
    its signature is recovered to ``node`` (the text signed is built here from bLIP-55's
    sentence, not with the daemon's code)."""
    timestamp = headers["x-lsps5-timestamp"]
    assert _TIMESTAMP.fullmatch(timestamp), timestamp
    text = f"LSPS5: DO NOT SIGN THIS MESSAGE MANUALLY: LSP: At {timestamp} I notify ".encode()
    assert lightning_signer(text + body, headers["x-lsps5-signature"]) == node
    return timestamp
