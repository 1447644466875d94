"""BOLT 4 onion-message crypto: peel one layer, and build blinded paths and messages.

Reading (what the daemon does for every message it gets):

    result = await peel(path_key, onion, node)   # Forward | Receive

``node`` is a :class:`NodeKey`: its ``ecdh`` is the only way to the node's private key and
``peel`` calls it exactly twice (first with the path key, then with the onion's ephemeral
key tweaked by ``HMAC256("blinded_node_id", ss)``). Everything else (HMAC-SHA256, the
ChaCha20 stream, ChaCha20-Poly1305 for ``encrypted_recipient_data``, point tweaks) runs
locally with ``cryptography`` and ``coincurve``.

``peel`` enforces every reader rule BOLT 4 sets for onion messages and raises only
:class:`~lndmailbox.errors.OnionError` subclasses for bad input, whatever the bytes (errors
from ``node.ecdh`` itself, such as an lnd RPC failure, pass through unchanged). The
``reason`` of each class is a stable label for metrics and logs:

============================  ======================  =================================
class                         reason                  when
============================  ======================  =================================
``wire.LengthError``          ``bad_length``          packet shorter than 67 or longer
                                                      than 65535 bytes
``VersionError``              ``bad_version``         version byte is not 0
``wire.PointError``           ``bad_point``           path key, onion key, next_node_id
                                                      or override not a valid point
``HmacError``                 ``bad_hmac``            packet HMAC does not match
``PayloadLengthError``        ``bad_payload_length``  hop payload length malformed or
                                                      past the end of the packet
``wire.TlvError``             ``bad_tlv``             ``onionmsg_tlv`` breaks TLV rules
                                                      or has an unknown even type
``EncryptedDataError``        ``bad_encrypted_data``  missing, undecryptable or invalid
                                                      ``encrypted_recipient_data``
``ForbiddenFieldError``       ``forbidden_field``     a non-final hop payload with more
                                                      than encrypted_recipient_data;
                                                      payment_relay/constraints present
``PathIdNotFinalError``       ``path_id_not_final``   ``path_id`` at a non-final hop
``MissingNextHopError``       ``missing_next_hop``    neither next_node_id nor scid
``UnknownFeatureError``       ``unknown_feature``     ``allowed_features`` sets a bit
                                                      (no feature is defined for onion
                                                      messages)
``ReplyPathError``            ``bad_reply_path``      final hop's reply_path malformed
``MultiplePayloadsError``     ``multiple_payloads``   final hop with more than one
                                                      payload record (type >= 64)
============================  ======================  =================================

Building (tools, tests, simnet, benchmarks):

* :func:`create_blinded_path` makes a ``blinded_path`` from :class:`BlindedHopSpec` hops.
* :func:`build_onion_message` builds an ``onion_message`` to a blinded path, optionally
  reaching its introduction node through plain hops first (BOLT 4's joining case).
* :func:`message_via` does both for the common case "sender -> (intro hops) -> these nodes
  -> final payload".
* :func:`build_packet` is the bare Sphinx construction (any payloads, optional associated
  data) and :func:`open_packet` its one-layer inverse given a shared secret.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from hmac import compare_digest
from itertools import pairwise
from types import MappingProxyType
from typing import Final, Protocol

from coincurve import PrivateKey, PublicKey
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from lndmailbox.errors import OnionError
from lndmailbox.wire import (
    ENCRYPTED_DATA_KNOWN_EVEN,
    HMAC_LEN,
    MAX_ONION_PACKET_LEN,
    MIN_ONION_PACKET_LEN,
    ONIONMSG_KNOWN_EVEN,
    ONIONMSG_PAYLOAD_MIN_TYPE,
    POINT_LEN,
    TLV_ENCRYPTED_RECIPIENT_DATA,
    TLV_REPLY_PATH,
    BigSizeError,
    BlindedHop,
    BlindedPath,
    EncryptedData,
    LengthError,
    OnionMessage,
    PointError,
    WireError,
    decode_bigsize,
    decode_tlv_stream,
    encode_bigsize,
    encode_tlv_stream,
)

__all__ = [
    "DEFAULT_PACKET_SIZE",
    "LARGE_PACKET_SIZE",
    "BlindedHop",
    "BlindedHopSpec",
    "BlindedPath",
    "EncryptedDataError",
    "ForbiddenFieldError",
    "Forward",
    "HmacError",
    "LocalNodeKey",
    "MissingNextHopError",
    "MultiplePayloadsError",
    "NodeKey",
    "PathIdNotFinalError",
    "PayloadLengthError",
    "Receive",
    "ReplyPathError",
    "SphinxError",
    "UnknownFeatureError",
    "VersionError",
    "build_onion_message",
    "build_packet",
    "create_blinded_path",
    "decrypt_recipient_data",
    "final_payload_room",
    "message_via",
    "next_path_key",
    "open_packet",
    "peel",
    "random_secret",
]

DEFAULT_PACKET_SIZE: Final = 1366
"""The size BOLT 4 recommends first: an onion message that looks like an HTLC onion."""
LARGE_PACKET_SIZE: Final = 32834
"""The other size BOLT 4 recommends for larger messages."""

HEADER_LEN: Final = 1 + POINT_LEN
OVERHEAD: Final = HEADER_LEN + HMAC_LEN
_ZERO_HMAC: Final = bytes(HMAC_LEN)
_ZERO_NONCE12: Final = bytes(12)
_ZERO_NONCE16: Final = bytes(16)  # cryptography's ChaCha20 takes counter || nonce
_CURVE_ORDER: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


# --- errors ------------------------------------------------------------------------------


class SphinxError(OnionError):
    """An onion packet that fails a BOLT 4 reader rule."""

    reason = "bad_onion"


class VersionError(SphinxError):
    reason = "bad_version"


class HmacError(SphinxError):
    reason = "bad_hmac"


class PayloadLengthError(SphinxError):
    """The hop payload's length prefix is malformed or runs past the packet."""

    reason = "bad_payload_length"


