"""Building BOLT 4 onion messages: blinded paths, Sphinx packets, whole messages.

Only tools, tests, simnet, benchmarks and the demo build messages; the daemon only reads
them (:mod:`lndmailbox.onion.reader`).

* :func:`create_blinded_path` makes a ``blinded_path`` from :class:`BlindedHopSpec` hops.
* :func:`build_onion_message` builds an ``onion_message`` to a blinded path, optionally
  reaching its introduction node through plain hops first (BOLT 4's joining case).
* :func:`message_via` does both for the common case "sender -> (intro hops) -> these nodes
  -> final payload".
* :func:`build_packet` is the bare Sphinx construction (any payloads, optional associated
  data); :func:`~lndmailbox.onion.reader.open_packet` is its one-layer inverse.
* :class:`LocalNodeKey` is a :class:`~lndmailbox.onion.reader.NodeKey` over a private key
  held in memory; :func:`final_payload_room` says how much payload a path leaves room for.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Final

from coincurve import PrivateKey, PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from lndmailbox.onion.primitives import (
    CURVE_ORDER,
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
    sha256,
)
from lndmailbox.onion.tlv import POINT_LEN, PointError, encode_bigsize, encode_tlv_stream
from lndmailbox.onion.wire import (
    HMAC_LEN,
    MAX_ONION_PACKET_LEN,
    MIN_ONION_PACKET_LEN,
    TLV_ENCRYPTED_RECIPIENT_DATA,
    TLV_REPLY_PATH,
    BlindedHop,
    BlindedPath,
    EncryptedData,
    OnionMessage,
)

__all__ = [
    "DEFAULT_PACKET_SIZE",
    "LARGE_PACKET_SIZE",
    "BlindedHopSpec",
    "LocalNodeKey",
    "build_onion_message",
    "build_packet",
    "create_blinded_path",
    "final_payload_room",
    "message_via",
    "random_secret",
]

DEFAULT_PACKET_SIZE: Final = 1366
"""The size BOLT 4 recommends first: an onion message that looks like an HTLC onion."""
LARGE_PACKET_SIZE: Final = 32834
"""The other size BOLT 4 recommends for larger messages."""


# --- keys --------------------------------------------------------------------------------


def random_secret() -> bytes:
    """A fresh valid secp256k1 private key (32 bytes) from the OS CSPRNG."""
    while True:
        candidate = secrets.token_bytes(32)
        if 0 < int.from_bytes(candidate, "big") < CURVE_ORDER:
            return candidate


def _scalar(secret: bytes, what: str) -> int:
    value = int.from_bytes(secret, "big")
    if len(secret) != 32 or not 0 < value < CURVE_ORDER:
        raise ValueError(f"{what}: not a valid 32-byte secp256k1 private key")
    return value


def _private(scalar: int) -> PrivateKey:
    return PrivateKey(scalar.to_bytes(32, "big"))


def _pubkey_of(scalar: int) -> bytes:
    return _private(scalar).public_key.format()


def _next_ephemeral(ephemeral: PrivateKey, shared_secret: bytes) -> int:
    """The next hop's ephemeral secret: ``e * SHA256(E || ss)``."""
    factor = next_key_tweak(ephemeral.public_key.format(), shared_secret)
    return ephemeral.to_int() * int.from_bytes(factor, "big") % CURVE_ORDER


def _derived_secret(label: bytes, secret: bytes) -> bytes:
    candidate = hmac256(label, secret)
    while not 0 < int.from_bytes(candidate, "big") < CURVE_ORDER:
        candidate = sha256(candidate)
    return candidate


class LocalNodeKey:
    """A :class:`~lndmailbox.onion.reader.NodeKey` over a private key held in memory
    (tools, tests, simnet)."""

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


# --- packets and paths -------------------------------------------------------------------


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


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
        private = _private(ephemeral)
        try:
            ss = private.ecdh(node_id)
        except ValueError as e:
            raise ValueError(f"hop key {node_id.hex()} is not a valid point") from e
        shared.append(ss)
        ephemeral = _next_ephemeral(private, ss)
    rhos = [rho(ss) for ss in shared]

    filler = b""
    for stream_key, frame in zip(rhos[:-1], frames[:-1], strict=True):
        shift = len(frame) + HMAC_LEN
        filler += bytes(shift)
        stream = chacha20(stream_key, bytes(area + shift))
        filler = _xor(filler, stream[area + shift - len(filler) :])

    mix = chacha20(hmac256(b"pad", session_key), bytes(area))
    next_hmac = ZERO_HMAC
    for i in range(len(hops) - 1, -1, -1):
        mix = chacha20(rhos[i], (frames[i] + next_hmac + mix)[:area])
        if i == len(hops) - 1 and filler:
            mix = mix[: area - len(filler)] + filler
        next_hmac = hmac256(mu(shared[i]), mix + associated_data)
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
        private = _private(ephemeral)
        node = _point_or_value_error(spec.node_id, f"hop {i} node_id")
        ss = private.ecdh(spec.node_id)
        blinded = node.multiply(blinding_tweak(ss)).format()
        encrypted = ChaCha20Poly1305(rho(ss)).encrypt(ZERO_NONCE12, data.encode(), None)
        out.append(BlindedHop(blinded, encrypted))
        if data.next_path_key_override is None:
            ephemeral = _next_ephemeral(private, ss)
        elif spec.override_secret is not None:
            ephemeral = _scalar(spec.override_secret, "override_secret")
            if _pubkey_of(ephemeral) != data.next_path_key_override:
                raise ValueError(f"hop {i}: override_secret does not match the override")
        elif i != len(hops) - 1:
            raise ValueError(f"hop {i}: continuing past an override needs override_secret")
    return BlindedPath(hops[0].node_id, first_path_key, tuple(out))


def _point_or_value_error(data: bytes, what: str) -> PublicKey:
    try:
        return point(data, what)
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
