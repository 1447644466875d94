"""Fuzz peel: 100,000 random and mutated inputs, none raises anything but OnionError.

Three kinds of input, from a fixed seed so a failure reproduces:

* random bytes (random lengths, points, versions);
* mutations of valid messages (bit flips, overwrites, cuts, splices, swapped keys), which
  mostly stop at the HMAC;
* structure-aware ones: a mutated or randomly assembled plaintext (payload framing,
  ``onionmsg_tlv``, ``encrypted_data_tlv``) sealed with the right keys, so the checks
  after the HMAC get the garbage.

ECDH results are memoised (same node key, real results) so the run stays fast; the point
tweaks, HMACs and ciphers run for real on every input.
"""

from __future__ import annotations

import random
from collections import Counter

from coincurve import PrivateKey, PublicKey
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from lndmailbox.errors import OnionError
from lndmailbox.onion import (
    LARGE_PACKET_SIZE,
    BlindedHopSpec,
    LocalNodeKey,
    create_blinded_path,
    message_via,
    peel,
)
from lndmailbox.onion.tlv import encode_bigsize, encode_tlv_stream
from lndmailbox.onion.wire import BlindedPath, EncryptedData

SEED = 20240513
TOTAL = 100_000
NODE = LocalNodeKey(bytes([0x41]) * 32)
OTHER = LocalNodeKey(bytes([0x42]) * 32)
PATH_SECRET = bytes([0x51]) * 32
SESSION_SECRET = bytes([0x52]) * 32


class MemoKey:
    """NODE's real ECDH, remembered per point."""

    def __init__(self, key: LocalNodeKey) -> None:
        self._key = key
        self._memo: dict[bytes, bytes] = {}

    async def ecdh(self, point: bytes) -> bytes:
        found = self._memo.get(point)
        if found is None:
            found = await self._key.ecdh(point)
            if len(self._memo) < 4096:
                self._memo[point] = found
        return found


def _hmac(key: bytes, msg: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(msg)
    return mac.finalize()


class Sealer:
    """Seals any plaintext into a layer NODE authenticates (keys computed once)."""

    def __init__(self) -> None:
        path_ss = PrivateKey(PATH_SECRET).ecdh(NODE.pubkey)
        blinded = PublicKey(NODE.pubkey).multiply(_hmac(b"blinded_node_id", path_ss)).format()
        ss = PrivateKey(SESSION_SECRET).ecdh(blinded)
        self.path_key = PrivateKey(PATH_SECRET).public_key.format()
        self.header = b"\x00" + PrivateKey(SESSION_SECRET).public_key.format()
        self.rho, self.mu = _hmac(b"rho", ss), _hmac(b"mu", ss)
        self.aead = ChaCha20Poly1305(_hmac(b"rho", path_ss))

    def encrypt(self, data: bytes) -> bytes:
        return self.aead.encrypt(bytes(12), data, None)

    def seal(self, plain_area: bytes, size: int) -> tuple[bytes, bytes]:
        area = size - 66
        cipher = Cipher(algorithms.ChaCha20(self.rho, bytes(16)), None).encryptor()
        mix = cipher.update(plain_area[:area].ljust(area, b"\x00"))
        return self.path_key, self.header + mix + _hmac(self.mu, mix)


INTERESTING_TYPES = [0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 63, 64, 65, 66, 68, 70, 252, 253]
INTERESTING_TYPES += [561, 65535, 65536, 2**32, 2**64 - 1]


def _random_records(rng: random.Random, values: list[bytes]) -> bytes:
    """A TLV stream of plausible and implausible records (sometimes out of order)."""
    types = sorted(rng.sample(INTERESTING_TYPES, rng.randint(0, 5)))
    if rng.random() < 0.1:
        rng.shuffle(types)
    out = b""
    for typ in types:
        value = rng.choice(values) if rng.random() < 0.5 else rng.randbytes(rng.randint(0, 40))
        length = len(value) if rng.random() < 0.9 else rng.randint(0, 300)
        out += encode_bigsize(typ) + encode_bigsize(length) + value
    return out


def _mutate(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return rng.randbytes(rng.randint(0, 8))
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        op = rng.randrange(7)
        pos = rng.randrange(len(buf)) if buf else 0
        if op == 0 and buf:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[pos] = rng.choice((0, 1, 0x7F, 0x80, 0xFC, 0xFD, 0xFE, 0xFF, rng.randrange(256)))
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 4))
        elif op == 3 and buf:
            del buf[pos : pos + rng.randint(1, 4)]
        elif op == 4:
            del buf[pos:]
        elif op == 5 and buf:
            start = rng.randrange(len(buf))
            chunk = buf[start : start + rng.randint(1, 16)]
            buf[pos:pos] = chunk
        else:
            buf += rng.randbytes(rng.randint(1, 8))
    return bytes(buf)


