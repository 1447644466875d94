"""The lnd client: typed async access to the RPCs the mailbox uses, over gRPC.

Everything it hands the rest of the package is one of :mod:`lndmailbox.lnd.values`'
frozen dataclasses, never a ``_pb2`` object, and every failed call is one
:class:`~lndmailbox.errors.LndError` (:func:`~lndmailbox.lnd.errors.rpc_error`).

Unary calls carry a deadline and are retried through :class:`~lndmailbox.retry.Retry`
(exponential backoff with jitter) while the error is retryable, for at most
``retry_for`` seconds; a send whose deadline passed is not retried (lnd was waiting for
the peer: the caller keeps the message). Streams are subscribed again whenever they
break (:mod:`lndmailbox.lnd.streams`). The calls and the streams of one client share
one :class:`~lndmailbox.retry.Outage`: lnd failing is logged once, as a WARNING, when it
starts, and once, as INFO, when lnd answers again; the attempts in between log at DEBUG.

The client's retrying is the only retrying of lnd calls: a caller that must wait for lnd
however long it is away (the daemon's start) asks for that (``get_info(wait=True)``,
``list_peers(wait=True)``) rather than wrapping a retrying call in a retry of its own,
which would log one outage twice. Every wait watches the daemon's ``stop`` event: once it
is set no backoff is sat out (the last error goes up) and no stream is subscribed again;
a ``wait=True`` call also abandons the attempt in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final, TypeVar

import grpc
import grpc.aio

from lndmailbox.errors import LndError
from lndmailbox.lnd.endpoint import LndEndpoint
from lndmailbox.lnd.errors import rpc_error
from lndmailbox.lnd.lnrpc import lightning_pb2 as ln
from lndmailbox.lnd.lnrpc import lightning_pb2_grpc as ln_grpc
from lndmailbox.lnd.lnrpc import signer_pb2 as sign
from lndmailbox.lnd.lnrpc import signer_pb2_grpc as sign_grpc
from lndmailbox.lnd.streams import (
    QuietMark,
    Resubscriber,
    Subscription,
    custom_messages,
    lsps_messages,
    native_onion_messages,
    peer_events,
)
from lndmailbox.lnd.values import (
    Channel,
    ChannelIndex,
    IncomingLspsMessage,
    IncomingMalformed,
    IncomingOnionMessage,
    NodeInfo,
    PeerEvent,
    Transport,
)
from lndmailbox.lsps import LSPS_MESSAGE_TYPE
from lndmailbox.onion.tlv import PointError
from lndmailbox.onion.wire import ONION_MESSAGE_TYPE, OnionMessage
from lndmailbox.retry import Backoff, Retry

__all__ = ["LndClient", "LndNodeKey"]

log = logging.getLogger(__name__)

# lncli's client allows responses this large (ListChannels on a big node).
_MAX_RECEIVE_BYTES: Final = 200 * 1024 * 1024

# What gRPC reads ahead of the daemon on each stream (and response) before lnd must wait.
_READ_AHEAD_BYTES: Final = 1024 * 1024

# lnd holds a send until the peer is active: one whose deadline passed is not tried again.
_SENDS: Final = frozenset({"SendOnionMessage", "SendCustomMessage"})

_Resp = TypeVar("_Resp")


class LndClient:
    """Typed async access to the lnd RPCs the mailbox uses.

    ``timeout``: deadline of ordinary unary calls; ``send_timeout``: deadline of
    SendCustomMessage / SendOnionMessage (lnd holds them until a connected peer is active);
    ``retry_for``: how long a unary call keeps retrying retryable errors; ``backoff``
    (a :class:`~lndmailbox.retry.Backoff`, its defaults when omitted): delays of those
    retries, of stream resubscriptions and of gRPC reconnects;
    ``settle``: how long a new subscription must go unrefused before it counts as
    established (see :meth:`Subscription.wait_subscribed`);
    ``on_rpc(rpc, seconds)``: called after each unary attempt (metrics); ``stop``: the
    daemon's stop event, which every wait of the client watches. Use it as an async
    context manager or call :meth:`close`. The gRPC channel is made on the first call, in
    the running event loop.
    """

    def __init__(
        self,
        endpoint: LndEndpoint,
        *,
        on_rpc: Callable[[str, float], None] | None = None,
        timeout: float = 30.0,
        send_timeout: float = 10.0,
        retry_for: float = 30.0,
        backoff: Backoff | None = None,
        settle: float = 0.5,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._stop = stop
        self._on_rpc = on_rpc
        self._timeout = timeout
        self._send_timeout = send_timeout
        self._retry_for = retry_for
        self._backoff = backoff = backoff or Backoff()
        self._metadata = (("macaroon", endpoint.macaroon.hex()),)
        self._channel: grpc.aio.Channel | None = None
        self._lightning: ln_grpc.LightningAsyncStub | None = None
        self._signer: sign_grpc.SignerAsyncStub | None = None
        self._closed = False
        self._retry = Retry("lnd", log, retry_on=self._worth_retrying, backoff=backoff)
        self._streams = Resubscriber(
            backoff=backoff,
            outage=self._retry.outage,
            settle=settle,
            closed=lambda: self._closed,
            ready=self._ready,
            stop=stop,
            macaroon=endpoint.macaroon_source,
        )

    async def __aenter__(self) -> LndClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; open subscriptions end (StopAsyncIteration)."""
        self._closed = True
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close(grace=None)

    # --- plumbing

    def _connect(self) -> tuple[ln_grpc.LightningAsyncStub, sign_grpc.SignerAsyncStub]:
        if self._closed:
            raise LndError("the lnd client is closed", rpc="-", code="CLOSED", retryable=False)
        if self._lightning is None or self._signer is None or self._channel is None:
            credentials = grpc.ssl_channel_credentials(root_certificates=self.endpoint.tls_cert)
            initial_ms = max(100, int(self._backoff.initial * 1000))
            options = [
                ("grpc.max_receive_message_length", _MAX_RECEIVE_BYTES),
                # Notice a dead connection under an idle stream; lnd accepts pings every 5s+.
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.max_pings_without_data", 0),
                # Bound what gRPC reads ahead of the daemon on each stream: left to grow
                # (BDP probing) it buffered tens of MB of a burst of 65 KB messages that
                # lnd would otherwise hold (measured: docs/redis-schema.md, Memory).
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", _READ_AHEAD_BYTES),
                # Reconnect to a restarted lnd about as fast as the calls retry.
                ("grpc.initial_reconnect_backoff_ms", initial_ms),
                ("grpc.min_reconnect_backoff_ms", initial_ms),
                (
                    "grpc.max_reconnect_backoff_ms",
                    max(initial_ms, int(self._backoff.maximum * 1000)),
                ),
            ]
            self._channel = grpc.aio.secure_channel(self.endpoint.target, credentials, options)
            self._lightning = ln_grpc.LightningStub(self._channel)
            self._signer = sign_grpc.SignerStub(self._channel)
        return self._lightning, self._signer

    async def _unary(
        self,
        rpc: str,
        call: Callable[[float, tuple[tuple[str, str], ...]], Awaitable[_Resp]],
        *,
        deadline: float | None = None,
        wait: bool = False,
    ) -> _Resp:
        """One RPC, retried for ``retry_for`` seconds (``wait``: until lnd answers, or the
        stop, which then also abandons the attempt in flight)."""
        seconds = self._timeout if deadline is None else deadline
        stop = self._stop if wait else None

        async def attempt() -> _Resp:
            started = time.perf_counter()
            try:
                if stop is not None:
                    return await _unless_stopped(rpc, call(seconds, self._metadata), stop)
                return await call(seconds, self._metadata)
            except grpc.aio.AioRpcError as e:
                raise rpc_error(rpc, e, macaroon=self.endpoint.macaroon_source) from e
            finally:
                if self._on_rpc is not None:
                    self._on_rpc(rpc, time.perf_counter() - started)

        return await self._retry.call(
            attempt, stop=self._stop, give_up_after=None if wait else self._retry_for
        )

    def _worth_retrying(self, error: BaseException) -> bool:
        if self._closed or not isinstance(error, LndError) or not error.retryable:
            return False
        return not (error.rpc in _SENDS and error.code == grpc.StatusCode.DEADLINE_EXCEEDED.name)

    def _ready(self) -> bool:
        channel = self._channel
        return channel is not None and channel.get_state() is grpc.ChannelConnectivity.READY

    # --- Lightning

    async def get_info(self, *, wait: bool = False) -> NodeInfo:
        """GetInfo (info:read); with ``wait``, retried until lnd answers (see the module).

        Any version string is accepted: the caller maps it to a transport
        (:func:`~lndmailbox.lnd.values.transport_for_version`) only when the settings
        leave the transport to lnd's version, so ``--transport`` works for any lnd.
        """
        lightning, _ = self._connect()
        r = await self._unary(
            "GetInfo",
            lambda t, md: lightning.GetInfo(ln.GetInfoRequest(), timeout=t, metadata=md),
            wait=wait,
        )
        return NodeInfo(
            pubkey=bytes.fromhex(r.identity_pubkey),
            alias=r.alias,
            version=r.version,
            features=frozenset(r.features.keys()),
            network=r.chains[0].network if r.chains else "",
            block_height=r.block_height,
            synced_to_chain=r.synced_to_chain,
        )

    async def list_peers(self, *, wait: bool = False) -> frozenset[bytes]:
        """The connected peers' 33-byte keys (ListPeers, peers:read); with ``wait``,
        retried until lnd answers."""
        lightning, _ = self._connect()
        r = await self._unary(
            "ListPeers",
            lambda t, md: lightning.ListPeers(ln.ListPeersRequest(), timeout=t, metadata=md),
            wait=wait,
        )
        return frozenset(bytes.fromhex(p.pub_key) for p in r.peers)

    def peer_events(self, on_break: Callable[[], None] | None = None) -> Subscription[PeerEvent]:
        """Peers going online and offline (SubscribePeerEvents, peers:read).

        lnd does not replay the current state: ``await sub.wait_subscribed()``, then call
        :meth:`list_peers`, and again after every :class:`Resubscribed`. ``on_break`` is
        called as soon as the stream is seen broken: peers may come and go unseen until the
        next :class:`Resubscribed`.
        """
        lightning, _ = self._connect()

        raw = self._streams.items(
            "SubscribePeerEvents",
            lambda: lightning.SubscribePeerEvents(
                ln.PeerEventSubscription(), metadata=self._metadata
            ),
        )
        return Subscription(peer_events(raw), on_break=on_break)

    async def list_channels(self) -> tuple[Channel, ...]:
        """The node's open channels (ListChannels, offchain:read)."""
        lightning, _ = self._connect()
        r = await self._unary(
            "ListChannels",
            lambda t, md: lightning.ListChannels(ln.ListChannelsRequest(), timeout=t, metadata=md),
        )
        return tuple(
            Channel(
                peer=bytes.fromhex(c.remote_pubkey),
                channel_point=c.channel_point,
                chan_id=c.chan_id,
                private=c.private,
                alias_scids=tuple(c.alias_scids),
                zero_conf=c.zero_conf,
                zero_conf_confirmed_scid=c.zero_conf_confirmed_scid,
            )
            for c in r.channels
        )

    async def channel_index(self) -> ChannelIndex:
        """The channels, and every short channel id of every channel -> the remote peer.

        Includes the confirmed SCID, the node's SCID aliases (ListChannels ``alias_scids``
        and ListAliases) and the zero-conf confirmed SCID: any of them may name the next hop
        in an onion message on the custom transport, where the mailbox resolves it.
        (``peer_scid_alias``, the alias the *peer* chose, is left out: it names the channel
        only in the peer's own routing.) lnd >= 0.21 resolves fewer itself
        (:mod:`~lndmailbox.lnd.resolver`). offchain:read.
        """
        channels = await self.list_channels()
        lightning, _ = self._connect()
        aliases = await self._unary(
            "ListAliases",
            lambda t, md: lightning.ListAliases(ln.ListAliasesRequest(), timeout=t, metadata=md),
        )
        result: dict[int, bytes] = {}
        for channel in channels:
            for scid in (channel.chan_id, channel.zero_conf_confirmed_scid, *channel.alias_scids):
                if scid:
                    result[scid] = channel.peer
        for alias_map in aliases.alias_maps:
            scids = (alias_map.base_scid, *alias_map.aliases)
            remote_or_none = next((result[s] for s in scids if s in result), None)
            if remote_or_none is not None:
                for scid in scids:
                    if scid:
                        result.setdefault(scid, remote_or_none)
        return ChannelIndex(channels, result)

    def onion_messages(
        self, transport: Transport
    ) -> Subscription[IncomingOnionMessage | IncomingMalformed | IncomingLspsMessage]:
        """Onion messages peers send to the node, and on CUSTOM their LSPS0 messages too.

        NATIVE: SubscribeOnionMessages (never an :class:`IncomingLspsMessage`: read those
        with :meth:`lsps_messages`). CUSTOM: SubscribeCustomMessages, keeping type 513
        and type 37913 (:class:`IncomingLspsMessage`), in the order lnd sent them: lnd
        0.18 - 0.20 have one custom stream, read once and routed by type. A 513 body that
        does not decode is yielded as :class:`IncomingMalformed` and the stream goes on.
        offchain:read. The subscription's :attr:`~Subscription.lag` says, for
        each item, how long before it the stream was last known to hold nothing for us
        (:class:`~lndmailbox.lnd.streams.QuietMark`).
        """
        lightning, _ = self._connect()
        quiet = QuietMark()

        if transport is Transport.NATIVE:
            native = self._streams.items(
                "SubscribeOnionMessages",
                lambda: lightning.SubscribeOnionMessages(
                    ln.SubscribeOnionMessagesRequest(), metadata=self._metadata
                ),
                quiet,
            )
            return Subscription(native_onion_messages(native), quiet)
        custom = self._streams.items(
            "SubscribeCustomMessages",
            lambda: lightning.SubscribeCustomMessages(
                ln.SubscribeCustomMessagesRequest(), metadata=self._metadata
            ),
            quiet,
        )
        return Subscription(custom_messages(custom), quiet)

    def lsps_messages(self) -> Subscription[IncomingLspsMessage]:
        """LSPS0 messages peers send to the node (SubscribeCustomMessages, type 37913 only,
        offchain:read), for the NATIVE transport; on CUSTOM, :meth:`onion_messages` yields
        them from its own stream. lnd passes types from 32768 on without configuration,
        so no lnd.conf line is needed for 37913.
        """
        lightning, _ = self._connect()
        raw = self._streams.items(
            "SubscribeCustomMessages",
            lambda: lightning.SubscribeCustomMessages(
                ln.SubscribeCustomMessagesRequest(), metadata=self._metadata
            ),
        )
        return Subscription(lsps_messages(raw))

    async def send_onion_message(
        self, transport: Transport, peer: bytes, path_key: bytes, onion: bytes
    ) -> None:
        """Hand one onion_message to lnd for the connected ``peer`` (offchain:write).

        Raises :class:`PeerOfflineError` when lnd says the peer is not connected. Carries
        ``send_timeout``; a passed deadline is not retried here.
        """
        lightning, _ = self._connect()
        if transport is Transport.NATIVE:
            native_request = ln.SendOnionMessageRequest(peer=peer, path_key=path_key, onion=onion)
            await self._unary(
                "SendOnionMessage",
                lambda t, md: lightning.SendOnionMessage(native_request, timeout=t, metadata=md),
                deadline=self._send_timeout,
            )
            return
        custom_request = ln.SendCustomMessageRequest(
            peer=peer,
            type=ONION_MESSAGE_TYPE,
            data=OnionMessage(path_key=path_key, onion=onion).encode(),
        )
        await self._unary(
            "SendCustomMessage",
            lambda t, md: lightning.SendCustomMessage(custom_request, timeout=t, metadata=md),
            deadline=self._send_timeout,
        )

    async def send_lsps_message(self, peer: bytes, payload: bytes) -> None:
        """Hand one LSPS0 message (``payload``: its JSON-RPC bytes) to lnd for the connected
        ``peer``: SendCustomMessage type 37913 (offchain:write), on either transport.

        As :meth:`send_onion_message`: :class:`PeerOfflineError` when lnd says the peer is
        not connected, ``send_timeout``, and a passed deadline not retried.
        """
        lightning, _ = self._connect()
        request = ln.SendCustomMessageRequest(peer=peer, type=LSPS_MESSAGE_TYPE, data=payload)
        await self._unary(
            "SendCustomMessage",
            lambda t, md: lightning.SendCustomMessage(request, timeout=t, metadata=md),
            deadline=self._send_timeout,
        )

    async def sign_message(self, message: bytes) -> str:
        """lnd's signature of ``message`` with the node's identity key (SignMessage,
        message:write): z-base-32 of a recoverable signature over the double SHA256 of
        ``"Lightning Signed Message:" + message``, as LSPS5's notifications carry it.

        The key never leaves lnd. A macaroon without message:write raises
        :class:`~lndmailbox.errors.LndPermissionError`; lnd refuses an empty ``message``.
        """
        lightning, _ = self._connect()
        request = ln.SignMessageRequest(msg=message)
        r = await self._unary(
            "SignMessage",
            lambda t, md: lightning.SignMessage(request, timeout=t, metadata=md),
        )
        return r.signature

    # --- Signer

    async def derive_shared_key(self, point: bytes) -> bytes:
        """SHA256 of the compressed ECDH point ``node identity key * point``.

        Signer.DeriveSharedKey with no key named, so lnd uses its identity key
        (signer:generate).
        """
        _, signer = self._connect()
        request = sign.SharedKeyRequest(ephemeral_pubkey=point)
        r = await self._unary(
            "DeriveSharedKey",
            lambda t, md: signer.DeriveSharedKey(request, timeout=t, metadata=md),
        )
        return r.shared_key

    def node_key(self) -> LndNodeKey:
        """The node's identity key as a :class:`lndmailbox.onion.NodeKey`."""
        return LndNodeKey(self)