class EncryptedDataError(SphinxError):
    """``encrypted_recipient_data`` is missing, does not decrypt, or is not a valid
    ``encrypted_data_tlv``."""

    reason = "bad_encrypted_data"


class ForbiddenFieldError(SphinxError):
    """A field present where BOLT 4 does not allow it."""

    reason = "forbidden_field"


class PathIdNotFinalError(ForbiddenFieldError):
    reason = "path_id_not_final"


class MissingNextHopError(SphinxError):
    reason = "missing_next_hop"


class UnknownFeatureError(SphinxError):
    reason = "unknown_feature"


class ReplyPathError(SphinxError):
    reason = "bad_reply_path"


class MultiplePayloadsError(SphinxError):
    reason = "multiple_payloads"


# --- primitives --------------------------------------------------------------------------

_SHA256: Final = hashes.SHA256()


def _hmac256(key: bytes, message: bytes) -> bytes:
    mac = crypto_hmac.HMAC(key, _SHA256)
    mac.update(message)
    return mac.finalize()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _chacha20(key: bytes, data: bytes) -> bytes:
    """``data`` XOR the ChaCha20 stream of ``key`` with a zero nonce (BOLT 4's stream)."""
    return Cipher(algorithms.ChaCha20(key, _ZERO_NONCE16), None).encryptor().update(data)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _point(data: bytes, what: str) -> PublicKey:
    if len(data) != POINT_LEN or data[0] not in (2, 3):
        raise PointError(f"{what}: not a 33-byte compressed point")
    try:
        return PublicKey(data)
    except ValueError as e:
        raise PointError(f"{what}: not on the curve") from e


def _tweak(point: PublicKey, scalar: bytes, what: str) -> bytes:
    try:
        return point.multiply(scalar).format()
    except ValueError as e:  # a scalar of 0 or >= the curve order: odds of 2**-128
        raise PointError(f"{what}: tweak out of range") from e


def random_secret() -> bytes:
    """A fresh valid secp256k1 private key (32 bytes) from the OS CSPRNG."""
    while True:
        candidate = secrets.token_bytes(32)
        if 0 < int.from_bytes(candidate, "big") < _CURVE_ORDER:
            return candidate


