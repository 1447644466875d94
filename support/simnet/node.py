"""SimNode: a stand-in lnd, a real gRPC server speaking lnd's protos, with simulated peers.

What it reproduces of lnd (checked in lnd v0.20.2-beta / v0.21.3-beta, and against those
binaries by the itest):

* Transport: TLS with a self-signed ECDSA certificate like lnd's ``tls.cert``; a macaroon,
  hex in the ``macaroon`` metadata header, checked on every call before the handler runs
  (lnd's interceptor order: RPC state, then macaroon). Refusals are plain errors in lnd, so
  gRPC reports them as ``UNKNOWN`` with lnd's text (``expected 1 macaroon, got 0``,
  ``verification failed: signature mismatch after caveat verification``,
  ``permission denied``...). A locked wallet answers ``wallet locked, unlock it to enable
  full RPC access`` (also ``UNKNOWN``).
* Peers: ``SubscribePeerEvents`` streams PEER_ONLINE / PEER_OFFLINE (hex pubkeys) from the
  moment of subscription, with no replay; ``ListPeers`` always agrees with the events sent.
* ``SendCustomMessage`` / ``SendOnionMessage`` to a peer that is not connected:
  ``NOT_FOUND`` "peer is not connected"; a bad peer key: ``UNKNOWN`` "invalid vertex length
  of N, want 33"; ``SendCustomMessage`` with a type below 32768 that lnd was not told to
  override: ``UNKNOWN`` "msg type: 513 not in custom range: <unknown> and not overridden".
* Personality LND_0_20: onion messages exist only as custom message type 513, and only when
  started with ``custom_message_513`` (lnd's ``protocol.custom-message=513``, default on
  here); the native onion RPCs are ``UNIMPLEMENTED`` "unknown method ... for service
  lnrpc.Lightning", as grpc-go answers for a method the server does not have. With
  ``custom_nodeann_39`` (lnd's ``protocol.custom-nodeann=39``, default: as
  ``custom_message_513``) GetInfo lists feature bit 39 as lnd 0.20 names a bit it does not
  know: ``{name: "unknown", is_required: false, is_known: false}``.
* Personality LND_0_21: onion messages go through lnd's own path: the channel-presence gate
  (unless ``onion_msg_relay_all``), per-peer and global token buckets (lnd's defaults), one
  Sphinx layer peeled with the node key, the next hop resolved, a message whose next hop is
  its sender dropped, a forward attempted to the next hop when it is online, and then the
  *incoming* message published to ``SubscribeOnionMessages`` whether the forward worked or
  not, with this hop's ``encrypted_recipient_data`` ciphertext as received (for a forwarded
  message too, not only for one addressed to the node). ``SubscribeCustomMessages`` never
  carries type 513. GetInfo lists feature bit 39 as
  ``{name: "onion-messages", is_required: false, is_known: true}``.
* The next hop's short_channel_id, on LND_0_21, resolves only when it is the one SCID lnd's
  channel graph holds the channel under (lnd's ``GraphNodeResolver.RemotePubFromSCID``: an
  exact graph lookup, no alias manager; itest/test_alias_facts.py), see
  :attr:`SimChannel.graph_scid`: a channel that confirmed before use by its real SCID, never
  by its aliases; a private zero-conf channel by its base alias, never by its confirmed real
  SCID; a public zero-conf channel by its alias until it has 6 confirmations, then by its
  real SCID only (read from lnd's source, not in the itest). Any other SCID is dropped before publication (``unknown_scid``), as lnd
  drops it ("Failed to fetch channel edges for SCID ...: edge not found"). The edge enters
  the graph at once here (lnd adds it up to about a second after the channel turns active).
* Channels (ListChannels, ListAliases) as lnd shows them: ``chan_id`` the real SCID, or
  for a zero-conf channel its base alias, with ``zero_conf`` set, the alias in
  ``alias_scids`` and the real SCID in ``zero_conf_confirmed_scid`` once confirmed
  (6 confirmations); ListAliases maps ``chan_id`` to the channel's aliases.
* ``Signer.DeriveSharedKey``: SHA256 of the compressed ECDH point with the node key.
* ``SignMessage`` signs with the node key as lnd does (:mod:`simnet.signing`); an empty
  ``msg`` is refused with lnd's ``need a message to sign`` (``UNKNOWN``: lnd checks for a
  nil slice, and an empty bytes field arrives as one). ``VerifyMessage`` recovers the
  signer and says ``valid`` only for a node in lnd's graph, here the node itself or a peer
  with a channel (lnd's graph holds a shell node for each channel's peer); the recovered
  key comes back either way, none when nothing can be recovered (``valid`` false, no
  error); a signature that is not z-base-32 fails with ``failed to decode signature:
  ...``, an empty ``msg`` with ``need a message to verify``.
* Custom messages of types from 32768 (LSPS0's 37913 among them) reach
  ``SubscribeCustomMessages`` on both personalities with no configuration, as in lnd.
* For tests: :attr:`SimNode.calls` counts the calls of each RPC; :meth:`SimNode.stall`
  holds a unary RPC's calls unanswered, as an lnd busy on it (a slow database) does.
  :attr:`IngestResult.subscribers` says how many subscribers heard a publication, and
  :attr:`SimNode.unheard` keeps those nobody heard: lnd keeps nothing for a subscriber
  that is not there (a daemon restarting), and only simnet can tell a test so.
* Restart: :meth:`SimNode.stop` ends every stream the way a client sees lnd's shutdown end
  it (see :data:`SHUTDOWN_STATUS`): custom and onion messages with ``UNAVAILABLE``
  "Stream removed (Socket closed)"; peer events cleanly (``OK``), one of the two endings
  real lnd shows there. :meth:`SimNode.start` serves again on the same port, certificate,
  node key and macaroons.

Everything runs on the event loop that calls :meth:`SimNode.start`; drive peers from it.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import coincurve
import grpc
import grpc.aio

from lndmailbox.errors import OnionError
from lndmailbox.lnd import LndEndpoint
from lndmailbox.lnd.lnrpc import lightning_pb2 as ln
from lndmailbox.lnd.lnrpc import signer_pb2 as signrpc
from lndmailbox.lsps import LSPS_MESSAGE_TYPE
from lndmailbox.onion import CachedNodeKey, Forward, LocalNodeKey, Receive, peel
from lndmailbox.onion.wire import ONION_MESSAGE_TYPE, OnionMessage
from simnet.macaroons import MacaroonError, MacaroonService, Op
from simnet.signing import ZBase32Error, recover_signer, sign_message
from simnet.tls import TlsPair, generate_tls_pair

log = logging.getLogger(__name__)

LIGHTNING = "lnrpc.Lightning"
SIGNER = "signrpc.Signer"

# lnwire.CustomTypeStart: message types from here on are application-defined.
CUSTOM_TYPE_START = 32768
# keychain.KeyFamilyNodeKey: the family of the node identity key.
KEY_FAMILY_NODE_KEY = 6
FEATURE_ONION_MESSAGES_OPTIONAL = 39


class Personality(enum.Enum):
    """Which lnd generation the node imitates."""

    LND_0_20 = "0.20"
    LND_0_21 = "0.21"

    @property
    def release(self) -> str:
        return {"0.20": "0.20.2-beta", "0.21": "0.21.3-beta"}[self.value]

    @property
    def version(self) -> str:
        """GetInfo.version as a release build reports it (``build.Version() + " commit=" + tag``)."""
        return f"{self.release} commit=v{self.release}"

    @property
    def native_onion_messages(self) -> bool:
        return self is Personality.LND_0_21


# Method -> what the macaroon must allow (rpcserver.go / signer_server.go permission maps).
PERMISSIONS: Mapping[str, tuple[Op, ...]] = {
    f"/{LIGHTNING}/GetInfo": (Op("info", "read"),),
    f"/{LIGHTNING}/ListPeers": (Op("peers", "read"),),
    f"/{LIGHTNING}/SubscribePeerEvents": (Op("peers", "read"),),
    f"/{LIGHTNING}/ListChannels": (Op("offchain", "read"),),
    f"/{LIGHTNING}/ListAliases": (Op("offchain", "read"),),
    f"/{LIGHTNING}/SubscribeCustomMessages": (Op("offchain", "read"),),
    f"/{LIGHTNING}/SendCustomMessage": (Op("offchain", "write"),),
    f"/{LIGHTNING}/SubscribeOnionMessages": (Op("offchain", "read"),),
    f"/{LIGHTNING}/SendOnionMessage": (Op("offchain", "write"),),
    f"/{LIGHTNING}/SignMessage": (Op("message", "write"),),
    f"/{LIGHTNING}/VerifyMessage": (Op("message", "read"),),
    f"/{SIGNER}/DeriveSharedKey": (Op("signer", "generate"),),
}


class SimnetError(Exception):
    """Simnet was driven in a way the real network cannot be (e.g. an offline peer sending)."""


class _RpcAbort(Exception):
    """Raised inside a handler: answer the call with this status, like lnd would."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _unknown(message: str) -> _RpcAbort:
    """An error lnd returns as a plain Go error: grpc-go turns it into UNKNOWN."""
    return _RpcAbort(grpc.StatusCode.UNKNOWN, message)


