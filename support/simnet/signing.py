"""lnd's signed messages (SignMessage, VerifyMessage), as simnet makes and checks them.

lnd (rpcserver.go) prefixes the message with ``"Lightning Signed Message:"``, hashes it
with SHA256 twice (once with ``single_hash``), signs the digest with the node key as a
compact recoverable ECDSA signature, ``(27 + 4 + recovery id) ‖ r ‖ s`` (btcec's
SignCompact, 31 + recid: a compressed key), and hands it out in z-base-32
(github.com/tv42/zbase32). Verifying recovers the key from the signature; btcec accepts
the header bytes 27 to 34 (the uncompressed ones too).

The tests check these signatures with a decoder of their own (tests/lsps_signatures.py),
so a mistake here cannot hide behind the same mistake there.
"""

from __future__ import annotations

import hashlib
from typing import Final

import coincurve

__all__ = [
    "SIGNED_MESSAGE_PREFIX",
    "ZBASE32_ALPHABET",
    "ZBase32Error",
    "message_digest",
    "recover_signer",
    "sign_message",
    "zbase32_decode",
    "zbase32_encode",
]

SIGNED_MESSAGE_PREFIX: Final = b"Lightning Signed Message:"
ZBASE32_ALPHABET: Final = "ybndrfg8ejkmcpqxot1uwisza345h769"
_VALUES: Final = {c: i for i, c in enumerate(ZBASE32_ALPHABET)}
# tv42/zbase32's bytes out of a quantum of n characters (n = 0..8), odd as it is: lnd
# decodes with it, so a string of another length decodes to what lnd makes of it.
_QUANTUM_BYTES: Final = (0, 1, 1, 2, 2, 3, 4, 4, 5)
# btcec's compact signature: the header byte's offset, and its flag for a compressed key.
_MAGIC: Final = 27
_COMPRESSED: Final = 4


class ZBase32Error(ValueError):
    """A character outside the alphabet; the text is tv42/zbase32's."""


def zbase32_encode(data: bytes) -> str:
    """z-base-32 of ``data``: 5 bits a character, most significant first, the last
    character's missing bits zero."""
    bits = int.from_bytes(data, "big") if data else 0
    count = len(data) * 8
    chars = -(-count // 5)
    bits <<= chars * 5 - count
    return "".join(ZBASE32_ALPHABET[(bits >> (5 * (chars - 1 - i))) & 31] for i in range(chars))


def zbase32_decode(text: str) -> bytes:
    """What lnd's decoder (tv42/zbase32 ``DecodeString``) makes of ``text``."""
    out = bytearray()
    for start in range(0, len(text), 8):
        quantum = text[start : start + 8]
        values = []
        for offset, char in enumerate(quantum):
            value = _VALUES.get(char)
            if value is None:
                raise ZBase32Error(f"illegal z-base-32 data at input byte {start + offset}")
            values.append(value)
        padded = values + [0] * (8 - len(values))
        block = 0
        for value in padded:
            block = block << 5 | value
        out += block.to_bytes(5, "big")[: _QUANTUM_BYTES[len(values)]]
    return bytes(out)


def message_digest(message: bytes, *, single_hash: bool = False) -> bytes:
    """The digest lnd signs for ``message``: SHA256, twice unless ``single_hash``, of the
    prefixed message."""
    digest = hashlib.sha256(SIGNED_MESSAGE_PREFIX + message).digest()
    return digest if single_hash else hashlib.sha256(digest).digest()


def sign_message(secret: bytes, message: bytes, *, single_hash: bool = False) -> str:
    """lnd's SignMessage answer for ``message`` signed with ``secret`` (RFC 6979 nonces,
    as btcec's: the same message gives the same signature)."""
    recoverable = coincurve.PrivateKey(secret).sign_recoverable(
        message_digest(message, single_hash=single_hash), hasher=None
    )
    r_s, recid = recoverable[:64], recoverable[64]
    return zbase32_encode(bytes([_MAGIC + _COMPRESSED + recid]) + r_s)


def recover_signer(message: bytes, signature: str) -> bytes | None:
    """The compressed key that signed ``message``, as lnd's VerifyMessage recovers it;
    None when nothing can be recovered (lnd then answers ``valid: false``, no pubkey).

    Raises :class:`ZBase32Error` for a signature that is not z-base-32 (lnd fails the
    call then).
    """
    raw = zbase32_decode(signature)
    if len(raw) != 65 or not _MAGIC <= raw[0] <= _MAGIC + _COMPRESSED + 3:
        return None
    recid = (raw[0] - _MAGIC) & 3
    try:
        key = coincurve.PublicKey.from_signature_and_message(
            raw[1:] + bytes([recid]), message_digest(message), hasher=None
        )
    except ValueError:
        return None
    return key.format(compressed=True)
