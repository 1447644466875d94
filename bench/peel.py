"""How fast :func:`lndmailbox.onion.peel` is, against the crypto it cannot avoid.

A 1366-byte onion message is peeled by an intermediate hop (the mailbox's common case: a
message to forward, possibly to an offline peer) with :class:`LocalNodeKey`. The floor is
the same cryptographic work done bare with the same libraries in a plain loop:

* 2 ECDH (coincurve ``PrivateKey.ecdh``): the path key, then the tweaked onion key;
* 3 point tweaks (coincurve ``PublicKey(...).multiply(...).format()``): the onion key by
  the blinded_node_id factor, the next onion key, the next path key;
* 6 HMAC-SHA256 (``cryptography``): blinded_node_id, rho and mu keys, rho for the
  recipient data, and the packet HMAC over the 1300-byte payload area;
* 1 ChaCha20 stream over twice the payload area, 1 ChaCha20-Poly1305 decryption of the
  encrypted recipient data, 2 SHA256 blinding factors.

The ratio peel / floor is what lndmailbox adds on top: parsing, checks, the coroutine.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from coincurve import PrivateKey, PublicKey
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from lndmailbox.onion import Forward, LocalNodeKey, message_via, open_packet, peel
from lndmailbox.onion.tlv import decode_tlv_stream
from lndmailbox.onion.wire import ONIONMSG_KNOWN_EVEN

ROUNDS = 5
PEELS_PER_ROUND = 2000


def _message() -> tuple[LocalNodeKey, bytes, bytes]:
    """A node key, and a (path key, onion) it must forward."""
    node = LocalNodeKey(bytes([0x11]) * 32)
    nxt = LocalNodeKey(bytes([0x22]) * 32)
    _, message = message_via(
        [node.pubkey, nxt.pubkey],
        {65: b"held_htlc_available"},
        session_key=bytes([0x33]) * 32,
        path_session_key=bytes([0x44]) * 32,
    )
    return node, message.path_key, message.onion


def _hmac256(key: bytes, msg: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(msg)
    return mac.finalize()


def _floor_once(secret: PrivateKey, path_key: bytes, onion: bytes, encrypted: bytes) -> None:
    """The bare crypto of one forwarding peel (results are not checked: only the cost)."""
    path_ss = secret.ecdh(path_key)
    factor = _hmac256(b"blinded_node_id", path_ss)
    ephemeral = PublicKey(onion[1:34])  # parsed once, as peel does
    tweaked = ephemeral.multiply(factor).format()
    ss = secret.ecdh(tweaked)
    mu = _hmac256(b"mu", ss)
    _hmac256(mu, onion[34:-32])
    rho = _hmac256(b"rho", ss)
    area = len(onion) - 66
    Cipher(algorithms.ChaCha20(rho, bytes(16)), None).encryptor().update(
        onion[34:-32] + bytes(area)
    )
    ChaCha20Poly1305(_hmac256(b"rho", path_ss)).decrypt(bytes(12), encrypted, None)
    ephemeral.multiply(hashlib.sha256(onion[1:34] + ss).digest()).format()
    PublicKey(path_key).multiply(hashlib.sha256(path_key + path_ss).digest()).format()


def run(*, rounds: int = ROUNDS, peels_per_round: int = PEELS_PER_ROUND) -> None:
    """Print peels per second, time per peel, the floor, and their ratio (best of rounds)."""
    node, path_key, onion = _message()
    result = asyncio.run(peel(path_key, onion, node))
    assert isinstance(result, Forward)
    encrypted = _recipient_data(node, path_key, onion)
    secret = PrivateKey(node.secret)

    async def peel_round() -> float:
        start = time.perf_counter()
        for _ in range(peels_per_round):
            await peel(path_key, onion, node)
        return (time.perf_counter() - start) / peels_per_round

    def floor_round() -> float:
        start = time.perf_counter()
        for _ in range(peels_per_round):
            _floor_once(secret, path_key, onion, encrypted)
        return (time.perf_counter() - start) / peels_per_round

    floor_round()  # warm up
    peel_times: list[float] = []
    floor_times: list[float] = []
    for _ in range(rounds):  # interleaved so drift in machine load hits both alike
        peel_times.append(asyncio.run(peel_round()))
        floor_times.append(floor_round())
    per_peel = min(peel_times)
    floor = min(floor_times)
    print(f"peel, {len(onion)}-byte onion message, forwarding hop, LocalNodeKey")
    print(f"  peels/second        {1 / per_peel:10.0f}")
    print(f"  time per peel       {per_peel * 1e6:10.1f} us")
    print(f"  crypto floor        {floor * 1e6:10.1f} us  (same ECDH, tweaks, HMAC, ChaCha20)")
    print(f"  ratio peel / floor  {per_peel / floor:10.2f}x  (target <= 1.5x)")


def _recipient_data(node: LocalNodeKey, path_key: bytes, onion: bytes) -> bytes:
    """This hop's encrypted_recipient_data, for the floor's one AEAD decryption."""
    secret = PrivateKey(node.secret)
    factor = _hmac256(b"blinded_node_id", secret.ecdh(path_key))
    ss = secret.ecdh(PublicKey(onion[1:34]).multiply(factor).format())
    payload, _ = open_packet(onion, ss)
    return decode_tlv_stream(payload, ONIONMSG_KNOWN_EVEN)[4]


if __name__ == "__main__":
    run()