def _scalar(secret: bytes, what: str) -> int:
    value = int.from_bytes(secret, "big")
    if len(secret) != 32 or not 0 < value < _CURVE_ORDER:
        raise ValueError(f"{what}: not a valid 32-byte secp256k1 private key")
    return value


def _pubkey_of(scalar: int) -> bytes:
    return PrivateKey(scalar.to_bytes(32, "big")).public_key.format()


# --- node keys ---------------------------------------------------------------------------


class NodeKey(Protocol):
    """Access to a node's private key through ECDH only."""

    async def ecdh(self, point: bytes) -> bytes:
        """SHA256 of the compressed point ``k * point`` (lnd's ``Signer.DeriveSharedKey``)."""
        ...


class CachedNodeKey:
    """A :class:`NodeKey` that remembers its last ``size`` answers.

    ECDH with one key is a function of the point alone, so a remembered answer is exact.
    It pays where points repeat: every message sent along the same blinded path reaches its
    introduction node (an LSP, for its users' paths) with the same path key, and one of the
    two ECDHs of each peel becomes a lookup instead of a round trip to lnd's signer.
    """

    def __init__(self, inner: NodeKey, size: int = 4096) -> None:
        self._inner = inner
        self._size = size
        self._answers: OrderedDict[bytes, bytes] = OrderedDict()

    async def ecdh(self, point: bytes) -> bytes:
        answer = self._answers.get(point)
        if answer is not None:
            self._answers.move_to_end(point)
            return answer
        answer = await self._inner.ecdh(point)
        self._answers[point] = answer
        if len(self._answers) > self._size:
            self._answers.popitem(last=False)
        return answer


class LocalNodeKey:
    """A :class:`NodeKey` over a private key held in memory (tools, tests, simnet)."""

    __slots__ = ("_key", "pubkey", "secret")

    def __init__(self, secret: bytes) -> None:
        _scalar(secret, "LocalNodeKey secret")
        self._key = PrivateKey(secret)
        self.secret = secret
        self.pubkey: bytes = self._key.public_key.format()

    @classmethod
    def generate(cls) -> LocalNodeKey:
        return cls(random_secret())

    async def ecdh(self, point: bytes) -> bytes:
        # libsecp256k1's default ECDH hash is SHA256(0x02|0x03 parity byte || x), which is
        # SHA256 of the compressed shared point: exactly BOLT 4's shared secret.
        return self.ecdh_sync(point)

    def ecdh_sync(self, point: bytes) -> bytes:
        if len(point) != POINT_LEN or point[0] not in (2, 3):
            raise PointError("ecdh: not a 33-byte compressed point")
        try:
            return self._key.ecdh(point)
        except ValueError as e:
            raise PointError("ecdh: not on the curve") from e

    def __repr__(self) -> str:
        return f"LocalNodeKey(pubkey={self.pubkey.hex()})"


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Forward:
    """We are an intermediate hop: send ``next_onion`` with ``next_path_key`` onwards.

    Exactly one of ``next_node_id`` and ``short_channel_id`` is set (when the encrypted
    data names both, ``next_node_id`` wins, as BOLT 4 says). ``next_onion`` has the length
    of the packet received.
    """

    next_node_id: bytes | None
    short_channel_id: int | None
    next_path_key: bytes
    next_onion: bytes
    encrypted_recipient_data: bytes = b""
    """This hop's encrypted_recipient_data as it came, before decryption (lnd 0.21 hands
    it to its onion-message subscribers)."""

    @property
    def message(self) -> OnionMessage:
        """The ``onion_message`` to hand the next peer."""
        return OnionMessage(self.next_path_key, self.next_onion)


@dataclass(frozen=True)
class Receive:
    """We are the final hop.

    ``payload`` holds every ``onionmsg_tlv`` record (including ``encrypted_recipient_data``,
    ``reply_path`` and the payloads from type 64 up); ``encrypted_data`` every decrypted
    ``encrypted_data_tlv`` record; ``reply_path`` the raw ``reply_path`` value and ``reply``
    the same decoded. The caller decides whether ``path_id`` is one it issued.
    """

    path_id: bytes | None
    reply_path: bytes | None
    encrypted_data: Mapping[int, bytes]
    payload: Mapping[int, bytes]
    reply: BlindedPath | None = None