def _peer_not_connected() -> _RpcAbort:
    """lnd's ErrPeerNotConnected, which its RPC server maps to NOT_FOUND."""
    return _RpcAbort(grpc.StatusCode.NOT_FOUND, "peer is not connected")


@dataclass(frozen=True)
class OnionRateLimits:
    """lnd 0.21's onion-message ingress token buckets (``protocol.onion-msg-*``), in lnd's units.

    The defaults are lnd's. A zero rate or burst disables that bucket, as in lnd.
    """

    peer_kbps: int = 512
    peer_burst_bytes: int = 8 * 32 * 1024
    global_kbps: int = 5120
    global_burst_bytes: int = 50 * 32 * 1024


class _TokenBucket:
    def __init__(self, kbps: int, burst: int, now: float) -> None:
        self.rate = kbps * 125.0  # decimal kilobits per second -> bytes per second
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    @property
    def disabled(self) -> bool:
        return self.rate <= 0 or self.burst <= 0

    def allow(self, n: int, now: float) -> bool:
        if self.disabled:
            return True
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if n > self.tokens:
            return False
        self.tokens -= n
        return True


@dataclass(frozen=True)
class SimChannel:
    """A fully open channel between the node and one peer.

    ``scid``: ListChannels ``chan_id``, the real SCID, or for a ``zero_conf`` channel its
    base alias (lnd's funding manager gives a zero-conf channel an alias as its SCID).
    ``alias_scids``: the node's aliases of the channel (a zero-conf channel's base alias is
    among them). ``confirmed_scid``: a zero-conf channel's real SCID once its funding has 6
    confirmations (ListChannels ``zero_conf_confirmed_scid``), else 0.
    """

    peer: bytes
    scid: int
    alias_scids: tuple[int, ...] = ()
    private: bool = True
    zero_conf: bool = False
    confirmed_scid: int = 0

    @property
    def channel_point(self) -> str:
        txid = hashlib.sha256(b"simnet channel" + self.scid.to_bytes(8, "big")).hexdigest()
        return f"{txid}:{self.scid & 0xFFFF}"

    @property
    def graph_scid(self) -> int:
        """The one SCID lnd's channel graph holds the channel under, the only one lnd 0.21
        resolves a next hop by (funding/manager.go): ``scid``, except for a public zero-conf
        channel with 6 confirmations, whose edge moved to its real SCID."""
        if self.zero_conf and not self.private and self.confirmed_scid:
            return self.confirmed_scid
        return self.scid

    @property
    def all_scids(self) -> tuple[int, ...]:
        """Every SCID that names the channel somewhere in lnd (its SCID map, its aliases)."""
        scids = (self.scid, *self.alias_scids, self.confirmed_scid)
        return tuple(dict.fromkeys(s for s in scids if s))


@dataclass(frozen=True)
class IngestResult:
    """What the node did with one message a peer sent it.

    ``published``: handed to the streams (SubscribeOnionMessages on 0.21,
    SubscribeCustomMessages on 0.20); it reaches whoever is subscribed at that moment.
    ``forwarded_to``: the next peer that received the peeled message (0.21 only).
    ``drop_reason``: why lnd dropped it or could not forward it (``no_channel``,
    ``peer_rate_limit``, ``global_rate_limit``, ``peel: <reason>``, ``unknown_scid``,
    ``cycle``, ``next_hop_offline``, ``unknown_message``).
    ``subscribers``: how many subscribers the stream had when it was published (0: nobody
    heard it, and lnd keeps nothing for later; a subscriber whose process just died still
    counts until the server notices its connection is gone).
    """

    published: bool
    forwarded_to: bytes | None = None
    drop_reason: str | None = None
    subscribers: int = 0


