"""How LndClient classifies, retries and logs failures, against a scripted gRPC server.

The server is a real grpc.aio server over TLS speaking the generated lnrpc protos; each
RPC answers from a script (abort with a status, sleep, or reply), so every status lnd uses
can be produced on demand. simnet (tests/test_lnd_simnet.py) covers the normal behaviour.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc.aio
import pytest
from coincurve import PrivateKey
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from simnet.tls import TlsPair, generate_tls_pair

from lndmailbox.errors import (
    ConfigError,
    LndCredentialsError,
    LndError,
    LndPermissionError,
    PeerOfflineError,
)
from lndmailbox.lnd import (
    IncomingMalformed,
    IncomingOnionMessage,
    LndClient,
    LndEndpoint,
    PeerEvent,
    Resubscribed,
    Transport,
    transport_for_version,
)
from lndmailbox.lnd.lnrpc import lightning_pb2 as ln
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.retry import Backoff

TLS = generate_tls_pair()
MACAROON = b"\x02scripted-macaroon"
PEER = PrivateKey(b"\x01" * 32).public_key.format()
PATH_KEY = PrivateKey(b"\x02" * 32).public_key.format()
ONION = b"\x00" + PrivateKey(b"\x03" * 32).public_key.format() + bytes(1300) + bytes(32)
FAST = Backoff(initial=0.02, maximum=0.1)


@dataclass(frozen=True)
class Abort:
    code: grpc.StatusCode
    message: str


@dataclass(frozen=True)
class Sleep:
    seconds: float


Step = Abort | Sleep | Any  # anything else is the reply (a message, or a list for streams)


@dataclass
class Script:
    steps: dict[str, list[Step]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    macaroons: list[str] = field(default_factory=list)

    def next(self, rpc: str) -> Step | None:
        self.calls[rpc] = self.calls.get(rpc, 0) + 1
        steps = self.steps.get(rpc, [])
        if not steps:
            return None
        return steps.pop(0) if len(steps) > 1 else steps[0]


RESPONSES: dict[str, tuple[type[Any], type[Any]]] = {
    "GetInfo": (ln.GetInfoRequest, ln.GetInfoResponse),
    "ListPeers": (ln.ListPeersRequest, ln.ListPeersResponse),
    "ListChannels": (ln.ListChannelsRequest, ln.ListChannelsResponse),
    "ListAliases": (ln.ListAliasesRequest, ln.ListAliasesResponse),
    "SendCustomMessage": (ln.SendCustomMessageRequest, ln.SendCustomMessageResponse),
    "SendOnionMessage": (ln.SendOnionMessageRequest, ln.SendOnionMessageResponse),
}
STREAMS: dict[str, tuple[type[Any], type[Any]]] = {
    "SubscribeCustomMessages": (ln.SubscribeCustomMessagesRequest, ln.CustomMessage),
    "SubscribeOnionMessages": (ln.SubscribeOnionMessagesRequest, ln.OnionMessageUpdate),
    "SubscribePeerEvents": (ln.PeerEventSubscription, ln.PeerEvent),
}


def _handlers(script: Script) -> grpc.GenericRpcHandler[Any, Any]:
    def record(rpc: str, context: grpc.aio.ServicerContext[Any, Any]) -> Step | None:
        metadata = dict(context.invocation_metadata() or ())
        script.macaroons.append(str(metadata.get("macaroon", "")))
        return script.next(rpc)

    def unary(rpc: str, reply: type[Any]) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            step = record(rpc, context)
            while isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                step = None
            if isinstance(step, Abort):
                await context.abort(step.code, step.message)
            return step if step is not None else reply()

        return handle

    def stream(rpc: str) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            step = record(rpc, context)
            if isinstance(step, Abort):
                await context.abort(step.code, step.message)
            assert step is None or isinstance(step, list)
            for item in step or []:
                if isinstance(item, Abort):
                    await context.abort(item.code, item.message)
                elif isinstance(item, Sleep):
                    await asyncio.sleep(item.seconds)
                else:
                    yield item
            await asyncio.sleep(3600)  # an idle, open subscription

        return handle

    methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for rpc, (request, reply) in RESPONSES.items():
        methods[rpc] = grpc.unary_unary_rpc_method_handler(
            unary(rpc, reply),
            request_deserializer=request.FromString,
            response_serializer=reply.SerializeToString,
        )
    for rpc, (request, reply) in STREAMS.items():
        methods[rpc] = grpc.unary_stream_rpc_method_handler(
            stream(rpc),
            request_deserializer=request.FromString,
            response_serializer=reply.SerializeToString,
        )
    return grpc.method_handlers_generic_handler("lnrpc.Lightning", methods)


@dataclass
class Scripted:
    script: Script
    port: int


async def _serve(script: Script, tls: TlsPair = TLS) -> tuple[grpc.aio.Server, int]:
    # lnd's keepalive policy: client pings at most every 5s, and only with calls open.
    server = grpc.aio.server(
        options=[
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 0),
        ]
    )
    server.add_generic_rpc_handlers((_handlers(script),))
    port = server.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)])
    )
    await server.start()
    return server, port


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    script = Script()
    server, port = await _serve(script)
    yield Scripted(script, port)
    await server.stop(None)


def _client(port: int, **kwargs: Any) -> LndClient:
    kwargs.setdefault("backoff", FAST)
    kwargs.setdefault("retry_for", 2.0)
    kwargs.setdefault("settle", 0.1)
    return LndClient(LndEndpoint(f"localhost:{port}", TLS.cert_pem, MACAROON), **kwargs)


@pytest.fixture
def warnings_and_up(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="lndmailbox.lnd")
    return caplog


def _lnd_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("lndmailbox.lnd.") and r.levelno == level
    ]


async def test_the_macaroon_travels_hex_encoded(scripted: Scripted) -> None:
    async with _client(scripted.port) as lnd:
        await lnd.list_peers()
    assert scripted.script.macaroons == [MACAROON.hex()]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (grpc.StatusCode.UNKNOWN, "permission denied"),
        (grpc.StatusCode.PERMISSION_DENIED, "no"),
    ],
)
async def test_a_missing_permission_is_named_and_not_retried(
    scripted: Scripted, code: grpc.StatusCode, message: str
) -> None:
    scripted.script.steps["SendOnionMessage"] = [Abort(code, message)]
    async with _client(scripted.port) as lnd:
        with pytest.raises(LndPermissionError) as raised:
            await lnd.send_onion_message(Transport.NATIVE, PEER, PATH_KEY, ONION)
    assert "SendOnionMessage needs offchain:write" in str(raised.value)
    assert "uri:/lnrpc.Lightning/SendOnionMessage" in str(raised.value)
    assert raised.value.rpc == "SendOnionMessage"
    assert raised.value.code == code.name
    assert not raised.value.retryable
    assert scripted.script.calls["SendOnionMessage"] == 1


@pytest.mark.parametrize(
    ("code", "message", "why"),
    [
        (
            grpc.StatusCode.UNKNOWN,
            "verification failed: signature mismatch after caveat verification",
            "its signature does not verify",
        ),
        (grpc.StatusCode.UNAUTHENTICATED, "who are you", "lnd refused it"),
    ],
)
async def test_a_foreign_macaroon_is_called_so(
    scripted: Scripted, code: grpc.StatusCode, message: str, why: str
) -> None:
    scripted.script.steps["GetInfo"] = [Abort(code, message)]
    async with _client(scripted.port) as lnd:
        with pytest.raises(LndCredentialsError, match=f"the macaroon on GetInfo: {why}") as raised:
            await lnd.get_info()
    assert not isinstance(raised.value, LndPermissionError)
    assert scripted.script.calls["GetInfo"] == 1


@pytest.mark.parametrize(
    ("transport", "rpc"),
    [(Transport.NATIVE, "SendOnionMessage"), (Transport.CUSTOM, "SendCustomMessage")],
)
@pytest.mark.parametrize(
    ("code", "message"),
    [
        (grpc.StatusCode.NOT_FOUND, "peer is not connected"),
        (grpc.StatusCode.UNKNOWN, f"peer {PEER.hex()} disconnected"),
    ],
)
async def test_an_absent_peer_is_peer_offline(
    scripted: Scripted, transport: Transport, rpc: str, code: grpc.StatusCode, message: str
) -> None:
    scripted.script.steps[rpc] = [Abort(code, message)]
    async with _client(scripted.port) as lnd:
        with pytest.raises(PeerOfflineError) as raised:
            await lnd.send_onion_message(transport, PEER, PATH_KEY, ONION)
    assert raised.value.rpc == rpc
    assert scripted.script.calls[rpc] == 1


async def test_a_custom_type_lnd_refuses_says_how_to_fix_it(scripted: Scripted) -> None:
    scripted.script.steps["SendCustomMessage"] = [
        Abort(
            grpc.StatusCode.UNKNOWN,
            "msg type: 513 not in custom range: 32768 and not overridden",
        )
    ]
    async with _client(scripted.port) as lnd:
        with pytest.raises(LndError, match=r"protocol\.custom-message=513") as raised:
            await lnd.send_onion_message(Transport.CUSTOM, PEER, PATH_KEY, ONION)
    assert not raised.value.retryable


async def test_an_outage_is_retried_and_logged_once(
    scripted: Scripted, warnings_and_up: pytest.LogCaptureFixture
) -> None:
    scripted.script.steps["ListPeers"] = [
        Abort(grpc.StatusCode.UNAVAILABLE, "restarting"),
        Abort(grpc.StatusCode.UNKNOWN, "server is shutting down"),
        Abort(grpc.StatusCode.UNKNOWN, "wallet locked, unlock it to enable full RPC access"),
        Abort(grpc.StatusCode.UNKNOWN, "unable to determine macaroon permissions"),
        Abort(grpc.StatusCode.UNAVAILABLE, "restarting"),
        ln.ListPeersResponse(peers=[ln.Peer(pub_key=PEER.hex())]),
    ]
    async with _client(scripted.port) as lnd:
        assert await lnd.list_peers() == frozenset({PEER})
    assert scripted.script.calls["ListPeers"] == 6
    warnings = _lnd_records(warnings_and_up, logging.WARNING)
    infos = _lnd_records(warnings_and_up, logging.INFO)
    assert len(warnings) == 1
    assert "lnd failing" in warnings[0]
    assert "ListPeers" in warnings[0]
    assert len(infos) == 1
    assert "lnd working again" in infos[0]


async def test_retrying_is_bounded(scripted: Scripted) -> None:
    scripted.script.steps["GetInfo"] = [Abort(grpc.StatusCode.UNAVAILABLE, "down")]
    async with _client(scripted.port, retry_for=0.3) as lnd:
        started = time.monotonic()
        with pytest.raises(LndError) as raised:
            await lnd.get_info()
    assert time.monotonic() - started < 2.0
    assert raised.value.retryable
    assert raised.value.code == "UNAVAILABLE"
    assert scripted.script.calls["GetInfo"] > 2


async def test_an_unreachable_lnd_is_retryable() -> None:
    server, port = await _serve(Script())
    await server.stop(None)
    async with _client(port, retry_for=0.3) as lnd:
        with pytest.raises(LndError) as raised:
            await lnd.list_peers()
    assert raised.value.retryable
    assert raised.value.code == "UNAVAILABLE"


async def test_tls_is_verified_against_lnds_certificate() -> None:
    script = Script()
    server, port = await _serve(script, generate_tls_pair())
    endpoint = LndEndpoint(f"127.0.0.1:{port}", TLS.cert_pem, MACAROON)
    try:
        async with LndClient(endpoint, backoff=FAST, retry_for=5.0) as lnd:
            started = time.monotonic()
            with pytest.raises(LndError, match="--tlscertpath") as raised:
                await lnd.list_peers()
    finally:
        await server.stop(None)
    assert time.monotonic() - started < 2.0  # not retried
    assert not raised.value.retryable
    assert script.calls == {}


def _cert_naming_only(host: str) -> TlsPair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return TlsPair(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
    )


async def test_the_certificate_must_name_the_host() -> None:
    tls = _cert_naming_only("lnd.example")
    server, port = await _serve(Script(), tls)
    endpoint = LndEndpoint(f"127.0.0.1:{port}", tls.cert_pem, MACAROON)
    try:
        async with LndClient(endpoint, backoff=FAST, retry_for=5.0) as lnd:
            with pytest.raises(LndError, match="tlsextradomain") as raised:
                await lnd.list_peers()
    finally:
        await server.stop(None)
    assert not raised.value.retryable


async def test_a_send_past_its_deadline_is_not_retried(scripted: Scripted) -> None:
    scripted.script.steps["SendOnionMessage"] = [Sleep(5.0)]
    async with _client(scripted.port, send_timeout=1.0) as lnd:
        await lnd.list_peers()  # the channel is up: the deadline covers only the send
        with pytest.raises(LndError) as raised:
            await lnd.send_onion_message(Transport.NATIVE, PEER, PATH_KEY, ONION)
    assert raised.value.code == "DEADLINE_EXCEEDED"
    assert raised.value.retryable
    assert scripted.script.calls["SendOnionMessage"] == 1


async def test_other_calls_past_their_deadline_are_retried(scripted: Scripted) -> None:
    scripted.script.steps["GetInfo"] = [
        Sleep(5.0),
        ln.GetInfoResponse(identity_pubkey=PEER.hex(), version="0.20.1-beta"),
    ]
    async with _client(scripted.port, timeout=1.0) as lnd:
        await lnd.list_peers()  # the channel is up: the deadline covers only GetInfo
        info = await lnd.get_info()
    assert transport_for_version(info.version) is Transport.CUSTOM
    assert scripted.script.calls["GetInfo"] == 2


@pytest.mark.parametrize("version", ["", "master-build", "lnd-custom commit=abc123"])
async def test_get_info_takes_a_version_no_transport_mapping_knows(
    scripted: Scripted, version: str
) -> None:
    # The version is mapped to a transport only for --transport auto, by the caller: an
    # lnd built from a branch must still start with --transport native or custom.
    scripted.script.steps["GetInfo"] = [
        ln.GetInfoResponse(identity_pubkey=PEER.hex(), alias="lsp", version=version)
    ]
    async with _client(scripted.port) as lnd:
        info = await lnd.get_info()
    assert info.version == version
    assert info.pubkey == PEER
    assert scripted.script.calls["GetInfo"] == 1
    with pytest.raises(ConfigError, match="--transport"):
        transport_for_version(info.version)


async def test_on_rpc_sees_every_attempt(scripted: Scripted) -> None:
    scripted.script.steps["ListPeers"] = [
        Abort(grpc.StatusCode.UNAVAILABLE, "x"),
        ln.ListPeersResponse(),
    ]
    seen: list[tuple[str, float]] = []
    async with _client(scripted.port, on_rpc=lambda rpc, s: seen.append((rpc, s))) as lnd:
        await lnd.list_peers()
    assert [rpc for rpc, _ in seen] == ["ListPeers", "ListPeers"]
    assert all(0 <= s < 5 for _, s in seen)


async def test_unimplemented_native_rpcs_point_at_the_custom_transport(scripted: Scripted) -> None:
    scripted.script.steps["SubscribeOnionMessages"] = [
        Abort(grpc.StatusCode.UNIMPLEMENTED, "unknown method SubscribeOnionMessages")
    ]
    async with _client(scripted.port) as lnd:
        with pytest.raises(LndError, match="--transport custom") as raised:
            async for _ in lnd.onion_messages(Transport.NATIVE):
                pass
    assert not raised.value.retryable
    assert scripted.script.calls["SubscribeOnionMessages"] == 1


async def test_a_stream_without_permission_raises_naming_it(scripted: Scripted) -> None:
    scripted.script.steps["SubscribePeerEvents"] = [
        Abort(grpc.StatusCode.UNKNOWN, "permission denied")
    ]
    async with _client(scripted.port) as lnd:
        with pytest.raises(LndPermissionError, match="SubscribePeerEvents needs peers:read"):
            async for _ in lnd.peer_events():
                pass
    assert scripted.script.calls["SubscribePeerEvents"] == 1


def _custom(msg_type: int, data: bytes) -> ln.CustomMessage:
    return ln.CustomMessage(peer=PEER, type=msg_type, data=data)


async def test_custom_transport_keeps_type_513_and_survives_garbage(scripted: Scripted) -> None:
    good = OnionMessage(PATH_KEY, ONION).encode()
    scripted.script.steps["SubscribeCustomMessages"] = [
        [
            _custom(513, good),
            _custom(32768, b"someone else's protocol"),
            _custom(513, b"\x05" * 40),
            _custom(513, good),
        ]
    ]
    async with _client(scripted.port) as lnd:
        stream = lnd.onion_messages(Transport.CUSTOM)
        items = [await anext(stream) for _ in range(3)]
        await stream.aclose()
    expected = IncomingOnionMessage(PEER, PATH_KEY, ONION)
    assert items[0] == expected
    assert isinstance(items[1], IncomingMalformed)
    assert items[1].peer == PEER
    assert items[1].data == b"\x05" * 40
    assert items[1].reason  # the OnionError's label, for the dropped metric
    assert items[2] == expected


async def test_native_transport(scripted: Scripted) -> None:
    scripted.script.steps["SubscribeOnionMessages"] = [
        [ln.OnionMessageUpdate(peer=PEER, path_key=PATH_KEY, onion=ONION)]
    ]
    async with _client(scripted.port) as lnd:
        stream = lnd.onion_messages(Transport.NATIVE)
        assert await anext(stream) == IncomingOnionMessage(PEER, PATH_KEY, ONION)
        await stream.aclose()


async def test_a_broken_stream_resubscribes_and_says_so(
    scripted: Scripted, warnings_and_up: pytest.LogCaptureFixture
) -> None:
    online = ln.PeerEvent(pub_key=PEER.hex(), type=ln.PeerEvent.EventType.PEER_ONLINE)
    offline = ln.PeerEvent(pub_key=PEER.hex(), type=ln.PeerEvent.EventType.PEER_OFFLINE)
    scripted.script.steps["SubscribePeerEvents"] = [
        [online, Abort(grpc.StatusCode.UNKNOWN, "shutdown")],
        Abort(grpc.StatusCode.UNAVAILABLE, "still down"),
        Abort(grpc.StatusCode.UNKNOWN, "the RPC server is in the process of starting up"),
        [offline],
    ]
    # A long settle: a subscription counts as opened only by what it yields, however slowly
    # a loaded machine delivers the refusals.
    async with _client(scripted.port, settle=5.0) as lnd:
        events = lnd.peer_events()
        items = [await anext(events) for _ in range(3)]
        await events.aclose()
    # Subscriptions lnd refused at once are not announced; the one it accepted is.
    assert items == [PeerEvent(PEER, True), Resubscribed(), PeerEvent(PEER, False)]
    assert scripted.script.calls["SubscribePeerEvents"] == 4
    assert len(_lnd_records(warnings_and_up, logging.WARNING)) == 1
    assert len(_lnd_records(warnings_and_up, logging.INFO)) == 1


async def test_a_broken_stream_says_so_before_it_subscribes_again(scripted: Scripted) -> None:
    online = ln.PeerEvent(pub_key=PEER.hex(), type=ln.PeerEvent.EventType.PEER_ONLINE)
    offline = ln.PeerEvent(pub_key=PEER.hex(), type=ln.PeerEvent.EventType.PEER_OFFLINE)
    scripted.script.steps["SubscribePeerEvents"] = [
        [online, Abort(grpc.StatusCode.UNAVAILABLE, "lnd stopping")],
        Abort(grpc.StatusCode.UNAVAILABLE, "still down"),
        [offline],
    ]
    # Subscriptions made when each break was seen: the caller hears of the gap as it
    # begins, not once it is over (lnd may be away for minutes).
    breaks: list[int] = []
    async with _client(scripted.port, settle=5.0) as lnd:
        events = lnd.peer_events(
            on_break=lambda: breaks.append(scripted.script.calls["SubscribePeerEvents"])
        )
        items = [await anext(events) for _ in range(3)]
        await events.aclose()
    assert items == [PeerEvent(PEER, True), Resubscribed(), PeerEvent(PEER, False)]
    assert breaks == [1], "once for the subscription that broke, none for the one refused"


async def test_a_quiet_stream_is_announced_after_settling(scripted: Scripted) -> None:
    scripted.script.steps["SubscribePeerEvents"] = [
        [Sleep(0.3), Abort(grpc.StatusCode.UNAVAILABLE, "lnd restarting")],
        [],  # accepted again, then nothing happens
    ]
    async with _client(scripted.port) as lnd:
        events = lnd.peer_events()
        await events.wait_subscribed()
        assert await asyncio.wait_for(anext(events), 5) == Resubscribed()
        await events.aclose()
    assert scripted.script.calls["SubscribePeerEvents"] == 2


async def test_wait_subscribed_then_no_resubscribed_marker(scripted: Scripted) -> None:
    scripted.script.steps["SubscribePeerEvents"] = [
        [ln.PeerEvent(pub_key=PEER.hex(), type=ln.PeerEvent.EventType.PEER_ONLINE)]
    ]
    async with _client(scripted.port) as lnd:
        events = lnd.peer_events()
        await events.wait_subscribed()
        await events.wait_subscribed()  # idempotent
        assert scripted.script.calls["SubscribePeerEvents"] == 1
        event = await anext(events)
        assert not isinstance(event, Resubscribed)
        await events.aclose()


async def test_closing_the_client_ends_its_streams(scripted: Scripted) -> None:
    lnd = _client(scripted.port)
    events = lnd.peer_events()
    await events.wait_subscribed()
    reader = asyncio.create_task(anext(events, None))
    await asyncio.sleep(0.05)
    await lnd.close()
    assert await asyncio.wait_for(reader, 5) is None
    with pytest.raises(LndError, match="closed"):
        await lnd.get_info()


async def test_node_info_and_channel_index(scripted: Scripted) -> None:
    other = PrivateKey(b"\x04" * 32).public_key.format()
    scripted.script.steps["GetInfo"] = [
        ln.GetInfoResponse(
            identity_pubkey=PEER.hex(),
            alias="lsp",
            version="0.21.2-beta commit=v0.21.2-beta",
            chains=[ln.Chain(network="regtest")],
            features={39: ln.Feature(name="onion-messages", is_known=True)},
            block_height=101,
            synced_to_chain=True,
        )
    ]
    scripted.script.steps["ListChannels"] = [
        ln.ListChannelsResponse(
            channels=[
                ln.Channel(
                    remote_pubkey=PEER.hex(), chan_id=100 << 40, alias_scids=[17592186044417]
                ),
                ln.Channel(
                    remote_pubkey=other.hex(),
                    chan_id=17592186044500,
                    zero_conf=True,
                    zero_conf_confirmed_scid=101 << 40,
                    peer_scid_alias=17592186044999,
                ),
            ]
        )
    ]
    scripted.script.steps["ListAliases"] = [
        ln.ListAliasesResponse(
            alias_maps=[
                ln.AliasMap(base_scid=17592186044500, aliases=[17592186044501]),
                ln.AliasMap(base_scid=5, aliases=[6]),  # a channel since closed
            ]
        )
    ]
    async with _client(scripted.port) as lnd:
        info = await lnd.get_info()
        index = await lnd.channel_index()
    assert info.pubkey == PEER
    assert info.alias == "lsp"
    assert transport_for_version(info.version) is Transport.NATIVE
    assert info.network == "regtest"
    assert info.advertises_onion_messages
    assert info.block_height == 101
    assert index.peers_by_scid == {
        100 << 40: PEER,
        17592186044417: PEER,
        17592186044500: other,
        101 << 40: other,
        17592186044501: other,
    }
    assert [
        (c.peer, c.chan_id, c.alias_scids, c.zero_conf, c.zero_conf_confirmed_scid)
        for c in index.channels
    ] == [
        (PEER, 100 << 40, (17592186044417,), False, 0),
        (other, 17592186044500, (), True, 101 << 40),
    ]
