"""LndClient against simnet over real TLS gRPC: every method and stream, both lnd generations.

simnet answers with lnd's status codes and texts, so these tests show what the mailbox will
see from a real lnd: permissions named, absent peers as PeerOfflineError, restarts as
Resubscribed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
from simnet import Personality, SimNode

from lndmailbox.errors import LndCredentialsError, LndError, LndPermissionError, PeerOfflineError
from lndmailbox.lnd import (
    PERMISSIONS,
    Channel,
    IncomingMalformed,
    IncomingOnionMessage,
    LndClient,
    LndEndpoint,
    PeerEvent,
    Resubscribed,
    Transport,
    transport_for_version,
)
from lndmailbox.onion import Forward, LocalNodeKey, Receive, message_via, peel, random_secret
from lndmailbox.onion.tlv import PointError, scid
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.retry import Backoff

TEXT = 65537
SCID_ALICE = scid(700_000, 1, 0)
SCID_BOB = scid(700_001, 2, 1)
ALIAS_BOB = scid(16_000_000, 0, 7)
ALL_PERMISSIONS = sorted({permission for _, permission in PERMISSIONS.values()})
FAST = Backoff(initial=0.05, maximum=0.2)

T = TypeVar("T")


def transport_of(personality: Personality) -> Transport:
    return Transport.NATIVE if personality is Personality.LND_0_21 else Transport.CUSTOM


def client(endpoint: LndEndpoint, *, retry_for: float = 2.0) -> LndClient:
    return LndClient(endpoint, backoff=FAST, settle=0.1, retry_for=retry_for)


async def next_item(stream: AsyncIterator[T]) -> T:
    async with asyncio.timeout(5):
        return await anext(stream)


@pytest.fixture
async def lnd(node: SimNode) -> AsyncIterator[LndClient]:
    async with client(node.endpoint) as c:
        yield c


# --- unary methods -----------------------------------------------------------------------


async def test_get_info(node: SimNode, lnd: LndClient) -> None:
    info = await lnd.get_info()
    assert info.pubkey == node.pubkey
    assert info.alias == node.alias
    assert info.version == node.personality.version
    assert transport_for_version(info.version) is transport_of(node.personality)
    assert info.network == "regtest"
    assert info.block_height == node.block_height


async def test_the_channel_index_includes_every_alias(node: SimNode, lnd: LndClient) -> None:
    """The custom transport's SCID map: every SCID of every channel, whichever lnd itself
    resolves (lnd 0.21 resolves fewer: tests/test_simnet.py)."""
    alice = node.add_peer("alice")
    bob = node.add_peer("bob")
    carol = node.add_peer("carol")
    node.open_channel(alice, SCID_ALICE)
    node.open_channel(bob, SCID_BOB, [ALIAS_BOB])
    carol_alias, carol_real = scid(16_000_000, 0, 9), scid(700_002, 3, 0)
    node.open_channel(carol, carol_alias, zero_conf=True, confirmed_scid=carol_real)
    index = await lnd.channel_index()
    assert index.peers_by_scid == {
        SCID_ALICE: alice.pubkey,
        SCID_BOB: bob.pubkey,
        ALIAS_BOB: bob.pubkey,
        carol_alias: carol.pubkey,
        carol_real: carol.pubkey,
    }
    assert index.channels == await lnd.list_channels()


async def test_list_channels_hands_out_typed_channels(node: SimNode, lnd: LndClient) -> None:
    bob = node.add_peer("bob", connect=True)
    carol = node.add_peer("carol")
    node.open_channel(bob, SCID_BOB, [ALIAS_BOB])
    zero_conf = node.open_channel(
        carol, scid(16_000_000, 0, 9), zero_conf=True, confirmed_scid=SCID_ALICE, private=False
    )
    assert await lnd.list_channels() == (
        Channel(
            peer=bob.pubkey,
            channel_point=node.channels[0].channel_point,
            chan_id=SCID_BOB,
            private=True,
            alias_scids=(ALIAS_BOB,),
            zero_conf=False,
            zero_conf_confirmed_scid=0,
        ),
        Channel(
            peer=carol.pubkey,
            channel_point=zero_conf.channel_point,
            chan_id=scid(16_000_000, 0, 9),
            private=False,
            alias_scids=(scid(16_000_000, 0, 9),),
            zero_conf=True,
            zero_conf_confirmed_scid=SCID_ALICE,
        ),
    )


# --- peers -------------------------------------------------------------------------------


async def test_peer_events_and_list_peers(node: SimNode, lnd: LndClient) -> None:
    alice = node.add_peer("alice", connect=True)
    bob = node.add_peer("bob")
    events = lnd.peer_events()
    await events.wait_subscribed()
    await asyncio.wait_for(node.wait_for_subscribers("peer_events"), 5)
    assert await lnd.list_peers() == frozenset({alice.pubkey})
    bob.connect()
    assert await next_item(events) == PeerEvent(bob.pubkey, True)
    assert await lnd.list_peers() == frozenset({alice.pubkey, bob.pubkey})
    alice.disconnect()
    assert await next_item(events) == PeerEvent(alice.pubkey, False)
    assert await lnd.list_peers() == frozenset({bob.pubkey})
    await events.aclose()


# --- onion messages in ---------------------------------------------------------------------


async def test_incoming_onion_messages(node: SimNode, lnd: LndClient) -> None:
    alice = node.add_peer("alice", connect=True)
    node.open_channel(alice, SCID_ALICE)  # lnd 0.21 drops messages from channel-less peers
    messages = lnd.onion_messages(transport_of(node.personality))
    await messages.wait_subscribed()
    stream = "onion_messages" if node.personality is Personality.LND_0_21 else "custom_messages"
    await asyncio.wait_for(node.wait_for_subscribers(stream), 5)
    bob = node.add_peer("bob", connect=True)
    _, msg = message_via([node.pubkey, bob.pubkey], {TEXT: b"hello"})
    await alice.send_onion_message(msg)
    # lnd 0.21 hands over this hop's encrypted_recipient_data too, still encrypted; the
    # custom transport's bytes are the bare onion_message.
    forward = await peel(msg.path_key, msg.onion, node.key)
    assert isinstance(forward, Forward)
    assert forward.next_node_id == bob.pubkey
    native = node.personality is Personality.LND_0_21
    assert await next_item(messages) == IncomingOnionMessage(
        alice.pubkey,
        msg.path_key,
        msg.onion,
        forward.encrypted_recipient_data if native else b"",
    )
    await messages.aclose()


async def test_custom_transport_reports_a_malformed_513_and_goes_on() -> None:
    async with SimNode(Personality.LND_0_20) as node, client(node.endpoint) as lnd:
        alice = node.add_peer("alice", connect=True)
        messages = lnd.onion_messages(Transport.CUSTOM)
        await messages.wait_subscribed()
        await asyncio.wait_for(node.wait_for_subscribers("custom_messages"), 5)
        await alice.send_custom_message(513, b"\x02" + bytes(10))
        await alice.send_custom_message(40000, b"not ours")
        _, msg = message_via([node.pubkey], {TEXT: b"after"})
        await alice.send_onion_message(msg)
        malformed = await next_item(messages)
        assert isinstance(malformed, IncomingMalformed)
        assert (malformed.peer, malformed.data) == (alice.pubkey, b"\x02" + bytes(10))
        assert await next_item(messages) == IncomingOnionMessage(
            alice.pubkey, msg.path_key, msg.onion
        )
        await messages.aclose()


# --- onion messages out --------------------------------------------------------------------


async def test_send_onion_message_reaches_the_peer(node: SimNode, lnd: LndClient) -> None:
    bob = node.add_peer("bob", connect=True)
    _, msg = message_via([bob.pubkey], {TEXT: b"for bob"})
    await lnd.send_onion_message(
        transport_of(node.personality), bob.pubkey, msg.path_key, msg.onion
    )
    async with asyncio.timeout(5):
        assert await bob.wait_received() == [msg]
    received = await bob.peel()
    assert isinstance(received, Receive)
    assert received.payload[TEXT] == b"for bob"


async def test_sending_to_an_offline_peer_is_peer_offline(node: SimNode, lnd: LndClient) -> None:
    bob = node.add_peer("bob")
    _, msg = message_via([bob.pubkey], {TEXT: b"x"})
    started = time.monotonic()
    with pytest.raises(PeerOfflineError) as raised:
        await lnd.send_onion_message(
            transport_of(node.personality), bob.pubkey, msg.path_key, msg.onion
        )
    assert time.monotonic() - started < 1.0
    assert raised.value.code == "NOT_FOUND"
    assert not bob.received


async def test_lnd_0_20_has_no_native_transport() -> None:
    async with SimNode(Personality.LND_0_20) as node, client(node.endpoint) as lnd:
        bob = node.add_peer("bob", connect=True)
        with pytest.raises(LndError, match="--transport custom") as raised:
            await lnd.send_onion_message(Transport.NATIVE, bob.pubkey, bob.pubkey, b"\x00" * 100)
        assert raised.value.code == "UNIMPLEMENTED"
        assert not raised.value.retryable
        with pytest.raises(LndError, match="--transport custom"):
            async with asyncio.timeout(5):
                await lnd.onion_messages(Transport.NATIVE).wait_subscribed()


async def test_lnd_0_21_refuses_513_as_a_custom_message(node21: SimNode) -> None:
    bob = node21.add_peer("bob", connect=True)
    _, msg = message_via([bob.pubkey], {TEXT: b"x"})
    async with client(node21.endpoint) as lnd:
        with pytest.raises(LndError, match="custom-message=513") as raised:
            await lnd.send_onion_message(Transport.CUSTOM, bob.pubkey, msg.path_key, msg.onion)
    assert not raised.value.retryable


# --- macaroons -----------------------------------------------------------------------------


async def test_a_foreign_macaroon_is_a_clear_error_without_retries(node: SimNode) -> None:
    stranger = SimNode(node.personality)
    async with client(node.endpoint_with(stranger.admin_macaroon), retry_for=10.0) as lnd:
        started = time.monotonic()
        with pytest.raises(LndCredentialsError, match="on GetInfo: its signature") as raised:
            await lnd.get_info()
        assert time.monotonic() - started < 2.0
        assert "verification failed" in str(raised.value)
        with pytest.raises(LndCredentialsError, match="on SubscribePeerEvents: its signature"):
            async with asyncio.timeout(5):
                await lnd.peer_events().wait_subscribed()


@pytest.mark.parametrize("missing", ALL_PERMISSIONS)
async def test_a_macaroon_lacking_one_permission_names_it(node21: SimNode, missing: str) -> None:
    macaroon = node21.bake_macaroon([p for p in ALL_PERMISSIONS if p != missing])
    bob = node21.add_peer("bob", connect=True)
    _, msg = message_via([bob.pubkey], {TEXT: b"x"})
    calls: dict[str, Callable[[LndClient], Awaitable[object]]] = {
        "GetInfo": lambda lnd: lnd.get_info(),
        "ListPeers": lambda lnd: lnd.list_peers(),
        "ListChannels": lambda lnd: lnd.list_channels(),
        "SendOnionMessage": lambda lnd: lnd.send_onion_message(
            Transport.NATIVE, bob.pubkey, msg.path_key, msg.onion
        ),
        "DeriveSharedKey": lambda lnd: lnd.node_key().ecdh(bob.pubkey),
        "SignMessage": lambda lnd: lnd.sign_message(b"x"),
        "SendCustomMessage": lambda lnd: lnd.send_lsps_message(bob.pubkey, b"{}"),
        "SubscribeCustomMessages": lambda lnd: lnd.lsps_messages().wait_subscribed(),
        "SubscribePeerEvents": lambda lnd: lnd.peer_events().wait_subscribed(),
        "SubscribeOnionMessages": lambda lnd: lnd.onion_messages(
            Transport.NATIVE
        ).wait_subscribed(),
    }
    async with client(node21.endpoint_with(macaroon), retry_for=10.0) as lnd:
        for rpc, call in calls.items():
            needs = PERMISSIONS[rpc][1]
            async with asyncio.timeout(5):
                if needs != missing:
                    await call(lnd)
                    continue
                with pytest.raises(LndPermissionError, match=f"{rpc} needs {missing}") as raised:
                    await call(lnd)
            assert raised.value.rpc == rpc
            assert not raised.value.retryable


async def test_a_uri_macaroon_works(node21: SimNode) -> None:
    macaroon = node21.bake_macaroon([f"uri:{uri}" for uri, _ in PERMISSIONS.values()])
    async with client(node21.endpoint_with(macaroon)) as lnd:
        info = await lnd.get_info()
        assert await lnd.node_key().ecdh(info.pubkey) == await LocalNodeKey(node21.secret).ecdh(
            info.pubkey
        )


# --- restarts ------------------------------------------------------------------------------


@pytest.mark.parametrize("abrupt", [False, True], ids=["shutdown", "crash"])
async def test_streams_resubscribe_across_an_lnd_restart(node: SimNode, abrupt: bool) -> None:
    alice = node.add_peer("alice", connect=True)
    node.open_channel(alice, SCID_ALICE)
    transport = transport_of(node.personality)
    stream = "onion_messages" if transport is Transport.NATIVE else "custom_messages"
    async with client(node.endpoint) as lnd:
        events = lnd.peer_events()
        messages = lnd.onion_messages(transport)
        await events.wait_subscribed()
        await messages.wait_subscribed()
        await asyncio.wait_for(node.wait_for_subscribers(stream), 5)
        reading = asyncio.create_task(next_item(messages))
        await node.stop(abrupt=abrupt)
        await asyncio.sleep(0.3)  # down for a while: the client keeps trying
        await node.start(reconnect_peers=False)

        assert await next_item(events) == Resubscribed()
        await asyncio.wait_for(node.wait_for_subscribers("peer_events"), 5)
        alice.connect()
        assert await next_item(events) == PeerEvent(alice.pubkey, True)

        assert await reading == Resubscribed()
        await asyncio.wait_for(node.wait_for_subscribers(stream), 5)
        _, msg = message_via([node.pubkey], {TEXT: b"after the restart"})
        await alice.send_onion_message(msg)
        received = await next_item(messages)
        assert isinstance(received, IncomingOnionMessage)
        assert (received.peer, received.path_key, received.onion) == (
            alice.pubkey,
            msg.path_key,
            msg.onion,
        )
        assert await lnd.list_peers() == frozenset({alice.pubkey})
        await events.aclose()
        await messages.aclose()


async def test_unary_calls_ride_out_a_restart(node21: SimNode) -> None:
    async with client(node21.endpoint, retry_for=10.0) as lnd:
        await lnd.get_info()
        await node21.stop()
        call = asyncio.create_task(lnd.list_peers())
        await asyncio.sleep(0.3)
        assert not call.done()
        await node21.start()
        async with asyncio.timeout(5):
            assert await call == frozenset()


async def test_a_locked_wallet_is_waited_out(node21: SimNode) -> None:
    node21.wallet_locked = True
    async with client(node21.endpoint, retry_for=10.0) as lnd:
        call = asyncio.create_task(lnd.get_info())
        await asyncio.sleep(0.3)
        assert not call.done()
        node21.wallet_locked = False
        async with asyncio.timeout(5):
            assert (await call).pubkey == node21.pubkey


# --- the node key ----------------------------------------------------------------------------


async def test_lnd_node_key_is_the_local_node_key(node: SimNode, lnd: LndClient) -> None:
    remote, local = lnd.node_key(), LocalNodeKey(node.secret)
    for _ in range(5):
        point = LocalNodeKey(random_secret()).pubkey
        assert await remote.ecdh(point) == await local.ecdh(point)


async def test_peel_through_lnd_equals_peel_with_the_key(node: SimNode, lnd: LndClient) -> None:
    bob = node.add_peer("bob")
    _, for_node = message_via([node.pubkey], {TEXT: b"to the node"}, path_id=os.urandom(16))
    _, via_node = message_via([node.pubkey, bob.pubkey], {TEXT: b"to bob"})
    for msg in (for_node, via_node):
        remote = await peel(msg.path_key, msg.onion, lnd.node_key())
        local = await peel(msg.path_key, msg.onion, LocalNodeKey(node.secret))
        assert remote == local
    forwarded = await peel(via_node.path_key, via_node.onion, lnd.node_key())
    assert isinstance(forwarded, Forward)
    assert forwarded.next_node_id == bob.pubkey
    assert await bob.peel(OnionMessage(forwarded.next_path_key, forwarded.next_onion))


@pytest.mark.parametrize(
    "point",
    [b"\x02" + b"\xff" * 32, b"\x04" + bytes(32), b"\x02" * 5],
    ids=["off-curve", "bad-prefix", "short"],
)
async def test_lnd_node_key_rejects_bad_points_like_the_local_key(
    node21: SimNode, point: bytes
) -> None:
    async with client(node21.endpoint) as lnd:
        with pytest.raises(PointError):
            await lnd.node_key().ecdh(point)
    with pytest.raises(PointError):
        await LocalNodeKey(node21.secret).ecdh(point)