@dataclass(frozen=True)
class Ingested:
    """One entry of :attr:`SimNode.ingested`: a message a peer sent and its fate."""

    sender: bytes
    msg_type: int
    data: bytes
    result: IngestResult


@dataclass(frozen=True)
class CustomMessageReceived:
    """A custom message (not an onion message) the node sent to a simulated peer."""

    msg_type: int
    data: bytes


def _parse_pubkey(data: bytes) -> bytes:
    """Validate a public key like btcec.ParsePubKey; return it compressed.

    Raises ValueError with the texts of lnd's secp256k1 library.
    """
    if len(data) not in (33, 65):
        raise ValueError(f"malformed public key: invalid length: {len(data)}")
    if len(data) == 33 and data[0] not in (2, 3):
        raise ValueError(f"invalid public key: unsupported format: {data[0]:x}")
    if len(data) == 65 and data[0] not in (4, 6, 7):
        raise ValueError(f"invalid public key: unsupported format: {data[0]:x}")
    try:
        return coincurve.PublicKey(data).format(compressed=True)
    except ValueError as e:
        if len(data) == 33:
            raise ValueError(
                f"invalid public key: x coordinate {data[1:].hex()} is not on the secp256k1 curve"
            ) from e
        raise ValueError("invalid public key: not on secp256k1 curve") from e


def _parse_raw_key(data: bytes) -> bytes | None:
    """signrpc's parseRawKeyBytes: 33 bytes parsed, none is None, any other length refused."""
    if not data:
        return None
    if len(data) != 33:
        raise ValueError("pubkey must be serialized in compressed format if specified")
    return _parse_pubkey(data)


def _ecdh(secret: bytes, point: bytes) -> bytes:
    """SHA256(compressed(secret * point)): lnd's keychain ECDH and BOLT 4's shared secret."""
    shared = coincurve.PublicKey(point).multiply(secret).format(compressed=True)
    return hashlib.sha256(shared).digest()


def _secret_from_seed(seed: bytes) -> bytes:
    """A valid secp256k1 secret derived from ``seed`` (deterministic, for named test keys)."""
    counter = 0
    while True:
        candidate = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        try:
            coincurve.PrivateKey(candidate)
        except ValueError:
            counter += 1
            continue
        return candidate


class SimPeer:
    """A Lightning node connected (or not) to the SimNode, holding its own key.

    It sends onion messages to the node and records what the node sends it, so a test can
    peel a delivered message with the peer's key and compare the payload.
    """

    def __init__(self, node: SimNode, name: str, secret: bytes, address: str) -> None:
        self.node = node
        self.name = name
        self.secret = secret
        self.key = LocalNodeKey(secret)
        self.pubkey: bytes = self.key.pubkey
        self.address = address
        self.online = False
        # Onion messages the node sent to this peer (SendOnionMessage, SendCustomMessage
        # type 513, or lnd 0.21's own forwarding), oldest first.
        self.received: list[OnionMessage] = []
        # Other custom messages the node sent, and type-513 bodies that did not parse.
        self.received_custom: list[CustomMessageReceived] = []
        self.malformed: list[bytes] = []
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        state = "online" if self.online else "offline"
        return f"SimPeer({self.name!r}, {self.pubkey.hex()[:16]}..., {state})"

    # --- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        """Connect to the node (PEER_ONLINE). Connecting an online peer does nothing."""
        self.node._peer_online(self)

    def disconnect(self) -> None:
        """Disconnect (PEER_OFFLINE). Disconnecting an offline peer does nothing."""
        self.node._peer_offline(self)

    def reconnect(self) -> None:
        """A new connection replacing the current one: lnd reports OFFLINE, then ONLINE."""
        self.node._peer_offline(self)
        self.node._peer_online(self)

    # --- sending to the node ------------------------------------------------------------

    async def send_onion_message(self, msg: OnionMessage) -> IngestResult:
        """Send an ``onion_message`` (type 513) to the node; return what the node did."""
        return await self.node._ingest(self, ONION_MESSAGE_TYPE, msg.encode())

    async def send_custom_message(self, msg_type: int, data: bytes) -> IngestResult:
        """Send any Lightning message by type (513 is an onion message, as on the wire)."""
        return await self.node._ingest(self, msg_type, data)

    async def lsps_request(self, payload: bytes) -> IngestResult:
        """Send an LSPS0 message (type 37913, ``payload`` its JSON-RPC bytes) to the node."""
        return await self.node._ingest(self, LSPS_MESSAGE_TYPE, payload)

    # --- what the peer got ----------------------------------------------------------------

    async def peel(self, msg: OnionMessage | None = None) -> Forward | Receive:
        """Peel ``msg`` (default: the last one received) with this peer's own key."""
        if msg is None:
            if not self.received:
                raise SimnetError(f"{self.name} has received no onion message")
            msg = self.received[-1]
        return await peel(msg.path_key, msg.onion, self.key)

    async def wait_received(self, count: int = 1) -> list[OnionMessage]:
        """Wait until this peer holds at least ``count`` onion messages; return them all.

        Bound it with ``asyncio.timeout``.
        """
        while len(self.received) < count:
            self._changed.clear()
            await self._changed.wait()
        return list(self.received)

    def lsps_received(self) -> list[bytes]:
        """The payloads of the LSPS0 messages (type 37913) the node sent this peer, oldest
        first."""
        return [m.data for m in self.received_custom if m.msg_type == LSPS_MESSAGE_TYPE]

    async def wait_lsps(self, count: int = 1) -> list[bytes]:
        """Wait until the node has sent this peer at least ``count`` LSPS0 messages (type
        37913); return all their payloads, oldest first. Bound it with ``asyncio.timeout``."""
        while len(received := self.lsps_received()) < count:
            self._changed.clear()
            await self._changed.wait()
        return received

    def _deliver(self, msg_type: int, data: bytes) -> None:
        if msg_type == ONION_MESSAGE_TYPE:
            try:
                self.received.append(OnionMessage.decode(data))
            except OnionError:
                self.malformed.append(data)
        else:
            self.received_custom.append(CustomMessageReceived(msg_type, data))
        self._changed.set()


_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

# lnd's gRPC server settings (lnd.go, config.go defaults): it pings idle clients every
# minute (20 s to answer), lets clients ping every 5 s or more while a call is open, and
# takes messages up to 200 MiB. grpc's own server default would send a client pinging
# every 30 s a GOAWAY "too_many_pings" that lnd never sends.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_receive_message_length", 200 * 1024 * 1024),
)
_SHUTDOWN = object()
STREAMS = ("peer_events", "custom_messages", "onion_messages")

