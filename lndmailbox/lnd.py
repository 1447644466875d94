"""The lnd gRPC client: the only module that speaks gRPC or touches the generated stubs.

Everything it hands the rest of the package is one of its own frozen dataclasses
(:class:`NodeInfo`, :class:`PeerEvent`, :class:`IncomingOnionMessage`, ...), never a
``_pb2`` object, and every failed call is one :class:`~lndmailbox.errors.LndError`.

Connecting
    :func:`resolve_endpoint` turns lncli-style settings (``--rpcserver``, ``--lnddir``,
    ``--network``, ``--tlscertpath``, ``--macaroonpath``), an inline PEM certificate and hex
    macaroon, or an ``lndconnect://`` URI into an :class:`LndEndpoint`. TLS is always
    verified against lnd's own certificate; the macaroon travels hex encoded in the
    ``macaroon`` header of every call. Today's grpcio (checked with 1.85) negotiates lnd's
    ECDSA certificate under TLS 1.2 and 1.3 without ``GRPC_SSL_CIPHER_SUITES``, so it is not
    set.

Errors (:func:`rpc_error`)
    lnd reports most failures as status UNKNOWN with a Go error text, so the mapping reads
    both the code and the text:

    * UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, a server-side CANCELLED, and lnd's own
      "starting / shutting down / wallet locked" texts: ``retryable=True``.
    * UNAUTHENTICATED, PERMISSION_DENIED, and lnd's macaroon texts ("permission denied",
      "verification failed: ...", "expected 1 macaroon, got 0", ...):
      :class:`~lndmailbox.errors.LndPermissionError` naming the RPC and the permission it
      needs (``SendOnionMessage needs offchain:write``). Never retried.
    * a TLS handshake that failed verification (another certificate, or one that does not
      name the host): ``retryable=False``, with a hint.
    * NOT_FOUND "peer is not connected" (and "peer ... disconnected" while lnd waited for the
      peer): :class:`~lndmailbox.errors.PeerOfflineError`.
    * everything else: ``retryable=False``.

Retries
    Unary calls carry a deadline and are retried with exponential backoff and jitter
    (tenacity) while the error is retryable, for at most ``retry_for`` seconds; a send whose
    deadline passed is not retried (lnd was waiting for the peer: the caller keeps the
    message). An outage is logged once, when it starts, and once when lnd answers again;
    the attempts in between log at DEBUG.

Streams
    :meth:`LndClient.peer_events` and :meth:`LndClient.onion_messages` return a
    :class:`Subscription`: it subscribes on first use, and when the stream breaks (lnd
    stopped, restarted, unreachable) it subscribes again, forever, with backoff. The first
    item after every re-established subscription (not after the first one) is
    :class:`Resubscribed`, so the caller re-reads state it may have missed (ListPeers).
    Errors that retrying cannot fix (a macaroon without the permission, an lnd without the
    RPC) end the stream by raising.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import logging
import random
import re
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, TypeVar

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
)

from lndmailbox.errors import (
    ConfigError,
    LndError,
    LndPermissionError,
    OnionError,
    PeerOfflineError,
)
from lndmailbox.lnrpc import lightning_pb2 as ln
from lndmailbox.lnrpc import lightning_pb2_grpc as ln_grpc
from lndmailbox.lnrpc import signer_pb2 as sign
from lndmailbox.lnrpc import signer_pb2_grpc as sign_grpc
from lndmailbox.wire import ONION_MESSAGE_TYPE, OnionMessage, PointError

__all__ = [
    "DEFAULT_LNDDIR",
    "DEFAULT_RPCSERVER",
    "NETWORKS",
    "PERMISSIONS",
    "Backoff",
    "IncomingMalformed",
    "IncomingOnionMessage",
    "LndClient",
    "LndEndpoint",
    "LndNodeKey",
    "NodeInfo",
    "PeerEvent",
    "Resubscribed",
    "Subscription",
    "Transport",
    "parse_lndconnect",
    "resolve_endpoint",
    "rpc_error",
    "transport_for_version",
]

log = logging.getLogger("lndmailbox.lnd")

DEFAULT_RPCSERVER: Final = "localhost:10009"
DEFAULT_RPC_PORT: Final = 10009
DEFAULT_LNDDIR: Final = Path("~/.lnd")
#: The networks lncli accepts for ``--network``.
NETWORKS: Final = ("mainnet", "testnet", "testnet4", "signet", "simnet", "regtest")

#: Every RPC the mailbox calls -> (gRPC method path, the macaroon permission lnd requires),
#: as in lnd's permission maps (rpcserver.go, lnrpc/signrpc/signer_server.go).
PERMISSIONS: Final[Mapping[str, tuple[str, str]]] = {
    "GetInfo": ("/lnrpc.Lightning/GetInfo", "info:read"),
    "ListPeers": ("/lnrpc.Lightning/ListPeers", "peers:read"),
    "SubscribePeerEvents": ("/lnrpc.Lightning/SubscribePeerEvents", "peers:read"),
    "ListChannels": ("/lnrpc.Lightning/ListChannels", "offchain:read"),
    "ListAliases": ("/lnrpc.Lightning/ListAliases", "offchain:read"),
    "SubscribeCustomMessages": ("/lnrpc.Lightning/SubscribeCustomMessages", "offchain:read"),
    "SendCustomMessage": ("/lnrpc.Lightning/SendCustomMessage", "offchain:write"),
    "SubscribeOnionMessages": ("/lnrpc.Lightning/SubscribeOnionMessages", "offchain:read"),
    "SendOnionMessage": ("/lnrpc.Lightning/SendOnionMessage", "offchain:write"),
    "DeriveSharedKey": ("/signrpc.Signer/DeriveSharedKey", "signer:generate"),
}

# lncli's client allows responses this large (ListChannels on a big node).
_MAX_RECEIVE_BYTES: Final = 200 * 1024 * 1024


# --- values -------------------------------------------------------------------------------


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
class LndEndpoint:
    """Where lnd listens and how to prove who we are to it."""

    target: str
    """``host:port`` of lnd's gRPC server."""
    tls_cert: bytes = field(repr=False)
    """lnd's TLS certificate, PEM: the only certificate the connection trusts."""
    macaroon: bytes = field(repr=False)
    """The macaroon, raw bytes (sent hex encoded)."""