# --- reading -----------------------------------------------------------------------------


def _unwrap(onion: bytes, ss: bytes, associated_data: bytes) -> tuple[bytes, bytes, int, int]:
    """Check the HMAC and decrypt one layer.

    Returns ``(unwrapped, next_hmac, payload_start, payload_end)`` where ``unwrapped`` is
    ``hop_payloads || zeros`` XOR the rho stream (twice the payload area).
    """
    hop_payloads = onion[HEADER_LEN:-HMAC_LEN]
    expected = _hmac256(_hmac256(b"mu", ss), hop_payloads + associated_data)
    if not compare_digest(expected, onion[-HMAC_LEN:]):
        raise HmacError("onion HMAC does not match")
    area = len(hop_payloads)
    # XOR with the stream is ChaCha20 encryption of the bytes themselves: done in C.
    unwrapped = _chacha20(_hmac256(b"rho", ss), hop_payloads + bytes(area))
    try:
        length, start = decode_bigsize(unwrapped)
    except BigSizeError as e:
        raise PayloadLengthError(f"hop payload length: {e}") from e
    end = start + length
    if end + HMAC_LEN > area:
        raise PayloadLengthError(f"hop payload of {length} bytes runs past the packet")
    return unwrapped, unwrapped[end : end + HMAC_LEN], start, end


def _check_packet(onion: bytes) -> PublicKey:
    if not MIN_ONION_PACKET_LEN <= len(onion) <= MAX_ONION_PACKET_LEN:
        raise LengthError(f"onion packet of {len(onion)} bytes")
    if onion[0] != 0:
        raise VersionError(f"onion version {onion[0]}")
    return _point(onion[1:HEADER_LEN], "onion public_key")


async def peel(path_key: bytes, onion: bytes, node: NodeKey) -> Forward | Receive:
    """Take one layer off an onion message received with ``path_key``.

    Raises an :class:`~lndmailbox.errors.OnionError` subclass for any invalid input.
    """
    ephemeral = _check_packet(onion)
    path_point = _point(path_key, "path_key")
    path_ss = await node.ecdh(path_key)
    tweaked = _tweak(ephemeral, _hmac256(b"blinded_node_id", path_ss), "onion public_key")
    ss = await node.ecdh(tweaked)
    unwrapped, next_hmac, start, end = _unwrap(onion, ss, b"")

    records = decode_tlv_stream(unwrapped[start:end], ONIONMSG_KNOWN_EVEN)
    final = next_hmac == _ZERO_HMAC
    encrypted = records.get(TLV_ENCRYPTED_RECIPIENT_DATA)
    if encrypted is None:
        raise EncryptedDataError("no encrypted_recipient_data")
    if not final and len(records) != 1:
        others = sorted(t for t in records if t != TLV_ENCRYPTED_RECIPIENT_DATA)
        raise ForbiddenFieldError(f"non-final hop payload has records {others}")
    plain = decrypt_recipient_data(path_ss, encrypted)
    try:
        data_records = decode_tlv_stream(plain, ENCRYPTED_DATA_KNOWN_EVEN)
        data = EncryptedData.from_records(data_records)
    except WireError as e:
        raise EncryptedDataError(f"encrypted_data_tlv: {e}") from e
    if data.payment_relay is not None or data.payment_constraints is not None:
        raise ForbiddenFieldError("payment_relay/payment_constraints in an onion message")
    if data.allowed_features and data.allowed_features.strip(b"\x00"):
        raise UnknownFeatureError("allowed_features sets a bit no onion message knows")

    if final:
        return _receive(records, data_records, data)

    if data.path_id is not None:
        raise PathIdNotFinalError("path_id at a non-final hop")
    next_node_id = data.next_node_id
    short_channel_id = data.short_channel_id
    if next_node_id is not None:
        _point(next_node_id, "next_node_id")
        short_channel_id = None
    elif short_channel_id is None:
        raise MissingNextHopError("neither next_node_id nor short_channel_id")
    override = data.next_path_key_override
    if override is not None:
        _point(override, "next_path_key_override")
        next_path_key = override
    else:
        next_path_key = _tweak(path_point, _sha256(path_key + path_ss), "path_key")
    next_ephemeral = _tweak(ephemeral, _sha256(onion[1:HEADER_LEN] + ss), "onion public_key")
    after = end + HMAC_LEN
    area = len(onion) - OVERHEAD
    next_onion = b"".join((b"\x00", next_ephemeral, unwrapped[after : after + area], next_hmac))
    return Forward(next_node_id, short_channel_id, next_path_key, next_onion, encrypted)


