"""Reading BOLT 4 onion messages: take one layer off, or only learn where it goes next.

    result = await peel(path_key, onion, node)   # Forward | Receive
    hop = await read_next_hop(path_key, encrypted_recipient_data, node)   # NextHop

``node`` is a :class:`NodeKey`: its ``ecdh`` is the only way to the node's private key and
``peel`` calls it exactly twice (first with the path key, then with the onion's ephemeral
key tweaked by ``HMAC256("blinded_node_id", ss)``). ``read_next_hop`` needs the first of
the two only: given this hop's ``encrypted_recipient_data`` (lnd 0.21 publishes it with
every message), it names the next hop exactly as ``peel`` would, without opening the
onion. Path keys repeat (every message sent over one blinded path arrives with the same),
onion keys never do, so ``peel`` takes a second key, ``path_node``, for the path key's
ECDH alone: a :class:`CachedNodeKey` there pays, and the onion's points never crowd it.
Everything else (HMAC-SHA256, the
ChaCha20 stream, ChaCha20-Poly1305 for ``encrypted_recipient_data``, point tweaks) runs
locally with ``cryptography`` and ``coincurve``.

``peel`` enforces every reader rule BOLT 4 sets for onion messages and raises only
:class:`~lndmailbox.errors.OnionError` subclasses for bad input, whatever the bytes (errors
from ``node.ecdh`` itself, such as an lnd RPC failure, pass through unchanged). The
``reason`` of each class is a stable label for metrics and logs:

============================  ======================  =================================
class                         reason                  when
============================  ======================  =================================
``tlv.LengthError``           ``bad_length``          packet shorter than 67 or longer
                                                      than 65535 bytes
``VersionError``              ``bad_version``         version byte is not 0
``tlv.PointError``            ``bad_point``           path key, onion key, next_node_id
                                                      or override not a valid point
``HmacError``                 ``bad_hmac``            packet HMAC does not match
``PayloadLengthError``        ``bad_payload_length``  hop payload length malformed or
                                                      past the end of the packet
``tlv.TlvError``              ``bad_tlv``             ``onionmsg_tlv`` breaks TLV rules
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

:func:`open_packet` is the plain Sphinx step (no route blinding, optional associated
data) given a shared secret. Building messages is :mod:`lndmailbox.onion.build`'s job.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from hmac import compare_digest
from types import MappingProxyType
from typing import Protocol

from coincurve import PublicKey
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from lndmailbox.errors import OnionError
from lndmailbox.onion.primitives import (
    HEADER_LEN,
    OVERHEAD,
    ZERO_HMAC,
    ZERO_NONCE12,
    blinding_tweak,
    chacha20,
    hmac256,
    mu,
    next_key_tweak,
    point,
    rho,
    tweak,
)
from lndmailbox.onion.tlv import (
    BigSizeError,
    LengthError,
    WireError,
    decode_bigsize,
    decode_tlv_stream,
)
from lndmailbox.onion.wire import (
    ENCRYPTED_DATA_KNOWN_EVEN,
    HMAC_LEN,
    MAX_ONION_PACKET_LEN,
    MIN_ONION_PACKET_LEN,
    ONIONMSG_KNOWN_EVEN,
    ONIONMSG_PAYLOAD_MIN_TYPE,
    TLV_ENCRYPTED_RECIPIENT_DATA,
    TLV_REPLY_PATH,
    BlindedPath,
    EncryptedData,
    OnionMessage,
)

__all__ = [
    "CachedNodeKey",
    "EncryptedDataError",
    "ForbiddenFieldError",
    "Forward",
    "HmacError",
    "MissingNextHopError",
    "MultiplePayloadsError",
    "NextHop",
    "NodeKey",
    "PathIdNotFinalError",
    "PayloadLengthError",
    "Receive",
    "ReplyPathError",
    "SphinxError",
    "UnknownFeatureError",
    "VersionError",
    "decrypt_recipient_data",
    "next_path_key",
    "open_packet",
    "peel",
    "read_next_hop",
]


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


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where a message goes next: exactly one of the two is set (when the encrypted data
    names both, ``next_node_id`` wins, as BOLT 4 says)."""

    next_node_id: bytes | None
    short_channel_id: int | None


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

    @property
    def next_hop(self) -> NextHop:
        return NextHop(self.next_node_id, self.short_channel_id)


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


