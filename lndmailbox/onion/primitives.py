"""The cryptographic building blocks BOLT 4 names, shared by the reader and the builders.

HMAC-SHA256 and SHA256, the ChaCha20 stream with a zero nonce, secp256k1 point checks and
tweaks, and the keys BOLT 4 derives from a shared secret ``ss``:

==============================  ===================================================
``rho(ss)``                     ``HMAC256("rho", ss)``: the stream key of a layer, and
                                the key of ``encrypted_recipient_data``
``mu(ss)``                      ``HMAC256("mu", ss)``: the key of a layer's HMAC
``blinding_tweak(ss)``          ``HMAC256("blinded_node_id", ss)``: blinds a node id
``next_key_tweak(key, ss)``     ``SHA256(key || ss)``: takes an ephemeral (or path)
                                key to the next hop's
==============================  ===================================================

Pure code: nothing here touches the network or the node key.
"""

from __future__ import annotations

import hashlib
from typing import Final

from coincurve import PublicKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from lndmailbox.onion.tlv import POINT_LEN, PointError
from lndmailbox.onion.wire import HMAC_LEN

__all__ = [
    "CURVE_ORDER",
    "HEADER_LEN",
    "OVERHEAD",
    "ZERO_HMAC",
    "ZERO_NONCE12",
    "blinding_tweak",
    "chacha20",
    "hmac256",
    "mu",
    "next_key_tweak",
    "point",
    "rho",
    "sha256",
    "tweak",
]

HEADER_LEN: Final = 1 + POINT_LEN
"""A packet's version byte and ephemeral public key."""
OVERHEAD: Final = HEADER_LEN + HMAC_LEN
"""Everything in a packet but its hop payloads."""
ZERO_HMAC: Final = bytes(HMAC_LEN)
"""The next HMAC of the final hop."""
ZERO_NONCE12: Final = bytes(12)
"""The ChaCha20-Poly1305 nonce of ``encrypted_recipient_data``."""
_ZERO_NONCE16: Final = bytes(16)  # cryptography's ChaCha20 takes counter || nonce
CURVE_ORDER: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
"""The order of secp256k1's group."""

_SHA256: Final = hashes.SHA256()


def hmac256(key: bytes, message: bytes) -> bytes:
    mac = crypto_hmac.HMAC(key, _SHA256)
    mac.update(message)
    return mac.finalize()


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def chacha20(key: bytes, data: bytes) -> bytes:
    """``data`` XOR the ChaCha20 stream of ``key`` with a zero nonce (BOLT 4's stream)."""
    return Cipher(algorithms.ChaCha20(key, _ZERO_NONCE16), None).encryptor().update(data)


def rho(shared_secret: bytes) -> bytes:
    return hmac256(b"rho", shared_secret)


def mu(shared_secret: bytes) -> bytes:
    return hmac256(b"mu", shared_secret)


def blinding_tweak(shared_secret: bytes) -> bytes:
    return hmac256(b"blinded_node_id", shared_secret)


def next_key_tweak(key: bytes, shared_secret: bytes) -> bytes:
    """``SHA256(key || ss)``, ``key`` the compressed ephemeral (or path) public key."""
    return sha256(key + shared_secret)


def point(data: bytes, what: str) -> PublicKey:
    """``data`` as a curve point; :class:`~lndmailbox.onion.tlv.PointError` if it is not."""
    if len(data) != POINT_LEN or data[0] not in (2, 3):
        raise PointError(f"{what}: not a 33-byte compressed point")
    try:
        return PublicKey(data)
    except ValueError as e:
        raise PointError(f"{what}: not on the curve") from e


def tweak(key: PublicKey, scalar: bytes, what: str) -> bytes:
    """``scalar * key``, compressed."""
    try:
        return key.multiply(scalar).format()
    except ValueError as e:  # a scalar of 0 or >= the curve order: odds of 2**-128
        raise PointError(f"{what}: tweak out of range") from e