@dataclass(frozen=True)
class NodeInfo:
    pubkey: bytes
    """The node's identity key, 33 bytes compressed."""
    alias: str
    version: str
    """lnd's version string, e.g. ``"0.21.2-beta commit=v0.21.2-beta"``."""
    transport: Transport
    """The transport this version supports (:func:`transport_for_version`)."""
    features: frozenset[int] = frozenset()
    """Feature bits the node advertises (38/39: option_onion_messages)."""
    network: str = ""
    block_height: int = 0
    synced_to_chain: bool = False

    @property
    def advertises_onion_messages(self) -> bool:
        return bool(self.features & {38, 39})


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
class Resubscribed:
    """A stream broke and is subscribed again: anything may have happened in between."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter, for retried calls, streams and gRPC reconnects."""

    initial: float = 0.5
    maximum: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` (1 = the first retry), jittered."""
        base = min(self.maximum, self.initial * 2.0 ** min(attempt - 1, 32))
        return base / 2 + random.uniform(0, base / 2)


# --- endpoint -----------------------------------------------------------------------------


def _split_host_port(text: str, what: str) -> tuple[str, int]:
    text = text.strip()
    if not text:
        raise ConfigError(f"{what}: empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"{what}: bad address {text!r}")
        port_text = rest[1:]
        host = f"[{host}]"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:  # bare IPv6 address without a port
        host, port_text = f"[{text}]", ""
    else:
        host, port_text = text, ""
    if not host or host == "[]":
        raise ConfigError(f"{what}: no host in {text!r}")
    if not port_text:
        return host, DEFAULT_RPC_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{what}: bad port in {text!r}")
    return host, int(port_text)


def _b64url(text: str, what: str) -> bytes:
    cleaned = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as e:
        raise ConfigError(f"lndconnect: {what} is not base64url: {e}") from e


def _pem_from_der(der: bytes, what: str) -> bytes:
    try:
        return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
    except ValueError as e:
        raise ConfigError(f"{what}: not a DER certificate: {e}") from e


def _check_pem(pem: bytes, what: str) -> bytes:
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise ConfigError(f"{what}: not a PEM certificate: {e}") from e
    return pem


def parse_lndconnect(uri: str) -> tuple[str, bytes | None, bytes | None]:
    """``lndconnect://host:port?cert=...&macaroon=...`` -> (target, PEM cert, macaroon).

    ``cert`` is lnd's certificate as base64url DER without padding, ``macaroon`` the
    macaroon as base64url; either may be absent (None). The port defaults to 10009.
    """
    parts = urllib.parse.urlsplit(uri.strip())
    if parts.scheme.lower() != "lndconnect":
        raise ConfigError("lndconnect: the URI must start with lndconnect://")
    host, port = _split_host_port(parts.netloc, "lndconnect")
    params: dict[str, str] = {}
    for pair in parts.query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        # unquote, not unquote_plus: a '+' of standard base64 must survive
        params[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
    cert: bytes | None = None
    if params.get("cert"):
        raw = _b64url(params["cert"], "cert")
        if raw.startswith(b"-----BEGIN"):
            cert = _check_pem(raw, "lndconnect cert")
        else:
            cert = _pem_from_der(raw, "lndconnect cert")
    macaroon = _b64url(params["macaroon"], "macaroon") if params.get("macaroon") else None
    return f"{host}:{port}", cert, macaroon


def _read(path: Path, what: str, flag: str) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read lnd's {what} {path} ({e.strerror}); set {flag}") from e


def resolve_endpoint(
    *,
    rpcserver: str = DEFAULT_RPCSERVER,
    lnddir: Path = DEFAULT_LNDDIR,
    network: str = "mainnet",
    tlscertpath: Path | None = None,
    macaroonpath: Path | None = None,
    tlscert: str | None = None,
    macaroon: str | None = None,
    lndconnect: str | None = None,
) -> LndEndpoint:
    """Where and how to reach lnd, from settings named and defaulted like lncli's.

    * target: the lndconnect URI's host, else ``rpcserver`` (port 10009 when omitted).
    * certificate: the URI's ``cert``, else ``tlscert`` (inline PEM), else the file
      ``tlscertpath``, default ``<lnddir>/tls.cert``.
    * macaroon: the URI's ``macaroon``, else ``macaroon`` (inline hex), else the file
      ``macaroonpath``, default ``<lnddir>/data/chain/bitcoin/<network>/admin.macaroon``.

    Giving both the inline value and the path of the same thing is a :class:`ConfigError`,
    as is anything unreadable.
    """
    network = network.strip().lower()
    if network not in NETWORKS:
        raise ConfigError(f"unknown network {network!r}; one of {', '.join(NETWORKS)}")
    if tlscert and tlscertpath is not None:
        raise ConfigError("give lnd's certificate as --tlscert or --tlscertpath, not both")
    if macaroon and macaroonpath is not None:
        raise ConfigError("give the macaroon as --macaroon or --macaroonpath, not both")
    lnddir = lnddir.expanduser()

    target = ""
    cert: bytes | None = None
    mac: bytes | None = None
    if lndconnect:
        target, cert, mac = parse_lndconnect(lndconnect)
    else:
        host, port = _split_host_port(rpcserver, "rpcserver")
        target = f"{host}:{port}"

    if cert is None:
        if tlscert:
            text = tlscert.strip()
            if "\\n" in text and "\n" not in text:  # a PEM squeezed into one env line
                text = text.replace("\\n", "\n")
            cert = _check_pem(text.encode() + b"\n", "--tlscert")
        else:
            path = tlscertpath if tlscertpath is not None else lnddir / "tls.cert"
            cert = _check_pem(_read(path, "TLS certificate", "--tlscertpath"), str(path))
    if mac is None:
        if macaroon:
            try:
                mac = bytes.fromhex(macaroon.strip())
            except ValueError as e:
                raise ConfigError("--macaroon: not hex") from e
        else:
            path = (
                macaroonpath
                if macaroonpath is not None
                else lnddir / "data" / "chain" / "bitcoin" / network / "admin.macaroon"
            )
            mac = _read(path, "macaroon", "--macaroonpath")
    if not mac:
        raise ConfigError("the macaroon is empty")
    return LndEndpoint(target=target, tls_cert=cert, macaroon=mac)


# --- errors -------------------------------------------------------------------------------

_RETRYABLE_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        # Only ever from the server or the transport: our own cancellation raises
        # asyncio.CancelledError instead.
        grpc.StatusCode.CANCELLED,
    }
)

# lnd's error texts (status UNKNOWN) while it starts, stops, or waits for its wallet.
_LND_TRANSIENT: Final = re.compile(
    r"^(shutdown$|server is shutting down|server exiting|waiting to start"
    r"|wallet locked|wallet not created|the RPC server is in the process of starting"
    r"|unable to determine macaroon permissions)"
)

# lnd's macaroon check failures (status UNKNOWN): rpcperms/interceptor.go, macaroons/.
_LND_MACAROON: Final = re.compile(
    r"(permission denied|verification failed|expected 1 macaroon|macaroon"
    r"|invalid ID$|cannot get macaroon|encoding/hex)",
    re.IGNORECASE,
)

# The connection failed because lnd's certificate is not the pinned one or does not name the
# host: retrying cannot help.
_TLS_MISMATCH: Final = re.compile(
    r"CERTIFICATE_VERIFY_FAILED|is not in peer certificate|Hostname Verification Check failed"
)

_PEER_OFFLINE: Final = re.compile(r"^(peer is not connected|peer [0-9a-f]{66} disconnected)")


def rpc_error(rpc: str, error: grpc.aio.AioRpcError) -> LndError:
    """One :class:`LndError` (or subclass) for a failed call of ``rpc`` (``"GetInfo"``...)."""
    code = error.code()
    details = error.details() or ""
    name = code.name
    if code is grpc.StatusCode.UNKNOWN and _LND_TRANSIENT.match(details):
        return LndError(f"{rpc} failed: {name}: {details}", rpc=rpc, code=name, retryable=True)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or (
        code is grpc.StatusCode.UNKNOWN and _LND_MACAROON.search(details)
    ):
        return LndPermissionError(
            _permission_message(rpc, details), rpc=rpc, code=name, retryable=False
        )
    if _PEER_OFFLINE.match(details) and code in (
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNKNOWN,
    ):
        return PeerOfflineError(f"{rpc}: {details}", rpc=rpc, code=name, retryable=False)
    if code is grpc.StatusCode.UNAVAILABLE and _TLS_MISMATCH.search(details):
        return LndError(
            f"{rpc}: lnd's TLS certificate is not the one configured ({details}); point "
            "--tlscertpath at lnd's current tls.cert, and make sure the certificate names the "
            "host in --rpcserver (lnd.conf tlsextradomain / tlsextraip)",
            rpc=rpc,
            code=name,
            retryable=False,
        )
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return LndError(_unimplemented_message(rpc, details), rpc=rpc, code=name, retryable=False)
    retryable = code in _RETRYABLE_CODES
    message = f"{rpc} failed: {name}: {details}"
    if code is grpc.StatusCode.UNKNOWN and "not in custom range" in details:
        message += " (start lnd <= 0.20 with protocol.custom-message=513)"
    return LndError(message, rpc=rpc, code=name, retryable=retryable)


def _permission_message(rpc: str, details: str) -> str:
    uri, permission = PERMISSIONS.get(rpc, (f"/{rpc}", "?"))
    if "verification failed" in details or "expected 1 macaroon" in details:
        why = "lnd rejected the macaroon (is it a macaroon of this lnd?)"
    else:
        why = "the macaroon does not allow it"
    return (
        f"{rpc} needs {permission}: {why}; lnd said {details!r}. "
        f"Bake a macaroon with {permission} (or uri:{uri}); see docs/lnd.md"
    )


def _unimplemented_message(rpc: str, details: str) -> str:
    if rpc in ("SubscribeOnionMessages", "SendOnionMessage"):
        hint = "lnd < 0.21 has no onion message RPCs: use --transport custom"
    elif rpc == "DeriveSharedKey":
        hint = "this lnd has no Signer service: build lnd with the signrpc tag"
    else:
        hint = "this lnd does not offer it"
    return f"{rpc} is not implemented by lnd ({details}): {hint}"


# --- the client ---------------------------------------------------------------------------

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Item = TypeVar("_Item")


@dataclass(frozen=True)
class _Opened:
    """Internal marker: a stream subscription was (re)established."""


async def _next_or_none(items: AsyncIterator[_Item]) -> _Item | None:
    """The next item, or None at the end (a Task must not raise StopAsyncIteration)."""
    return await anext(items, None)


class _Outage:
    """Logs an outage of lnd once when it starts and once when it ends."""

    def __init__(self) -> None:
        self.since: float | None = None

    def failed(self, rpc: str, error: LndError) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("lnd unreachable (%s: %s); retrying with backoff", rpc, error)
        else:
            log.debug("lnd still unreachable (%s: %s)", rpc, error)

    def recovered(self, rpc: str) -> None:
        if self.since is not None:
            log.info("lnd reachable again after %.1fs (%s)", time.monotonic() - self.since, rpc)
            self.since = None


class Subscription(AsyncIterator[_Item | Resubscribed]):
    """A stream from lnd that survives lnd restarts.

    Iterating it yields the stream's items, and :class:`Resubscribed` first after every
    re-established subscription. :meth:`wait_subscribed` opens the first subscription
    without consuming an item: await it, then read the state the stream reports changes
    of (ListPeers), and no change falls between the two. (lnd answers a subscription with
    nothing until its first item, so "accepted" means: connected, and not refused within
    the client's ``settle`` time.) :meth:`aclose` cancels the call.
    """

    def __init__(self, source: AsyncGenerator[_Item | _Opened, None]) -> None:
        self._source = source
        self._opened = False

    async def wait_subscribed(self) -> None:
        """Return once lnd has accepted the first subscription (idempotent).

        Raises like iterating would (a missing permission); keeps waiting, retrying with
        backoff, while lnd is unreachable.
        """
        if self._opened:
            return
        item = await anext(self._source)
        if not isinstance(item, _Opened):  # pragma: no cover - the source always opens first
            raise AssertionError("a subscription's first item must be _Opened")
        self._opened = True

    def __aiter__(self) -> Subscription[_Item]:
        return self

    async def __anext__(self) -> _Item | Resubscribed:
        while True:
            item = await anext(self._source)
            if isinstance(item, _Opened):
                if not self._opened:
                    self._opened = True
                    continue
                return Resubscribed()
            return item

    async def aclose(self) -> None:
        await self._source.aclose()


class LndClient:
    """Typed async access to the lnd RPCs the mailbox uses.

    ``timeout``: deadline of ordinary unary calls; ``send_timeout``: deadline of
    SendCustomMessage / SendOnionMessage (lnd holds them until a connected peer is active);
    ``retry_for``: how long a unary call keeps retrying retryable errors; ``backoff``:
    delays of those retries, of stream resubscriptions and of gRPC reconnects;
    ``settle``: how long a new subscription must go unrefused before it counts as
    established (see :meth:`Subscription.wait_subscribed`);
    ``on_rpc(rpc, seconds)``: called after each unary attempt (metrics). Use it as an async
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
        backoff: Backoff = Backoff(),
        settle: float = 0.5,
    ) -> None:
        self.endpoint = endpoint
        self._on_rpc = on_rpc
        self._timeout = timeout
        self._send_timeout = send_timeout
        self._retry_for = retry_for
        self._backoff = backoff
        self._settle = settle
        self._metadata = (("macaroon", endpoint.macaroon.hex()),)
        self._channel: grpc.aio.Channel | None = None
        self._lightning: ln_grpc.LightningAsyncStub | None = None
        self._signer: sign_grpc.SignerAsyncStub | None = None
        self._closed = False
        self._outage = _Outage()

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
        retry_deadline: bool = True,
    ) -> _Resp:
        seconds = self._timeout if deadline is None else deadline

        def worth_retrying(e: BaseException) -> bool:
            if self._closed or not isinstance(e, LndError) or not e.retryable:
                return False
            return retry_deadline or e.code != grpc.StatusCode.DEADLINE_EXCEEDED.name

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, LndError):
                self._outage.failed(rpc, error)

        async def attempt() -> _Resp:
            started = time.perf_counter()
            try:
                response = await call(seconds, self._metadata)
            except grpc.aio.AioRpcError as e:
                raise rpc_error(rpc, e) from e
            finally:
                if self._on_rpc is not None:
                    self._on_rpc(rpc, time.perf_counter() - started)
            self._outage.recovered(rpc)
            return response

        # The first try goes without the retry machinery: it is the hot path (two
        # DeriveSharedKey calls per message), and nearly always the only try.
        try:
            return await attempt()
        except LndError as e:
            if not worth_retrying(e):
                raise
            self._outage.failed(rpc, e)
            await asyncio.sleep(self._backoff.delay(1))
        retrying = AsyncRetrying(
            retry=retry_if_exception(worth_retrying),
            stop=stop_after_delay(self._retry_for),
            wait=lambda state: self._backoff.delay(state.attempt_number + 1),
            before_sleep=before_sleep,
            reraise=True,
        )
        async for retry in retrying:
            with retry:
                return await attempt()
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _stream(
        self,
        rpc: str,
        open_call: Callable[[tuple[tuple[str, str], ...]], grpc.aio.UnaryStreamCall[_Req, _Resp]],
    ) -> AsyncGenerator[_Resp | _Opened, None]:
        """The raw items of a stream, subscribed again with backoff whenever it breaks.

        Yields :class:`_Opened` once per subscription that lnd accepted: when its first item
        arrives, or once the connection is up and lnd has not refused the call within
        ``settle`` seconds (lnd sends no response headers before the first item, so there
        is nothing earlier to wait for; a refusal, such as a missing permission or "wallet
        locked", comes back at once). The backoff restarts once a subscription delivered an
        item or stayed up for ``backoff.maximum`` seconds.
        """
        failures = 0
        while not self._closed:
            call = open_call(self._metadata)
            items = aiter(call)
            pending: asyncio.Task[_Resp | None] | None = None
            opened_at = time.monotonic()
            announced = healthy = False
            error = LndError(f"{rpc}: lnd ended the stream", rpc=rpc, code="OK", retryable=True)
            try:
                while True:
                    pending = asyncio.create_task(_next_or_none(items))
                    while not announced:
                        done, _ = await asyncio.wait({pending}, timeout=self._settle)
                        if done or self._ready():
                            break
                    if not announced and (not pending.done() or pending.exception() is None):
                        announced = True
                        self._outage.recovered(rpc)
                        yield _Opened()
                    item = await pending
                    pending = None
                    if item is None:  # lnd ended the stream without an error
                        break
                    healthy = True
                    yield item
            except grpc.aio.AioRpcError as e:
                if self._closed:
                    return
                error = rpc_error(rpc, e)
                if not error.retryable:
                    raise error from e
            except asyncio.CancelledError:
                # Closing the channel cancels the read inside grpc; a cancellation of the
                # task iterating this stream goes on up.
                task = asyncio.current_task()
                if self._closed and task is not None and task.cancelling() == 0:
                    return
                raise
            finally:
                if pending is not None and not pending.done():
                    pending.cancel()
                call.cancel()
            if self._closed:
                return
            if healthy or time.monotonic() - opened_at >= self._backoff.maximum:
                failures = 0
            failures += 1
            self._outage.failed(rpc, error)
            await asyncio.sleep(self._backoff.delay(failures))

    def _ready(self) -> bool:
        channel = self._channel
        return channel is not None and channel.get_state() is grpc.ChannelConnectivity.READY

    # --- Lightning

    async def get_info(self) -> NodeInfo:
        """GetInfo (info:read)."""
        lightning, _ = self._connect()
        r = await self._unary(
            "GetInfo",
            lambda t, md: lightning.GetInfo(ln.GetInfoRequest(), timeout=t, metadata=md),
        )
        return NodeInfo(
            pubkey=bytes.fromhex(r.identity_pubkey),
            alias=r.alias,
            version=r.version,
            transport=transport_for_version(r.version),
            features=frozenset(r.features.keys()),
            network=r.chains[0].network if r.chains else "",
            block_height=r.block_height,
            synced_to_chain=r.synced_to_chain,
        )

    async def list_peers(self) -> frozenset[bytes]:
        """The connected peers' 33-byte keys (ListPeers, peers:read)."""
        lightning, _ = self._connect()
        r = await self._unary(
            "ListPeers",
            lambda t, md: lightning.ListPeers(ln.ListPeersRequest(), timeout=t, metadata=md),
        )
        return frozenset(bytes.fromhex(p.pub_key) for p in r.peers)

    def peer_events(self) -> Subscription[PeerEvent]:
        """Peers going online and offline (SubscribePeerEvents, peers:read).

        lnd does not replay the current state: ``await sub.wait_subscribed()``, then call
        :meth:`list_peers`, and again after every :class:`Resubscribed`.
        """
        lightning, _ = self._connect()

        async def events() -> AsyncGenerator[PeerEvent | _Opened, None]:
            online = ln.PeerEvent.EventType.PEER_ONLINE
            raw = self._stream(
                "SubscribePeerEvents",
                lambda md: lightning.SubscribePeerEvents(ln.PeerEventSubscription(), metadata=md),
            )
            try:
                async for item in raw:
                    if isinstance(item, _Opened):
                        yield item
                    else:
                        yield PeerEvent(bytes.fromhex(item.pub_key), item.type == online)
            finally:
                await raw.aclose()

        return Subscription(events())

    async def channel_peers(self) -> dict[int, bytes]:
        """Every short channel id of every channel -> the remote peer's 33-byte key.

        Includes the confirmed SCID, the node's SCID aliases (ListChannels ``alias_scids``
        and ListAliases) and the zero-conf confirmed SCID: any of them may name the next hop
        in an onion message. (``peer_scid_alias``, the alias the *peer* chose, is left out:
        it names the channel only in the peer's own routing.) offchain:read.
        """
        lightning, _ = self._connect()
        channels = await self._unary(
            "ListChannels",
            lambda t, md: lightning.ListChannels(ln.ListChannelsRequest(), timeout=t, metadata=md),
        )
        aliases = await self._unary(
            "ListAliases",
            lambda t, md: lightning.ListAliases(ln.ListAliasesRequest(), timeout=t, metadata=md),
        )
        result: dict[int, bytes] = {}
        for channel in channels.channels:
            remote = bytes.fromhex(channel.remote_pubkey)
            for scid in (channel.chan_id, channel.zero_conf_confirmed_scid, *channel.alias_scids):
                if scid:
                    result[scid] = remote
        for alias_map in aliases.alias_maps:
            scids = (alias_map.base_scid, *alias_map.aliases)
            remote_or_none = next((result[s] for s in scids if s in result), None)
            if remote_or_none is not None:
                for scid in scids:
                    if scid:
                        result.setdefault(scid, remote_or_none)
        return result

    def onion_messages(
        self, transport: Transport
    ) -> Subscription[IncomingOnionMessage | IncomingMalformed]:
        """Onion messages peers send to the node.

        NATIVE: SubscribeOnionMessages. CUSTOM: SubscribeCustomMessages, keeping type 513;
        a body that does not decode is yielded as :class:`IncomingMalformed` and the stream
        goes on. offchain:read.
        """
        lightning, _ = self._connect()

        async def native() -> AsyncGenerator[IncomingOnionMessage | _Opened, None]:
            raw = self._stream(
                "SubscribeOnionMessages",
                lambda md: lightning.SubscribeOnionMessages(
                    ln.SubscribeOnionMessagesRequest(), metadata=md
                ),
            )
            try:
                async for item in raw:
                    if isinstance(item, _Opened):
                        yield item
                    else:
                        yield IncomingOnionMessage(item.peer, item.path_key, item.onion)
            finally:
                await raw.aclose()

        async def custom() -> AsyncGenerator[
            IncomingOnionMessage | IncomingMalformed | _Opened, None
        ]:
            raw = self._stream(
                "SubscribeCustomMessages",
                lambda md: lightning.SubscribeCustomMessages(
                    ln.SubscribeCustomMessagesRequest(), metadata=md
                ),
            )
            try:
                async for item in raw:
                    if isinstance(item, _Opened):
                        yield item
                    elif item.type == ONION_MESSAGE_TYPE:
                        try:
                            message = OnionMessage.decode(item.data)
                        except OnionError as e:
                            yield IncomingMalformed(item.peer, item.data, e)
                        else:
                            yield IncomingOnionMessage(item.peer, message.path_key, message.onion)
            finally:
                await raw.aclose()

        if transport is Transport.NATIVE:
            return Subscription[IncomingOnionMessage | IncomingMalformed](native())
        return Subscription(custom())

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
                retry_deadline=False,
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
            retry_deadline=False,
        )

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
        """The node's identity key as a :class:`lndmailbox.sphinx.NodeKey`."""
        return LndNodeKey(self)


class LndNodeKey:
    """``sphinx.NodeKey`` backed by lnd: ECDH through Signer.DeriveSharedKey.

    The mailbox never holds the node's private key. A point that is not a valid compressed
    public key raises :class:`~lndmailbox.wire.PointError`, as ``LocalNodeKey`` does (it came
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
