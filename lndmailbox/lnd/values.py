"""The values lndmailbox.lnd hands the rest of the package: never a ``_pb2`` object."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from lndmailbox.errors import ConfigError, OnionError

__all__ = [
    "Channel",
    "ChannelIndex",
    "IncomingLspsMessage",
    "IncomingMalformed",
    "IncomingOnionMessage",
    "NodeInfo",
    "PeerEvent",
    "Resubscribed",
    "Transport",
    "transport_for_version",
]


class Transport(enum.Enum):
    """How onion messages travel between lnd and the mailbox."""

    #: lnd 0.18 - 0.20: type 513 through SubscribeCustomMessages / SendCustomMessage
    #: (lnd started with ``protocol.custom-message=513``).
    CUSTOM = "custom"
    #: lnd >= 0.21: SubscribeOnionMessages / SendOnionMessage.
    NATIVE = "native"


_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


def transport_for_version(version: str) -> Transport:
    """The transport an lnd of this version supports (GetInfo's ``version``).

    ``"0.21.2-beta commit=v0.21.2-beta"`` -> NATIVE; ``"0.20.1-beta"`` -> CUSTOM.
    Raises :class:`ConfigError` when the text is not an lnd version.
    """
    match = _VERSION.match(version)
    if match is None:
        raise ConfigError(
            f"cannot tell lnd's onion message transport from its version {version!r}; "
            "set --transport custom (lnd <= 0.20) or native (lnd >= 0.21)"
        )
    major, minor = int(match.group(1)), int(match.group(2))
    return Transport.NATIVE if (major, minor) >= (0, 21) else Transport.CUSTOM


@dataclass(frozen=True)
class NodeInfo:
    """What GetInfo says about the node."""

    pubkey: bytes
    """The node's identity key, 33 bytes compressed."""
    alias: str
    version: str
    """lnd's version string, e.g. ``"0.21.2-beta commit=v0.21.2-beta"``; map it with
    :func:`transport_for_version` only when the settings leave the transport to lnd's
    version (``--transport auto``)."""
    features: frozenset[int] = frozenset()
    """Feature bits the node advertises (38/39: option_onion_messages)."""
    network: str = ""
    block_height: int = 0
    synced_to_chain: bool = False

    @property
    def advertises_onion_messages(self) -> bool:
        return bool(self.features & {38, 39})


@dataclass(frozen=True)
class Channel:
    """One of the node's open channels, as ListChannels shows it."""

    peer: bytes
    """The remote node, 33 bytes."""
    channel_point: str
    """``txid:output`` of the funding transaction."""
    chan_id: int
    """The channel's SCID in lnd: the real one, or a zero-conf channel's base alias."""
    private: bool
    """Unannounced (lnd's default for ``openchannel`` is public: no default here)."""
    alias_scids: tuple[int, ...] = ()
    """The node's own aliases of the channel (what it sent the peer in channel_ready)."""
    zero_conf: bool = False
    zero_conf_confirmed_scid: int = 0
    """A zero-conf channel's real SCID once lnd has seen 6 confirmations, else 0."""


@dataclass(frozen=True)
class ChannelIndex:
    """The node's channels, and every SCID that may name one of them -> its peer."""

    channels: tuple[Channel, ...]
    peers_by_scid: Mapping[int, bytes]
    """Each channel's ``chan_id``, ``zero_conf_confirmed_scid`` and aliases (ListChannels
    and ListAliases) -> the remote node: the custom transport's SCID map."""


@dataclass(frozen=True)
class PeerEvent:
    pubkey: bytes
    """The peer, 33 bytes compressed."""
    online: bool


@dataclass(frozen=True)
class IncomingOnionMessage:
    """An onion_message a peer sent to the node, as lnd reported it."""

    peer: bytes
    """The peer it came from, 33 bytes."""
    path_key: bytes
    onion: bytes
    encrypted_recipient_data: bytes = b""
    """This hop's ``encrypted_recipient_data`` as lnd 0.21 publishes it (still encrypted,
    lnd having checked the packet's HMAC): the next hop is in it. Empty on the custom
    transport, whose bytes are the bare ``onion_message``."""


@dataclass(frozen=True)
class IncomingMalformed:
    """A type-513 custom message whose body is not an onion_message (custom transport only).

    The stream goes on; the caller counts it as a malformed drop (``error.reason``).
    """

    peer: bytes
    data: bytes = field(repr=False)
    error: OnionError

    @property
    def reason(self) -> str:
        return self.error.reason


@dataclass(frozen=True)
class IncomingLspsMessage:
    """An LSPS0 message (custom message type 37913) a peer sent to the node.

    The payload is the peer's JSON-RPC bytes, unread: :mod:`lndmailbox.lsps` judges them.
    It is kept out of ``repr`` because a webhook registration carries the phone's push
    token, which must not reach a log line by way of a value's repr.
    """

    peer: bytes
    """The peer it came from, 33 bytes."""
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class Resubscribed:
    """A stream broke and is subscribed again: anything may have happened in between."""