def _receive(
    records: dict[int, bytes], data_records: dict[int, bytes], data: EncryptedData
) -> Receive:
    raw_reply = records.get(TLV_REPLY_PATH)
    reply: BlindedPath | None = None
    if raw_reply is not None:
        try:
            reply = BlindedPath.decode(raw_reply)
            for point in reply.points():
                _point(point, "reply_path")
        except WireError as e:
            raise ReplyPathError(f"reply_path: {e}") from e
    if sum(1 for t in records if t >= ONIONMSG_PAYLOAD_MIN_TYPE) > 1:
        raise MultiplePayloadsError("more than one payload record for the final hop")
    return Receive(
        path_id=data.path_id,
        reply_path=raw_reply,
        encrypted_data=MappingProxyType(data_records),
        payload=MappingProxyType(records),
        reply=reply,
    )


def decrypt_recipient_data(shared_secret: bytes, encrypted: bytes) -> bytes:
    """Decrypt ``encrypted_recipient_data`` with the path key's shared secret.

    Raises :class:`EncryptedDataError` when it does not authenticate.
    """
    try:
        return ChaCha20Poly1305(_hmac256(b"rho", shared_secret)).decrypt(
            _ZERO_NONCE12, encrypted, None
        )
    except (InvalidTag, ValueError) as e:
        raise EncryptedDataError("encrypted_recipient_data does not decrypt") from e


def next_path_key(path_key: bytes, shared_secret: bytes) -> bytes:
    """``SHA256(E || ss) * E``: the path key for the next hop when there is no override."""
    return _tweak(_point(path_key, "path_key"), _sha256(path_key + shared_secret), "path_key")


def open_packet(
    onion: bytes, shared_secret: bytes, *, associated_data: bytes = b""
) -> tuple[bytes, bytes | None]:
    """One plain Sphinx layer given its shared secret: ``(payload, next packet or None)``.

    The generic "Onion Decryption" step without route blinding (used on BOLT 4's payment
    onion vector, which has associated data). ``None`` means this was the final hop.
    """
    ephemeral = _check_packet(onion)
    unwrapped, next_hmac, start, end = _unwrap(onion, shared_secret, associated_data)
    payload = unwrapped[start:end]
    if next_hmac == _ZERO_HMAC:
        return payload, None
    next_ephemeral = _tweak(
        ephemeral, _sha256(onion[1:HEADER_LEN] + shared_secret), "onion public_key"
    )
    after = end + HMAC_LEN
    area = len(onion) - OVERHEAD
    return payload, b"".join((b"\x00", next_ephemeral, unwrapped[after : after + area], next_hmac))


# --- building ----------------------------------------------------------------------------