async def _unless_stopped(rpc: str, call: Awaitable[_Resp], stop: asyncio.Event) -> _Resp:
    """``await call``, abandoned (cancelled) when ``stop`` is set first: an lnd that takes
    connections and never answers must not hold a stopping daemon for a whole deadline."""
    task = asyncio.ensure_future(call)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        await asyncio.gather(task, return_exceptions=True)  # the cancelled call's end
        raise LndError(
            f"{rpc}: abandoned, the daemon is stopping", rpc=rpc, code="CANCELLED", retryable=True
        )
    return task.result()


class LndNodeKey:
    """``lndmailbox.onion.NodeKey`` backed by lnd: ECDH through Signer.DeriveSharedKey.

    The mailbox never holds the node's private key. A point that is not a valid compressed
    public key raises :class:`~lndmailbox.onion.tlv.PointError`, as ``LocalNodeKey`` does (it came
    from a peer: the message is malformed); lnd failing raises :class:`LndError`.
    """

    def __init__(self, client: LndClient) -> None:
        self._client = client

    async def ecdh(self, point: bytes) -> bytes:
        if len(point) != 33 or point[0] not in (2, 3):
            raise PointError("ecdh: not a 33-byte compressed point")
        try:
            return await self._client.derive_shared_key(point)
        except LndError as e:
            if e.code == grpc.StatusCode.UNKNOWN.name and "ephemeral pubkey" in str(e):
                raise PointError("ecdh: not on the curve") from e
            raise