# How a gRPC client sees lnd's orderly shutdown end SubscribeCustomMessages and
# SubscribeOnionMessages (itest against lnd 0.20.2 / 0.21.3: 6 times out of 6): the server
# drops the connection under the open stream and the client's transport reports it as
# UNAVAILABLE with this text. simnet sends that status itself, so every client sees the
# same ending whatever the timing. SubscribePeerEvents ends either cleanly (OK) or with
# this same status in real lnd (about half each, depending on timing); simnet always ends
# it cleanly (OK), so clients must handle both endings anyway.
SHUTDOWN_STATUS: tuple[grpc.StatusCode, str] = (
    grpc.StatusCode.UNAVAILABLE,
    "Stream removed (Socket closed)",
)


class SimNode:
    """A stand-in lnd node: gRPC over TLS on a loopback port, macaroon-checked, with peers.

    ``SimNode(personality)`` then ``await node.start()``; connect the mailbox with
    :attr:`endpoint` (admin macaroon) or bake a narrower macaroon with
    :meth:`bake_macaroon`. Peers: :meth:`add_peer`, ``peer.connect()``,
    :meth:`open_channel`. ``await node.stop()`` ends every stream; ``await node.start()``
    again serves on the same port with the same certificate, keys and macaroons.
    """

    def __init__(
        self,
        personality: Personality = Personality.LND_0_21,
        *,
        alias: str = "simnet",
        host: str = "127.0.0.1",
        port: int = 0,
        node_secret: bytes | None = None,
        tls: TlsPair | None = None,
        macaroon_root_key: bytes | None = None,
        custom_message_513: bool | None = None,
        custom_nodeann_39: bool | None = None,
        onion_msg_relay_all: bool = False,
        onion_rate_limits: OnionRateLimits | None = OnionRateLimits(),
        network: str = "regtest",
        block_height: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.personality = personality
        self.alias = alias
        self.host = host
        self._port = port
        self.secret = node_secret if node_secret is not None else _secret_from_seed(os.urandom(32))
        self.key = LocalNodeKey(self.secret)
        self.pubkey: bytes = self.key.pubkey
        # The path key's ECDH of each peel, remembered: messages over one blinded path all
        # come with its path key (a sender reusing an offer's paths), and the answer is the
        # same every time, so only the cost changes (lnd's own is in Go).
        self._path_key_ecdh = CachedNodeKey(self.key)
        self.tls = tls if tls is not None else generate_tls_pair()
        self.macaroons = MacaroonService(macaroon_root_key)
        self.admin_macaroon = self.macaroons.bake_admin()
        # lnd's protocol.custom-message=513; on by default only where it means something.
        self.custom_message_513 = (
            custom_message_513
            if custom_message_513 is not None
            else personality is Personality.LND_0_20
        )
        # lnd's protocol.custom-nodeann=39 (with custom-init=39, the lines that go with
        # custom-message=513): 0.20 then advertises bit 39 without knowing it. 0.21
        # advertises it natively whatever this says.
        self.custom_nodeann_39 = (
            custom_nodeann_39 if custom_nodeann_39 is not None else self.custom_message_513
        )
        self.onion_msg_relay_all = onion_msg_relay_all
        self.onion_rate_limits = onion_rate_limits
        self.network = network
        self.block_height = block_height
        self.wallet_locked = False
        self._clock = clock

        self.peers: dict[bytes, SimPeer] = {}
        self.channels: list[SimChannel] = []
        # Every message a peer sent the node, with what became of it.
        self.ingested: list[Ingested] = []
        # The published ones that no subscriber heard (IngestResult.subscribers == 0).
        self.unheard: list[Ingested] = []

        self._server: grpc.aio.Server | None = None
        self._subscribers: dict[str, set[asyncio.Queue[Any]]] = {name: set() for name in STREAMS}
        self._subscribers_changed = asyncio.Event()
        self._peer_buckets: dict[bytes, _TokenBucket] = {}
        self._global_bucket: _TokenBucket | None = None
        self._reconnect_after_restart: list[SimPeer] = []
        self._next_peer_port = 40000
        # Calls by method name ("ListChannels"), counted once authorized.
        self.calls: dict[str, int] = {}
        self._stalled: dict[str, asyncio.Event] = {}

    # --- identity and credentials ---------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise SimnetError("the node has no port before its first start()")
        return self._port

    @property
    def target(self) -> str:
        """``host:port`` of the RPC server (lncli's --rpcserver)."""
        return f"{self.host}:{self.port}"

    @property
    def endpoint(self) -> LndEndpoint:
        """Where and how to reach the node with the admin macaroon."""
        return self.endpoint_with(self.admin_macaroon)

    def endpoint_with(self, macaroon: bytes) -> LndEndpoint:
        return LndEndpoint(target=self.target, tls_cert=self.tls.cert_pem, macaroon=macaroon)

    def bake_macaroon(self, permissions: Iterable[str], *, caveats: Sequence[str] = ()) -> bytes:
        """A macaroon for ``"entity:action"`` permissions (``"uri:/lnrpc.Lightning/GetInfo"``
        works too), signed with this node's root key; ``caveats`` are first-party conditions
        such as :func:`~simnet.macaroons.time_before_caveat`."""
        return self.macaroons.bake(permissions, caveats=caveats)

    def write_credentials(self, directory: Path) -> tuple[Path, Path]:
        """Write ``tls.cert`` and ``admin.macaroon`` into ``directory``; return both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        cert = directory / "tls.cert"
        mac = directory / "admin.macaroon"
        cert.write_bytes(self.tls.cert_pem)
        mac.write_bytes(self.admin_macaroon)
        mac.chmod(0o600)
        return cert, mac

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self, *, reconnect_peers: bool = True) -> None:
        """Serve on ``host:port`` (a free port the first time when port is 0).

        After a restart, the peers that were online at :meth:`stop` connect again (lnd keeps
        persistent connections to its channel peers) unless ``reconnect_peers`` is false.
        """
        if self._server is not None:
            raise SimnetError("already running")
        server = grpc.aio.server(handlers=[*self._handlers()], options=SERVER_OPTIONS)
        creds = grpc.ssl_server_credentials([(self.tls.key_pem, self.tls.cert_pem)])
        try:
            port = server.add_secure_port(f"{self.host}:{self._port}", creds)
        except RuntimeError as e:
            raise SimnetError(f"cannot listen on {self.host}:{self._port}: {e}") from e
        if not port:
            raise SimnetError(f"cannot listen on {self.host}:{self._port}")
        self._port = port
        await server.start()
        self._server = server
        log.debug("simnet %s listening on %s", self.personality.release, self.target)
        reconnect, self._reconnect_after_restart = self._reconnect_after_restart, []
        if reconnect_peers:
            for peer in reconnect:
                peer.connect()

    async def stop(self, *, grace: float = 1.0, abrupt: bool = False) -> None:
        """Shut down: streams end as in lnd's shutdown, connected peers drop off.

        ``abrupt`` skips the orderly end of streams (like a crashed lnd: clients see the
        connection go away).
        """
        server, self._server = self._server, None
        if server is None:
            return
        if not abrupt:
            for queues in self._subscribers.values():
                for queue in queues:
                    queue.put_nowait(_SHUTDOWN)
        self._reconnect_after_restart = [p for p in self.peers.values() if p.online]
        for peer in self._reconnect_after_restart:
            peer.online = False
        await server.stop(None if abrupt else grace)
        for queues in self._subscribers.values():
            queues.clear()

    async def __aenter__(self) -> SimNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- peers and channels ---------------------------------------------------------------

    def add_peer(self, name: str, *, secret: bytes | None = None, connect: bool = False) -> SimPeer:
        """A new simulated peer (offline until ``connect()``), with a key derived from
        ``name`` unless ``secret`` is given, so named peers keep their identity across runs."""
        if secret is None:
            secret = _secret_from_seed(b"simnet peer " + name.encode())
        self._next_peer_port += 1
        peer = SimPeer(self, name, secret, f"127.0.0.1:{self._next_peer_port}")
        if peer.pubkey in self.peers:
            raise SimnetError(f"a peer with key {peer.pubkey.hex()} exists already")
        if peer.pubkey == self.pubkey:
            raise SimnetError("a peer cannot have the node's own key")
        self.peers[peer.pubkey] = peer
        if connect:
            peer.connect()
        return peer

    def peer(self, name: str) -> SimPeer:
        for p in self.peers.values():
            if p.name == name:
                return p
        raise KeyError(name)

    def open_channel(
        self,
        peer: SimPeer,
        scid: int,
        alias_scids: Iterable[int] = (),
        *,
        private: bool = True,
        zero_conf: bool = False,
        confirmed_scid: int = 0,
    ) -> SimChannel:
        """A fully open channel with ``peer``, known by ``scid`` and its aliases.

        A channel that confirmed before use: ``scid`` is its real SCID, ``alias_scids`` the
        aliases lnd gave it (the one sent in channel_ready, with option_scid_alias). A
        ``zero_conf`` (scid-alias) channel, as an LSP opens to a phone: ``scid`` is its base
        alias (also listed in ``alias_scids``), ``confirmed_scid`` its real SCID once it has
        6 confirmations (0: not yet).
        """
        if peer.node is not self:
            raise SimnetError("the peer belongs to another node")
        aliases = tuple(alias_scids)
        if zero_conf:
            aliases = (scid, *(a for a in aliases if a != scid))
        elif confirmed_scid:
            raise SimnetError("only a zero-conf channel has a confirmed SCID of its own")
        channel = SimChannel(peer.pubkey, scid, aliases, private, zero_conf, confirmed_scid)
        taken = {s for c in self.channels for s in c.all_scids}
        clash = taken.intersection(channel.all_scids)
        if clash:
            raise SimnetError(f"short channel id(s) in use: {sorted(clash)}")
        self.channels.append(channel)
        return channel

    def close_channel(self, scid: int) -> None:
        self.channels = [c for c in self.channels if c.scid != scid]

    def graph_peer(self, scid: int) -> bytes | None:
        """The remote node of the channel lnd's graph holds under ``scid``
        (:attr:`SimChannel.graph_scid`): what lnd 0.21 resolves a next hop's SCID to."""
        for channel in self.channels:
            if scid == channel.graph_scid:
                return channel.peer
        return None

    def online_peers(self) -> list[SimPeer]:
        return [p for p in self.peers.values() if p.online]

    def _peer_online(self, peer: SimPeer) -> None:
        if peer.online:
            return
        if not self.running:
            raise SimnetError("the node is not running: nothing to connect to")
        peer.online = True
        self._publish(
            "peer_events", ln.PeerEvent(pub_key=peer.pubkey.hex(), type=ln.PeerEvent.PEER_ONLINE)
        )

    def _peer_offline(self, peer: SimPeer) -> None:
        if not peer.online:
            return
        peer.online = False
        self._publish(
            "peer_events", ln.PeerEvent(pub_key=peer.pubkey.hex(), type=ln.PeerEvent.PEER_OFFLINE)
        )

    # --- subscriptions --------------------------------------------------------------------

    def subscriber_count(self, stream: str) -> int:
        return len(self._subscribers[stream])

    async def wait_for_subscribers(self, stream: str, count: int = 1) -> None:
        """Wait until ``stream`` (one of :data:`STREAMS`) has at least ``count`` subscribers.

        lnd starts a subscription some time after the client opened the call, and sends
        nothing for it until an event happens; tests use this to avoid racing that. Bound
        it with ``asyncio.timeout``.
        """
        await self.wait_until_subscribers(stream, lambda n: n >= count)

    async def wait_until_subscribers(self, stream: str, check: Callable[[int], bool]) -> None:
        """Wait until ``check(number of subscribers of stream)`` holds."""
        if stream not in self._subscribers:
            raise ValueError(f"unknown stream {stream!r}; one of {STREAMS}")
        while not check(len(self._subscribers[stream])):
            self._subscribers_changed.clear()
            await self._subscribers_changed.wait()

    def stall(self, rpc: str) -> None:
        """Holds every later call of the unary ``rpc`` (``"ListChannels"``...) unanswered, as
        an lnd busy on it does, until :meth:`unstall`; the caller's deadline or
        cancellation still ends the call. :attr:`calls` counts the calls held too."""
        self._stalled.setdefault(rpc, asyncio.Event())

    def unstall(self, rpc: str) -> None:
        """Answers the calls :meth:`stall` holds, and every later one, again."""
        stalled = self._stalled.pop(rpc, None)
        if stalled is not None:
            stalled.set()

    def _publish(self, stream: str, item: object) -> int:
        """Hands ``item`` to the stream's subscribers; returns how many there were."""
        queues = self._subscribers[stream]
        for queue in queues:
            queue.put_nowait(item)
        return len(queues)

    async def _subscription(self, stream: str) -> AsyncIterator[Any]:
        """Items published on ``stream`` from now on; ends (returns) at shutdown."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._subscribers[stream].add(queue)
        self._subscribers_changed.set()
        try:
            while True:
                item = await queue.get()
                if item is _SHUTDOWN:
                    return
                yield item
        finally:
            self._subscribers[stream].discard(queue)
            self._subscribers_changed.set()

    # --- receiving from peers --------------------------------------------------------------

    async def _ingest(self, peer: SimPeer, msg_type: int, data: bytes) -> IngestResult:
        if not peer.online:
            raise SimnetError(f"{peer.name} is not connected to the node and cannot send")
        if msg_type == ONION_MESSAGE_TYPE and self.personality.native_onion_messages:
            result = await self._ingest_onion(peer, data)
        elif msg_type >= CUSTOM_TYPE_START or (
            msg_type == ONION_MESSAGE_TYPE and self.custom_message_513
        ):
            heard = self._publish(
                "custom_messages", ln.CustomMessage(peer=peer.pubkey, type=msg_type, data=data)
            )
            result = IngestResult(published=True, subscribers=heard)
        else:
            # lnd does not know the type and was not told to pass it on: it notes an
            # "unknown message type" error for the peer and moves on.
            result = IngestResult(published=False, drop_reason="unknown_message")
        ingested = Ingested(peer.pubkey, msg_type, data, result)
        self.ingested.append(ingested)
        if result.published and not result.subscribers:
            self.unheard.append(ingested)
        return result

    def _rate_limited(self, peer: SimPeer, size: int) -> str | None:
        limits = self.onion_rate_limits
        if limits is None:
            return None
        now = self._clock()
        bucket = self._peer_buckets.get(peer.pubkey)
        if bucket is None:
            bucket = _TokenBucket(limits.peer_kbps, limits.peer_burst_bytes, now)
            self._peer_buckets[peer.pubkey] = bucket
        if not bucket.allow(size, now):
            return "peer_rate_limit"
        if self._global_bucket is None:
            self._global_bucket = _TokenBucket(limits.global_kbps, limits.global_burst_bytes, now)
        if not self._global_bucket.allow(size, now):
            return "global_rate_limit"
        return None

    async def _ingest_onion(self, peer: SimPeer, data: bytes) -> IngestResult:
        """lnd 0.21: gates, peel, forward to an online next hop, publish the incoming one."""
        if not self.onion_msg_relay_all and not any(c.peer == peer.pubkey for c in self.channels):
            return IngestResult(published=False, drop_reason="no_channel")
        try:
            msg = OnionMessage.decode(data)
        except OnionError as e:
            return IngestResult(published=False, drop_reason=f"decode: {e.reason}")
        # lnd charges the on-the-wire size: type, path key, length and packet.
        limited = self._rate_limited(peer, 2 + 33 + 2 + len(msg.onion))
        if limited:
            return IngestResult(published=False, drop_reason=limited)
        try:
            action = await peel(msg.path_key, msg.onion, self.key, path_node=self._path_key_ecdh)
        except OnionError as e:
            return IngestResult(published=False, drop_reason=f"peel: {e.reason}")

        update = ln.OnionMessageUpdate(peer=peer.pubkey, path_key=msg.path_key, onion=msg.onion)
        # lnd always sets reply_path, empty when the payload has none.
        update.reply_path.SetInParent()
        forwarded_to: bytes | None = None
        reason: str | None = None
        if isinstance(action, Forward):
            if action.next_node_id is not None:
                next_node: bytes | None = action.next_node_id
            else:
                assert action.short_channel_id is not None
                # lnd looks the SCID up in its graph only: an alias of a channel the graph
                # holds under another SCID is unknown to it.
                next_node = self.graph_peer(action.short_channel_id)
            if next_node is None:
                # lnd logs "Failed to fetch channel edges for SCID ...: edge not found".
                return IngestResult(published=False, drop_reason="unknown_scid")
            if next_node == peer.pubkey:
                return IngestResult(published=False, drop_reason="cycle")
            target = self.peers.get(next_node)
            # lnd hands subscribers this hop's encrypted_recipient_data when it forwards too.
            update.encrypted_recipient_data = action.encrypted_recipient_data
            if target is not None and target.online:
                out = OnionMessage(action.next_path_key, action.next_onion)
                target._deliver(ONION_MESSAGE_TYPE, out.encode())
                forwarded_to = next_node
            else:
                # lnd logs "Failed to forward onion message" and carries on.
                reason = "next_hop_offline"
        else:
            _fill_receive(update, action)
        heard = self._publish("onion_messages", update)
        return IngestResult(
            published=True, forwarded_to=forwarded_to, drop_reason=reason, subscribers=heard
        )

    # --- gRPC plumbing ----------------------------------------------------------------------

    async def _authorize(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
        if self.wallet_locked:
            raise _unknown("wallet locked, unlock it to enable full RPC access")
        values = [v for k, v in (context.invocation_metadata() or ()) if k == "macaroon"]
        try:
            self.macaroons.check([str(v) for v in values], PERMISSIONS[method], method)
        except MacaroonError as e:
            raise _unknown(str(e)) from e

    def _unary(
        self,
        service: str,
        name: str,
        request_type: Any,
        response_type: Any,
        impl: Callable[[Any], Awaitable[Any]],
    ) -> _Handler:
        method = f"/{service}/{name}"

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                await self._authorize(context, method)
                self.calls[name] = self.calls.get(name, 0) + 1
                if (stalled := self._stalled.get(name)) is not None:
                    await stalled.wait()
                return await impl(request)
            except _RpcAbort as e:
                await context.abort(e.code, e.message)

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )

    def _stream(
        self,
        service: str,
        name: str,
        request_type: Any,
        response_type: Any,
        impl: Callable[[Any], AsyncIterator[Any]],
    ) -> _Handler:
        method = f"/{service}/{name}"

        async def handle(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                await self._authorize(context, method)
                self.calls[name] = self.calls.get(name, 0) + 1
                async for item in impl(request):
                    yield item
            except _RpcAbort as e:
                await context.abort(e.code, e.message)

        return grpc.unary_stream_rpc_method_handler(
            handle,
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )

    def _missing(self, service: str, name: str, streaming: bool) -> _Handler:
        """A method this lnd version does not have: grpc-go's UNIMPLEMENTED, no auth."""
        text = f"unknown method {name} for service {service}"

        async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, text)
            raise AssertionError("unreachable")

        async def stream(
            request: bytes, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[bytes]:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, text)
            yield b""  # pragma: no cover - abort raises

        if streaming:
            return grpc.unary_stream_rpc_method_handler(stream)
        return grpc.unary_unary_rpc_method_handler(unary)

    def _handlers(self) -> Iterable[grpc.GenericRpcHandler[Any, Any]]:
        lightning: dict[str, _Handler] = {
            "GetInfo": self._unary(
                LIGHTNING, "GetInfo", ln.GetInfoRequest, ln.GetInfoResponse, self._get_info
            ),
            "ListPeers": self._unary(
                LIGHTNING, "ListPeers", ln.ListPeersRequest, ln.ListPeersResponse, self._list_peers
            ),
            "SubscribePeerEvents": self._stream(
                LIGHTNING,
                "SubscribePeerEvents",
                ln.PeerEventSubscription,
                ln.PeerEvent,
                self._subscribe_peer_events,
            ),
            "ListChannels": self._unary(
                LIGHTNING,
                "ListChannels",
                ln.ListChannelsRequest,
                ln.ListChannelsResponse,
                self._list_channels,
            ),
            "ListAliases": self._unary(
                LIGHTNING,
                "ListAliases",
                ln.ListAliasesRequest,
                ln.ListAliasesResponse,
                self._list_aliases,
            ),
            "SendCustomMessage": self._unary(
                LIGHTNING,
                "SendCustomMessage",
                ln.SendCustomMessageRequest,
                ln.SendCustomMessageResponse,
                self._send_custom_message,
            ),
            "SubscribeCustomMessages": self._stream(
                LIGHTNING,
                "SubscribeCustomMessages",
                ln.SubscribeCustomMessagesRequest,
                ln.CustomMessage,
                self._subscribe_custom_messages,
            ),
            "SignMessage": self._unary(
                LIGHTNING,
                "SignMessage",
                ln.SignMessageRequest,
                ln.SignMessageResponse,
                self._sign_message,
            ),
            "VerifyMessage": self._unary(
                LIGHTNING,
                "VerifyMessage",
                ln.VerifyMessageRequest,
                ln.VerifyMessageResponse,
                self._verify_message,
            ),
        }
        if self.personality.native_onion_messages:
            lightning["SendOnionMessage"] = self._unary(
                LIGHTNING,
                "SendOnionMessage",
                ln.SendOnionMessageRequest,
                ln.SendOnionMessageResponse,
                self._send_onion_message,
            )
            lightning["SubscribeOnionMessages"] = self._stream(
                LIGHTNING,
                "SubscribeOnionMessages",
                ln.SubscribeOnionMessagesRequest,
                ln.OnionMessageUpdate,
                self._subscribe_onion_messages,
            )
        else:
            lightning["SendOnionMessage"] = self._missing(LIGHTNING, "SendOnionMessage", False)
            lightning["SubscribeOnionMessages"] = self._missing(
                LIGHTNING, "SubscribeOnionMessages", True
            )
        signer = {
            "DeriveSharedKey": self._unary(
                SIGNER,
                "DeriveSharedKey",
                signrpc.SharedKeyRequest,
                signrpc.SharedKeyResponse,
                self._derive_shared_key,
            )
        }
        return (
            grpc.method_handlers_generic_handler(LIGHTNING, lightning),
            grpc.method_handlers_generic_handler(SIGNER, signer),
        )

    # --- the RPCs ----------------------------------------------------------------------------

    async def _get_info(self, request: Any) -> Any:
        resp = ln.GetInfoResponse(
            version=self.personality.version,
            commit_hash=hashlib.sha1(self.personality.release.encode()).hexdigest(),
            identity_pubkey=self.pubkey.hex(),
            alias=self.alias,
            num_peers=len(self.online_peers()),
            block_height=self.block_height,
            synced_to_chain=True,
            uris=[f"{self.pubkey.hex()}@127.0.0.1:9735"],
        )
        resp.chains.add(network=self.network)
        if self.personality.native_onion_messages:
            feature = resp.features[FEATURE_ONION_MESSAGES_OPTIONAL]
            feature.name = "onion-messages"
            feature.is_required = False
            feature.is_known = True
        elif self.custom_nodeann_39:
            # A custom node-announcement bit lnd 0.20 has no name for.
            feature = resp.features[FEATURE_ONION_MESSAGES_OPTIONAL]
            feature.name = "unknown"
            feature.is_required = False
            feature.is_known = False
        return resp

    async def _list_peers(self, request: Any) -> Any:
        resp = ln.ListPeersResponse()
        for peer in self.online_peers():
            rpc_peer = resp.peers.add(pub_key=peer.pubkey.hex(), address=peer.address, inbound=True)
            # Every simulated peer advertises option_onion_messages (bit 39); lnd 0.20 does
            # not know that bit's name.
            feature = rpc_peer.features[FEATURE_ONION_MESSAGES_OPTIONAL]
            feature.is_required = False
            if self.personality.native_onion_messages:
                feature.name = "onion-messages"
                feature.is_known = True
            else:
                feature.name = "unknown"
        return resp

    async def _subscribe_peer_events(self, request: Any) -> AsyncIterator[Any]:
        async for event in self._subscription("peer_events"):
            yield event
        # Ends cleanly (OK) at shutdown: one of real lnd's two endings (SHUTDOWN_STATUS).

    async def _list_channels(self, request: Any) -> Any:
        if request.active_only and request.inactive_only:
            raise _unknown("either `active_only` or `inactive_only` can be set, but not both")
        if request.public_only and request.private_only:
            raise _unknown("either `public_only` or `private_only` can be set, but not both")
        if request.peer and len(request.peer) != 33:
            raise _unknown(
                f"invalid `peer` key: invalid vertex length of {len(request.peer)}, want 33"
            )
        resp = ln.ListChannelsResponse()
        for channel in self.channels:
            if request.peer and request.peer != channel.peer:
                continue
            peer = self.peers.get(channel.peer)
            active = peer is not None and peer.online
            if (request.active_only and not active) or (request.inactive_only and active):
                continue
            if (request.public_only and channel.private) or (
                request.private_only and not channel.private
            ):
                continue
            resp.channels.add(
                active=active,
                remote_pubkey=channel.peer.hex(),
                channel_point=channel.channel_point,
                chan_id=channel.scid,
                private=channel.private,
                alias_scids=list(channel.alias_scids),
                zero_conf=channel.zero_conf,
                zero_conf_confirmed_scid=channel.confirmed_scid,
                peer_alias=peer.name if peer is not None and request.peer_alias_lookup else "",
            )
        return resp

    async def _list_aliases(self, request: Any) -> Any:
        resp = ln.ListAliasesResponse()
        for channel in self.channels:
            if channel.alias_scids:
                resp.alias_maps.add(base_scid=channel.scid, aliases=list(channel.alias_scids))
        return resp

    def _connected_peer(self, raw: bytes) -> SimPeer:
        if len(raw) != 33:
            raise _unknown(f"invalid vertex length of {len(raw)}, want 33")
        peer = self.peers.get(raw)
        if peer is None or not peer.online:
            raise _peer_not_connected()
        return peer

    async def _send_custom_message(self, request: Any) -> Any:
        peer = self._connected_peer(request.peer)
        # lnd narrows the type to the 16-bit wire type before checking it.
        msg_type = request.type & 0xFFFF
        overridden = msg_type == ONION_MESSAGE_TYPE and self.custom_message_513
        if msg_type < CUSTOM_TYPE_START and not overridden:
            raise _unknown(
                f"msg type: {msg_type} not in custom range: <unknown> and not overridden"
            )
        peer._deliver(msg_type, bytes(request.data))
        return ln.SendCustomMessageResponse(status="message sent successfully")

    async def _subscribe_custom_messages(self, request: Any) -> AsyncIterator[Any]:
        async for msg in self._subscription("custom_messages"):
            yield msg
        raise _RpcAbort(*SHUTDOWN_STATUS)

    async def _send_onion_message(self, request: Any) -> Any:
        try:
            path_key = _parse_pubkey(bytes(request.path_key))
        except ValueError as e:
            raise _unknown(f"unable to decode path key bytes: {e}") from e
        peer = self._connected_peer(request.peer)
        peer._deliver(ONION_MESSAGE_TYPE, OnionMessage(path_key, bytes(request.onion)).encode())
        return ln.SendOnionMessageResponse(status="onion message sent successfully")

    async def _subscribe_onion_messages(self, request: Any) -> AsyncIterator[Any]:
        async for update in self._subscription("onion_messages"):
            yield update
        raise _RpcAbort(*SHUTDOWN_STATUS)

    async def _sign_message(self, request: Any) -> Any:
        if not request.msg:
            raise _unknown("need a message to sign")
        signature = sign_message(self.secret, bytes(request.msg), single_hash=request.single_hash)
        return ln.SignMessageResponse(signature=signature)

    async def _verify_message(self, request: Any) -> Any:
        if not request.msg:
            raise _unknown("need a message to verify")
        try:
            signer = recover_signer(bytes(request.msg), request.signature)
        except ZBase32Error as e:
            raise _unknown(f"failed to decode signature: {e}") from e
        if signer is None:
            return ln.VerifyMessageResponse(valid=False)
        return ln.VerifyMessageResponse(valid=self.in_graph(signer), pubkey=signer.hex())

    def in_graph(self, pubkey: bytes) -> bool:
        """Whether lnd's graph holds the node ``pubkey``: this node, or a channel's peer."""
        return pubkey == self.pubkey or any(c.peer == pubkey for c in self.channels)

    async def _derive_shared_key(self, request: Any) -> Any:
        try:
            ephemeral = _parse_raw_key(bytes(request.ephemeral_pubkey))
        except ValueError as e:
            raise _unknown(f"error in ephemeral pubkey: {e}") from e
        if ephemeral is None:
            raise _unknown("must provide ephemeral pubkey")
        has_desc = request.HasField("key_desc")
        has_loc = request.HasField("key_loc")
        if has_desc and has_loc:
            raise _unknown("use either key_desc or key_loc")
        if has_desc and not request.key_desc.HasField("key_loc"):
            raise _unknown("when setting key_desc the field key_desc.key_loc must also be set")
        family, index = KEY_FAMILY_NODE_KEY, 0
        raw_key = b""
        if has_desc:
            family = request.key_desc.key_loc.key_family
            index = request.key_desc.key_loc.key_index
            raw_key = bytes(request.key_desc.raw_key_bytes)
        elif has_loc:
            family, index = request.key_loc.key_family, request.key_loc.key_index
        if raw_key and index != 0:
            raise _unknown("use either raw_key_bytes or key_index")
        try:
            wanted = _parse_raw_key(raw_key)
        except ValueError as e:
            raise _unknown(f"error in raw pubkey: {e}") from e
        secret = self._derived_secret(family, index)
        if wanted is not None and coincurve.PrivateKey(secret).public_key.format() != wanted:
            raise _unknown("unable to derive shared key: simnet holds no such key")
        return signrpc.SharedKeyResponse(shared_key=_ecdh(secret, ephemeral))

    def _derived_secret(self, family: int, index: int) -> bytes:
        """The node key for (6, 0); for other locators a key derived from the node secret
        (lnd derives them from its wallet seed; simnet only needs them to be stable)."""
        if (family, index) == (KEY_FAMILY_NODE_KEY, 0):
            return self.secret
        seed = (
            self.secret
            + family.to_bytes(4, "big", signed=True)
            + index.to_bytes(4, "big", signed=True)
        )
        return _secret_from_seed(seed)


def _fill_receive(update: Any, action: Receive) -> None:
    """What lnd adds to the update when the message was for this node."""
    payload = action.payload
    encrypted = payload.get(4)
    if encrypted is not None:
        update.encrypted_recipient_data = encrypted
    for tlv_type, value in payload.items():
        if tlv_type >= 64:
            update.custom_records[tlv_type] = value
    path = action.reply
    if path is not None:
        update.reply_path.introduction_node = path.first_node_id
        update.reply_path.blinding_point = path.first_path_key
        for hop in path.hops:
            update.reply_path.blinded_hops.add(
                blinded_node=hop.blinded_node_id, encrypted_data=hop.encrypted_recipient_data
            )


__all__ = [
    "PERMISSIONS",
    "SHUTDOWN_STATUS",
    "STREAMS",
    "CustomMessageReceived",
    "IngestResult",
    "Ingested",
    "OnionRateLimits",
    "Personality",
    "SimChannel",
    "SimNode",
    "SimPeer",
    "SimnetError",
]