def build_packet(
    hops: Sequence[tuple[bytes, bytes]],
    session_key: bytes,
    *,
    packet_size: int = DEFAULT_PACKET_SIZE,
    associated_data: bytes = b"",
) -> bytes:
    """Sphinx-construct a packet for ``hops``: ``(node public key, hop payload)`` pairs.

    The payloads are the raw TLV streams (this adds their BigSize length). The first
    ephemeral key is ``session_key``; the starting bytes come from its "pad" stream.
    """
    if not hops:
        raise ValueError("an onion needs at least one hop")
    area = packet_size - OVERHEAD
    if packet_size < MIN_ONION_PACKET_LEN or packet_size > MAX_ONION_PACKET_LEN:
        raise ValueError(f"packet size {packet_size} out of range")
    frames = [encode_bigsize(len(payload)) + payload for _, payload in hops]
    if sum(len(f) + HMAC_LEN for f in frames) > area:
        raise ValueError(f"payloads do not fit in a {packet_size}-byte packet")

    ephemeral = _scalar(session_key, "session key")
    shared: list[bytes] = []
    for node_id, _ in hops:
        private = PrivateKey(ephemeral.to_bytes(32, "big"))
        try:
            ss = private.ecdh(node_id)
        except ValueError as e:
            raise ValueError(f"hop key {node_id.hex()} is not a valid point") from e
        shared.append(ss)
        factor = int.from_bytes(_sha256(private.public_key.format() + ss), "big")
        ephemeral = ephemeral * factor % _CURVE_ORDER
    rhos = [_hmac256(b"rho", ss) for ss in shared]

    filler = b""
    for rho, frame in zip(rhos[:-1], frames[:-1], strict=True):
        shift = len(frame) + HMAC_LEN
        filler += bytes(shift)
        stream = _chacha20(rho, bytes(area + shift))
        filler = _xor(filler, stream[area + shift - len(filler) :])

    mix = _chacha20(_hmac256(b"pad", session_key), bytes(area))
    next_hmac = _ZERO_HMAC
    for i in range(len(hops) - 1, -1, -1):
        mix = _chacha20(rhos[i], (frames[i] + next_hmac + mix)[:area])
        if i == len(hops) - 1 and filler:
            mix = mix[: area - len(filler)] + filler
        next_hmac = _hmac256(_hmac256(b"mu", shared[i]), mix + associated_data)
    return b"\x00" + _pubkey_of(_scalar(session_key, "session key")) + mix + next_hmac


@dataclass(frozen=True)
class BlindedHopSpec:
    """One node of a blinded path to create, and what its encrypted data tells it.

    Set ``next_node_id`` or ``short_channel_id`` for every hop but the last (the
    recipient, which may carry ``path_id``). ``padding`` adds that many zero bytes of
    padding. ``extra`` adds other records (odd types; even ones make readers reject).
    To splice in another path, set ``next_path_key_override`` to its first path key; to
    keep building past that point give ``override_secret`` (its private key) instead or as
    well. ``encrypted_data`` replaces all the fields above with an exact record set.
    """

    node_id: bytes
    next_node_id: bytes | None = None
    short_channel_id: int | None = None
    next_path_key_override: bytes | None = None
    path_id: bytes | None = None
    padding: int = 0
    extra: Mapping[int, bytes] = field(default_factory=dict)
    override_secret: bytes | None = None
    encrypted_data: EncryptedData | None = None

    def to_encrypted_data(self) -> EncryptedData:
        if self.encrypted_data is not None:
            return self.encrypted_data
        override = self.next_path_key_override
        if override is None and self.override_secret is not None:
            override = _pubkey_of(_scalar(self.override_secret, "override_secret"))
        return EncryptedData(
            padding=bytes(self.padding) if self.padding else None,
            short_channel_id=self.short_channel_id,
            next_node_id=self.next_node_id,
            path_id=self.path_id,
            next_path_key_override=override,
            unknown=self.extra,
        )


def _pad_equal(datas: list[EncryptedData]) -> list[EncryptedData]:
    """Give every hop a padding record so all encrypted data has one length."""
    bare = [replace(d, padding=None) for d in datas]
    widths = [len(d.encode()) for d in bare]

    def padding_for(width: int, total: int) -> int | None:
        for header in (2, 4, 6):  # type byte + BigSize length of 1, 3 or 5 bytes
            size = total - width - header
            if size >= 0 and len(encode_bigsize(size)) + 1 == header:
                return size
        return None

    total = max(widths) + 2
    while any(padding_for(w, total) is None for w in widths):
        total += 1
    out = []
    for d, w in zip(bare, widths, strict=True):
        size = padding_for(w, total)
        assert size is not None
        out.append(replace(d, padding=bytes(size)))
    return out