# --- one Sphinx layer --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layer:
    """One layer of a packet: its HMAC checked, its hop payloads decrypted.

    ``unwrapped`` is ``hop_payloads || zeros`` XOR the rho stream (twice the payload
    area); this hop's payload is ``unwrapped[start:end]``, the next HMAC follows it.
    """

    packet: bytes
    ephemeral: PublicKey
    shared_secret: bytes
    unwrapped: bytes
    start: int
    end: int

    @property
    def payload(self) -> bytes:
        return self.unwrapped[self.start : self.end]

    @property
    def next_hmac(self) -> bytes:
        return self.unwrapped[self.end : self.end + HMAC_LEN]

    @property
    def final(self) -> bool:
        return self.next_hmac == ZERO_HMAC

    def next_packet(self) -> bytes:
        """The packet for the next hop: a new ephemeral key, the shifted payloads, the HMAC."""
        next_ephemeral = tweak(
            self.ephemeral,
            next_key_tweak(self.packet[1:HEADER_LEN], self.shared_secret),
            "onion public_key",
        )
        after = self.end + HMAC_LEN
        area = len(self.packet) - OVERHEAD
        rest = self.unwrapped[after : after + area]
        return b"".join((b"\x00", next_ephemeral, rest, self.next_hmac))


def _check_packet(onion: bytes) -> PublicKey:
    if not MIN_ONION_PACKET_LEN <= len(onion) <= MAX_ONION_PACKET_LEN:
        raise LengthError(f"onion packet of {len(onion)} bytes")
    if onion[0] != 0:
        raise VersionError(f"onion version {onion[0]}")
    return point(onion[1:HEADER_LEN], "onion public_key")


def _open_layer(onion: bytes, ephemeral: PublicKey, ss: bytes, associated_data: bytes) -> _Layer:
    """Check the HMAC of ``onion`` under ``ss`` and decrypt its hop payloads."""
    hop_payloads = onion[HEADER_LEN:-HMAC_LEN]
    expected = hmac256(mu(ss), hop_payloads + associated_data)
    if not compare_digest(expected, onion[-HMAC_LEN:]):
        raise HmacError("onion HMAC does not match")
    area = len(hop_payloads)
    # XOR with the stream is ChaCha20 encryption of the bytes themselves: done in C.
    unwrapped = chacha20(rho(ss), hop_payloads + bytes(area))
    try:
        length, start = decode_bigsize(unwrapped)
    except BigSizeError as e:
        raise PayloadLengthError(f"hop payload length: {e}") from e
    end = start + length
    if end + HMAC_LEN > area:
        raise PayloadLengthError(f"hop payload of {length} bytes runs past the packet")
    return _Layer(onion, ephemeral, ss, unwrapped, start, end)


# --- reading -----------------------------------------------------------------------------


async def peel(
    path_key: bytes, onion: bytes, node: NodeKey, *, path_node: NodeKey | None = None
) -> Forward | Receive:
    """Take one layer off an onion message received with ``path_key``.

    ``path_node`` (default ``node``) does the path key's ECDH: the node's key too, through
    a cache of path keys. Raises an :class:`~lndmailbox.errors.OnionError` subclass for any
    invalid input.
    """
    ephemeral = _check_packet(onion)
    point(path_key, "path_key")  # refused before any ECDH is asked for
    path_ss = await (node if path_node is None else path_node).ecdh(path_key)
    tweaked = tweak(ephemeral, blinding_tweak(path_ss), "onion public_key")
    layer = _open_layer(onion, ephemeral, await node.ecdh(tweaked), b"")

    records = decode_tlv_stream(layer.payload, ONIONMSG_KNOWN_EVEN)
    encrypted = records.get(TLV_ENCRYPTED_RECIPIENT_DATA)
    if encrypted is None:
        raise EncryptedDataError("no encrypted_recipient_data")
    if not layer.final and len(records) != 1:
        others = sorted(t for t in records if t != TLV_ENCRYPTED_RECIPIENT_DATA)
        raise ForbiddenFieldError(f"non-final hop payload has records {others}")
    data_records, data = _encrypted_data(path_ss, encrypted)
    if layer.final:
        return _receive(records, data_records, data)

    hop = _next_hop(data)
    override = data.next_path_key_override
    if override is not None:
        point(override, "next_path_key_override")
        next_key = override
    else:
        next_key = _next_path_key(path_key, path_ss)
    return Forward(hop.next_node_id, hop.short_channel_id, next_key, layer.next_packet(), encrypted)


