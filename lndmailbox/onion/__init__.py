"""BOLT 4 onion messages: the wire format, reading (peel) and building. Pure code.

============================  ==========================================================
module                        holds
============================  ==========================================================
:mod:`~.tlv`                  BOLT 1: BigSize, TLV streams, truncated integers,
                              short_channel_id, point shape, the :class:`WireError` family
:mod:`~.wire`                 BOLT 4: ``onion_message``, encrypted data, payloads,
                              blinded paths: bytes <-> frozen dataclasses
:mod:`~.primitives`           HMAC-SHA256, the ChaCha20 stream, point checks and tweaks,
                              the keys derived from a shared secret
:mod:`~.reader`               what the daemon runs: :func:`peel` (one layer, every
                              reader rule), :func:`read_next_hop` (the next hop from
                              encrypted_recipient_data alone), :class:`NodeKey`,
                              :class:`CachedNodeKey`, :class:`Forward` /
                              :class:`Receive` / :class:`NextHop`, the error family
:mod:`~.build`                what tools, tests, simnet and the bench run: blinded paths,
                              Sphinx packets, whole messages, :class:`LocalNodeKey`
============================  ==========================================================

Nothing here does I/O: no asyncio, sockets, gRPC or Redis (tests/test_purity.py checks).
The node's private key is reached only through :class:`NodeKey`.
"""

from lndmailbox.onion.build import (
    DEFAULT_PACKET_SIZE,
    LARGE_PACKET_SIZE,
    BlindedHopSpec,
    LocalNodeKey,
    build_onion_message,
    build_packet,
    create_blinded_path,
    final_payload_room,
    message_via,
    random_secret,
)
from lndmailbox.onion.reader import (
    CachedNodeKey,
    EncryptedDataError,
    ForbiddenFieldError,
    Forward,
    HmacError,
    MissingNextHopError,
    MultiplePayloadsError,
    NextHop,
    NodeKey,
    PathIdNotFinalError,
    PayloadLengthError,
    Receive,
    ReplyPathError,
    SphinxError,
    UnknownFeatureError,
    VersionError,
    decrypt_recipient_data,
    next_path_key,
    open_packet,
    peel,
    read_next_hop,
)
from lndmailbox.onion.tlv import BigSizeError, LengthError, PointError, TlvError, WireError
from lndmailbox.onion.wire import (
    ONION_MESSAGE_TYPE,
    BlindedHop,
    BlindedPath,
    EncryptedData,
    OnionMessage,
    OnionMessagePayload,
)

__all__ = [
    "DEFAULT_PACKET_SIZE",
    "LARGE_PACKET_SIZE",
    "ONION_MESSAGE_TYPE",
    "BigSizeError",
    "BlindedHop",
    "BlindedHopSpec",
    "BlindedPath",
    "CachedNodeKey",
    "EncryptedData",
    "EncryptedDataError",
    "ForbiddenFieldError",
    "Forward",
    "HmacError",
    "LengthError",
    "LocalNodeKey",
    "MissingNextHopError",
    "MultiplePayloadsError",
    "NextHop",
    "NodeKey",
    "OnionMessage",
    "OnionMessagePayload",
    "PathIdNotFinalError",
    "PayloadLengthError",
    "PointError",
    "Receive",
    "ReplyPathError",
    "SphinxError",
    "TlvError",
    "UnknownFeatureError",
    "VersionError",
    "WireError",
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
    "read_next_hop",
]