def create_blinded_path(
    hops: Sequence[BlindedHopSpec], session_key: bytes, *, equal_length: bool = False
) -> BlindedPath:
    """Blind ``hops`` (introduction node first, recipient last) with ``session_key``.

    ``equal_length`` pads every hop's encrypted data to the same size (BOLT 4 SHOULD).
    """
    if not hops:
        raise ValueError("a blinded path needs at least one hop")
    datas = [spec.to_encrypted_data() for spec in hops]
    if equal_length:
        datas = _pad_equal(datas)
    ephemeral = _scalar(session_key, "session key")
    first_path_key = _pubkey_of(ephemeral)
    out: list[BlindedHop] = []
    for i, (spec, data) in enumerate(zip(hops, datas, strict=True)):
        private = PrivateKey(ephemeral.to_bytes(32, "big"))
        node = _point_or_value_error(spec.node_id, f"hop {i} node_id")
        ss = private.ecdh(spec.node_id)
        blinded = node.multiply(_hmac256(b"blinded_node_id", ss)).format()
        encrypted = ChaCha20Poly1305(_hmac256(b"rho", ss)).encrypt(
            _ZERO_NONCE12, data.encode(), None
        )
        out.append(BlindedHop(blinded, encrypted))
        if data.next_path_key_override is None:
            factor = int.from_bytes(_sha256(private.public_key.format() + ss), "big")
            ephemeral = ephemeral * factor % _CURVE_ORDER
        elif spec.override_secret is not None:
            ephemeral = _scalar(spec.override_secret, "override_secret")
            if _pubkey_of(ephemeral) != data.next_path_key_override:
                raise ValueError(f"hop {i}: override_secret does not match the override")
        elif i != len(hops) - 1:
            raise ValueError(f"hop {i}: continuing past an override needs override_secret")
    return BlindedPath(hops[0].node_id, first_path_key, tuple(out))


def _point_or_value_error(data: bytes, what: str) -> PublicKey:
    try:
        return _point(data, what)
    except PointError as e:
        raise ValueError(str(e)) from e


def build_onion_message(
    path: BlindedPath,
    payload: Mapping[int, bytes],
    session_key: bytes,
    *,
    intro_hops: Sequence[bytes] = (),
    packet_size: int = DEFAULT_PACKET_SIZE,
    intro_path_key: bytes | None = None,
    reply_path: BlindedPath | None = None,
) -> tuple[bytes, OnionMessage]:
    """Build an ``onion_message`` that travels ``path`` and delivers ``payload`` at its end.

    ``payload`` holds the final hop's records (types >= 64 or odd ones); ``reply_path`` adds
    one. ``intro_hops`` are plain node ids to pass first (the sender's peer first): the
    sender blinds them itself with ``intro_path_key`` (default: derived from
    ``session_key``) and the last one joins ``path`` through ``next_path_key_override``.
    Returns ``(node id of the peer to send to, message)``.
    """
    if TLV_ENCRYPTED_RECIPIENT_DATA in payload or (
        reply_path is not None and TLV_REPLY_PATH in payload
    ):
        raise ValueError("payload must not hold encrypted_recipient_data or a second reply_path")
    if intro_hops and intro_path_key is None:
        intro_path_key = _derived_secret(b"intro_path_key", session_key)
    first_hop, path_key, hops = _joined_hops(path, intro_hops, intro_path_key)
    final: dict[int, bytes] = dict(payload)
    if reply_path is not None:
        final[TLV_REPLY_PATH] = reply_path.encode()
    frames: list[tuple[bytes, bytes]] = []
    for i, hop in enumerate(hops):
        records = final if i == len(hops) - 1 else {}
        frames.append(
            (
                hop.blinded_node_id,
                encode_tlv_stream(
                    {**records, TLV_ENCRYPTED_RECIPIENT_DATA: hop.encrypted_recipient_data}
                ),
            )
        )
    return first_hop, OnionMessage(
        path_key, build_packet(frames, session_key, packet_size=packet_size)
    )