async def read_next_hop(path_key: bytes, encrypted_recipient_data: bytes, node: NodeKey) -> NextHop:
    """The next hop this hop's ``encrypted_recipient_data`` names, with the path key's ECDH
    alone: what :func:`peel` of the same message would return as ``Forward.next_hop``.

    The onion itself is not read: its HMAC and payload rules are for whoever peels it (lnd
    has checked them before publishing the message). Raises :class:`EncryptedDataError`
    when the data does not decrypt under ``path_key`` or is not valid ``encrypted_data_tlv``,
    :class:`~lndmailbox.onion.tlv.PointError` for a bad path key or ``next_node_id``, and
    the errors of :func:`peel`'s next-hop rules (a final hop's data names no next hop:
    :class:`MissingNextHopError`, or :class:`PathIdNotFinalError` when it has a path_id).
    """
    point(path_key, "path_key")
    path_ss = await node.ecdh(path_key)
    _, data = _encrypted_data(path_ss, encrypted_recipient_data)
    return _next_hop(data)


def _next_hop(data: EncryptedData) -> NextHop:
    """A non-final hop's next hop, by BOLT 4's rules for its encrypted data."""
    if data.path_id is not None:
        raise PathIdNotFinalError("path_id at a non-final hop")
    if data.next_node_id is not None:
        point(data.next_node_id, "next_node_id")
        return NextHop(data.next_node_id, None)
    if data.short_channel_id is None:
        raise MissingNextHopError("neither next_node_id nor short_channel_id")
    return NextHop(None, data.short_channel_id)


def _encrypted_data(path_ss: bytes, encrypted: bytes) -> tuple[dict[int, bytes], EncryptedData]:
    """Decrypt and check ``encrypted_recipient_data``: (its records, the same decoded)."""
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
    return data_records, data


def _receive(
    records: dict[int, bytes], data_records: dict[int, bytes], data: EncryptedData
) -> Receive:
    raw_reply = records.get(TLV_REPLY_PATH)
    reply: BlindedPath | None = None
    if raw_reply is not None:
        try:
            reply = BlindedPath.decode(raw_reply)
            for reply_point in reply.points():
                point(reply_point, "reply_path")
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
        return ChaCha20Poly1305(rho(shared_secret)).decrypt(ZERO_NONCE12, encrypted, None)
    except (InvalidTag, ValueError) as e:
        raise EncryptedDataError("encrypted_recipient_data does not decrypt") from e


def next_path_key(path_key: bytes, shared_secret: bytes) -> bytes:
    """``SHA256(E || ss) * E``: the path key for the next hop when there is no override."""
    return _next_path_key(path_key, shared_secret)


@lru_cache(maxsize=4096)
def _next_path_key(path_key: bytes, shared_secret: bytes) -> bytes:
    # A function of the path key alone (its shared secret is): one scalar multiplication
    # saved per message over a blinded path seen before, as a CachedNodeKey saves its ECDH.
    return tweak(point(path_key, "path_key"), next_key_tweak(path_key, shared_secret), "path_key")


def open_packet(
    onion: bytes, shared_secret: bytes, *, associated_data: bytes = b""
) -> tuple[bytes, bytes | None]:
    """One plain Sphinx layer given its shared secret: ``(payload, next packet or None)``.

    The generic "Onion Decryption" step without route blinding (used on BOLT 4's payment
    onion vector, which has associated data). ``None`` means this was the final hop.
    """
    layer = _open_layer(onion, _check_packet(onion), shared_secret, associated_data)
    return layer.payload, None if layer.final else layer.next_packet()