def _seeds() -> tuple[list[tuple[bytes, bytes]], list[bytes], list[bytes]]:
    """Valid (path_key, onion) pairs for NODE, valid encrypted data and payload values."""
    messages = []
    for size in (1366, LARGE_PACKET_SIZE, 400):
        for route in ([NODE.pubkey, OTHER.pubkey], [NODE.pubkey]):
            _, message = message_via(
                route,
                {64: b"request"},
                path_id=b"pid",
                packet_size=size,
                session_key=bytes([0x61]) * 32,
                path_session_key=bytes([0x62]) * 32,
            )
            messages.append((message.path_key, message.onion))
    reply = create_blinded_path(
        [BlindedHopSpec(OTHER.pubkey, next_node_id=NODE.pubkey), BlindedHopSpec(NODE.pubkey)],
        bytes([0x63]) * 32,
    )
    datas = [
        EncryptedData(next_node_id=OTHER.pubkey).encode(),
        EncryptedData(short_channel_id=1729).encode(),
        EncryptedData(next_node_id=OTHER.pubkey, next_path_key_override=OTHER.pubkey).encode(),
        EncryptedData(path_id=b"secret", padding=bytes(3)).encode(),
        EncryptedData(allowed_features=b"\x00", unknown={561: b"\x01"}).encode(),
        b"",
    ]
    values = [
        OTHER.pubkey,
        (1729).to_bytes(8, "big"),
        reply.encode(),
        BlindedPath(b"\x01" + bytes(8), OTHER.pubkey, ()).encode(),
        b"",
        b"\x00",
    ]
    return messages, datas, values


def _inputs(rng: random.Random, sealer: Sealer) -> list[tuple[bytes, bytes]]:
    messages, datas, values = _seeds()
    out: list[tuple[bytes, bytes]] = []
    while len(out) < TOTAL:
        kind = rng.random()
        if kind < 0.15:  # random bytes
            path_key = bytes([rng.choice((2, 3, 2, 3, 4, 0, rng.randrange(256)))])
            path_key += rng.randbytes(rng.choice((32, 32, 32, rng.randint(0, 40))))
            length = rng.choice((0, 1, 66, 67, 100, 1366, rng.randint(0, 1500)))
            onion = bytes([rng.choice((0, 0, 0, 1))]) + rng.randbytes(max(0, length - 1))
            if len(onion) > 34 and rng.random() < 0.7:
                onion = onion[:1] + rng.choice(messages)[1][1:34] + onion[34:]
            out.append((path_key, onion))
        elif kind < 0.45:  # mutated valid messages
            path_key, onion = rng.choice(messages)
            if rng.random() < 0.8:
                onion = _mutate(rng, onion)
            else:
                path_key = _mutate(rng, path_key)
            if rng.random() < 0.05:
                path_key = rng.choice(messages)[0] if rng.random() < 0.5 else OTHER.pubkey
            out.append((path_key, onion))
        else:  # structure-aware: sealed garbage
            data = rng.choice(datas)
            if rng.random() < 0.6:
                data = _mutate(rng, data) if rng.random() < 0.6 else _random_records(rng, values)
            records = {4: sealer.encrypt(data)} if rng.random() < 0.9 else {}
            for _ in range(rng.choice((0, 0, 0, 1, 1, 2))):
                records[rng.choice((1, 2, 3, 64, 65, 66, 68))] = rng.choice(values)
            if rng.random() < 0.05:
                records[4] = rng.randbytes(rng.randint(0, 40))
            payload = encode_tlv_stream(records)
            if rng.random() < 0.25:
                payload = _mutate(rng, payload)
            if rng.random() < 0.1:
                payload = _random_records(rng, values)
            framed = encode_bigsize(len(payload)) + payload
            if rng.random() < 0.05:
                framed = _mutate(rng, framed[:9]) + framed[9:]
            next_hmac = bytes(32) if rng.random() < 0.5 else rng.randbytes(32)
            size = rng.choice((1366, 1366, 1366, 200, LARGE_PACKET_SIZE))
            out.append(sealer.seal(framed + next_hmac, size))
    return out


async def test_fuzz_peel_raises_only_onion_errors() -> None:
    rng = random.Random(SEED)
    sealer = Sealer()
    node = MemoKey(NODE)
    outcomes: Counter[str] = Counter()
    inputs = _inputs(rng, sealer)
    assert len(inputs) >= 100_000
    for path_key, onion in inputs:
        try:
            result = await peel(path_key, onion, node)
        except OnionError as e:
            outcomes[e.reason] += 1
        except Exception as e:
            raise AssertionError(
                f"peel raised {type(e).__name__} for path_key={path_key.hex()} onion={onion.hex()}"
            ) from e
        else:
            outcomes[type(result).__name__] += 1
    # The fuzzer reaches every layer of checks, not only the HMAC.
    for reason in (
        "bad_length",
        "bad_version",
        "bad_point",
        "bad_hmac",
        "bad_payload_length",
        "bad_tlv",
        "bad_encrypted_data",
        "forbidden_field",
        "path_id_not_final",
        "missing_next_hop",
        "unknown_feature",
        "bad_reply_path",
        "multiple_payloads",
        "Forward",
        "Receive",
    ):
        assert outcomes[reason] > 0, (reason, outcomes)