def _joined_hops(
    path: BlindedPath, intro_hops: Sequence[bytes], intro_path_key: bytes | None
) -> tuple[bytes, bytes, list[BlindedHop]]:
    """(first peer, path key to send with, every blinded hop) of ``path`` after ``intro_hops``."""
    if len(path.first_node_id) != POINT_LEN:
        raise ValueError("the path's first_node_id must be a node id, not a channel")
    if not path.hops:
        raise ValueError("the blinded path has no hops")
    if not intro_hops:
        return path.first_node_id, path.first_path_key, list(path.hops)
    specs = [BlindedHopSpec(node, next_node_id=after) for node, after in pairwise(intro_hops)]
    specs.append(
        BlindedHopSpec(
            intro_hops[-1],
            next_node_id=path.first_node_id,
            next_path_key_override=path.first_path_key,
        )
    )
    prefix = create_blinded_path(specs, intro_path_key or random_secret())
    return intro_hops[0], prefix.first_path_key, [*prefix.hops, *path.hops]


def final_payload_room(
    path: BlindedPath,
    *,
    intro_hops: Sequence[bytes] = (),
    packet_size: int = DEFAULT_PACKET_SIZE,
) -> int:
    """How many bytes of encoded final-hop records (payload TLVs, reply_path included) fit
    in a ``packet_size`` message along ``path`` after ``intro_hops``.

    Raises ValueError when not even an empty payload fits.
    """
    _, _, hops = _joined_hops(path, intro_hops, None)
    free = packet_size - OVERHEAD
    for hop in hops[:-1]:
        size = len(encode_tlv_stream({TLV_ENCRYPTED_RECIPIENT_DATA: hop.encrypted_recipient_data}))
        free -= len(encode_bigsize(size)) + size + HMAC_LEN
    base = len(encode_tlv_stream({TLV_ENCRYPTED_RECIPIENT_DATA: hops[-1].encrypted_recipient_data}))
    room = free - HMAC_LEN - base - 1
    while room >= 0 and len(encode_bigsize(base + room)) + base + room + HMAC_LEN > free:
        room -= 1
    if room < 0:
        raise ValueError(f"the path does not fit in a {packet_size}-byte packet")
    return room


def _derived_secret(label: bytes, secret: bytes) -> bytes:
    candidate = _hmac256(label, secret)
    while not 0 < int.from_bytes(candidate, "big") < _CURVE_ORDER:
        candidate = _sha256(candidate)
    return candidate


def message_via(
    route: Sequence[bytes | BlindedHopSpec],
    payload: Mapping[int, bytes] | None = None,
    *,
    intro_hops: Sequence[bytes] = (),
    path_id: bytes | None = None,
    reply_path: BlindedPath | None = None,
    packet_size: int = DEFAULT_PACKET_SIZE,
    session_key: bytes | None = None,
    path_session_key: bytes | None = None,
    equal_length: bool = False,
) -> tuple[bytes, OnionMessage]:
    """Blind ``route`` and build a message along it in one call.

    ``route`` lists the nodes of the blinded path, recipient last: a node id (forwarded to
    by ``next_node_id``, filled in from the next entry) or a :class:`BlindedHopSpec` for
    anything else (a hop without next_node_id/short_channel_id gets the next node's id).
    ``path_id`` goes to the recipient. Keys default to fresh random ones.
    Returns ``(node id of the peer to send to, message)``.
    """
    if not route:
        raise ValueError("route is empty")
    specs: list[BlindedHopSpec] = []
    for i, entry in enumerate(route):
        spec = entry if isinstance(entry, BlindedHopSpec) else BlindedHopSpec(entry)
        last = i == len(route) - 1
        if (
            not last
            and spec.encrypted_data is None
            and spec.next_node_id is None
            and spec.short_channel_id is None
        ):
            after = route[i + 1]
            next_id = after.node_id if isinstance(after, BlindedHopSpec) else after
            spec = replace(spec, next_node_id=next_id)
        if last and path_id is not None:
            spec = replace(spec, path_id=path_id)
        specs.append(spec)
    path = create_blinded_path(
        specs, path_session_key or random_secret(), equal_length=equal_length
    )
    return build_onion_message(
        path,
        payload or {},
        session_key or random_secret(),
        intro_hops=intro_hops,
        packet_size=packet_size,
        reply_path=reply_path,
    )
