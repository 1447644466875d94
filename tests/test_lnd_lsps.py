"""LndClient's share of LSPS5 against simnet over real TLS gRPC and macaroons: LSPS0
messages (type 37913) in and out on both lnd generations, and SignMessage.

Signatures are checked with tests/lsps_signatures.py (coincurve alone), never with
simnet's own signing code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

import pytest
from simnet import SimNode

from lndmailbox.errors import LndPermissionError, PeerOfflineError
from lndmailbox.lnd import (
    PERMISSIONS,
    IncomingLspsMessage,
    IncomingMalformed,
    IncomingOnionMessage,
    LndClient,
    LndEndpoint,
    Resubscribed,
    Transport,
)
from lndmailbox.onion import message_via
from lndmailbox.onion.tlv import scid
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.retry import Backoff
from tests.lsps_signatures import lightning_signer

TEXT = 65537
SCID_ALICE = scid(700_000, 1, 0)
FAST = Backoff(initial=0.05, maximum=0.2)
LIST = b'{"jsonrpc":"2.0","id":"1","method":"lsps0.list_protocols","params":{}}'
SET = (
    b'{"jsonrpc":"2.0","id":"2","method":"lsps5.set_webhook","params":'
    b'{"app_name":"wallet","webhook":"https://push.example/hook?token=secret"}}'
)
ANSWER = b'{"jsonrpc":"2.0","id":"1","result":{"protocols":[5]}}'

T = TypeVar("T")


def client(endpoint: LndEndpoint, *, retry_for: float = 2.0) -> LndClient:
    return LndClient(endpoint, backoff=FAST, settle=0.1, retry_for=retry_for)


async def next_item(stream: AsyncIterator[T]) -> T:
    async with asyncio.timeout(5):
        return await anext(stream)


def onion_message(node: SimNode, text: bytes) -> OnionMessage:
    _, msg = message_via([node.pubkey], {TEXT: text})
    return msg


def all_permissions_but(permission: str) -> list[str]:
    return sorted({p for _, p in PERMISSIONS.values()} - {permission})


@pytest.fixture
async def lnd(node: SimNode) -> AsyncIterator[LndClient]:
    async with client(node.endpoint) as c:
        yield c


# --- SignMessage ---------------------------------------------------------------------------


async def test_sign_message_recovers_to_the_node_key(node: SimNode, lnd: LndClient) -> None:
    message = b'LSPS5: DO NOT SIGN THIS MESSAGE MANUALLY{"method":"lsps5.payment_incoming"}'
    signature = await lnd.sign_message(message)
    assert lightning_signer(message, signature) == node.pubkey
    # It is the signature of that message: another one's recovers some other key.
    assert lightning_signer(message + b" ", signature) != node.pubkey


async def test_sign_message_without_message_write_is_a_permission_error(node21: SimNode) -> None:
    """Every permission the mailbox lists but message:write: the other calls work, and
    SignMessage fails at once, naming what is missing (the daemon then turns LSPS5 off)."""
    macaroon = node21.bake_macaroon(all_permissions_but("message:write"))
    async with client(node21.endpoint_with(macaroon), retry_for=10.0) as lnd:
        await lnd.get_info()
        async with asyncio.timeout(5):  # not retried for retry_for's 10 s
            with pytest.raises(LndPermissionError, match="SignMessage needs message:write") as e:
                await lnd.sign_message(b"x")
    assert e.value.rpc == "SignMessage"
    assert not e.value.retryable
    assert "uri:/lnrpc.Lightning/SignMessage" in str(e.value)


async def test_sign_message_with_only_message_write_works(node21: SimNode) -> None:
    async with client(node21.endpoint_with(node21.bake_macaroon(["message:write"]))) as lnd:
        signature = await lnd.sign_message(b"just this")
    assert lightning_signer(b"just this", signature) == node21.pubkey


# --- LSPS0 messages in ---------------------------------------------------------------------


async def test_lsps_messages_yields_lsps_requests_on_native(node21: SimNode) -> None:
    """The native transport's LSPS0 stream: type 37913 only, whatever else the peer sends
    (its onion messages go to SubscribeOnionMessages, other custom types are dropped)."""
    alice = node21.add_peer("alice", connect=True)
    node21.open_channel(alice, SCID_ALICE)
    async with client(node21.endpoint) as lnd:
        messages = lnd.lsps_messages()
        await messages.wait_subscribed()
        await asyncio.wait_for(node21.wait_for_subscribers("custom_messages"), 5)
        assert (await alice.send_onion_message(onion_message(node21, b"not lsps"))).published
        await alice.send_custom_message(40000, b"another protocol")
        await alice.lsps_request(LIST)
        await alice.lsps_request(SET)
        assert await next_item(messages) == IncomingLspsMessage(alice.pubkey, LIST)
        assert await next_item(messages) == IncomingLspsMessage(alice.pubkey, SET)
        await messages.aclose()


@pytest.mark.parametrize("abrupt", [False, True], ids=["shutdown", "crash"])
async def test_lsps_messages_resubscribe_across_an_lnd_restart(
    node21: SimNode, abrupt: bool
) -> None:
    alice = node21.add_peer("alice", connect=True)
    async with client(node21.endpoint) as lnd:
        messages = lnd.lsps_messages()
        await messages.wait_subscribed()
        await asyncio.wait_for(node21.wait_for_subscribers("custom_messages"), 5)
        reading = asyncio.create_task(next_item(messages))
        await node21.stop(abrupt=abrupt)
        await node21.start()
        assert await reading == Resubscribed()
        await asyncio.wait_for(node21.wait_for_subscribers("custom_messages"), 5)
        await alice.lsps_request(LIST)
        assert await next_item(messages) == IncomingLspsMessage(alice.pubkey, LIST)
        await messages.aclose()


async def test_custom_onion_messages_carry_lsps_in_lnds_order(node20: SimNode) -> None:
    """lnd 0.18 - 0.20: one custom stream, read once, each item routed by its type and
    handed over in the order lnd published it."""
    alice = node20.add_peer("alice", connect=True)
    bob = node20.add_peer("bob", connect=True)
    first, second = onion_message(node20, b"one"), onion_message(node20, b"two")
    async with client(node20.endpoint) as lnd:
        messages = lnd.onion_messages(Transport.CUSTOM)
        await messages.wait_subscribed()
        await asyncio.wait_for(node20.wait_for_subscribers("custom_messages"), 5)
        await alice.send_onion_message(first)
        await bob.lsps_request(LIST)
        await alice.send_custom_message(40000, b"another protocol")
        await alice.send_custom_message(513, b"\x02" + bytes(10))
        await alice.lsps_request(SET)
        await bob.send_onion_message(second)
        got = [await next_item(messages) for _ in range(5)]
        # Only one subscription: no second copy of every onion message in lnd.
        assert node20.calls["SubscribeCustomMessages"] == 1
        await messages.aclose()
    assert got[0] == IncomingOnionMessage(alice.pubkey, first.path_key, first.onion)
    assert got[1] == IncomingLspsMessage(bob.pubkey, LIST)
    assert isinstance(got[2], IncomingMalformed)
    assert got[2].peer == alice.pubkey
    assert got[3] == IncomingLspsMessage(alice.pubkey, SET)
    assert got[4] == IncomingOnionMessage(bob.pubkey, second.path_key, second.onion)


async def test_native_onion_messages_never_yield_lsps(node21: SimNode) -> None:
    alice = node21.add_peer("alice", connect=True)
    node21.open_channel(alice, SCID_ALICE)
    msg = onion_message(node21, b"after the request")
    async with client(node21.endpoint) as lnd:
        messages = lnd.onion_messages(Transport.NATIVE)
        await messages.wait_subscribed()
        await asyncio.wait_for(node21.wait_for_subscribers("onion_messages"), 5)
        await alice.lsps_request(LIST)
        await alice.send_onion_message(msg)
        received = await next_item(messages)
        await messages.aclose()
    assert isinstance(received, IncomingOnionMessage)
    assert (received.peer, received.onion) == (alice.pubkey, msg.onion)


def test_an_lsps_message_keeps_its_payload_out_of_repr() -> None:
    """A set_webhook request carries a phone's push token: a logged value must not."""
    text = repr(IncomingLspsMessage(bytes(33), SET))
    assert "secret" not in text
    assert "payload" not in text


# --- LSPS0 messages out --------------------------------------------------------------------


async def test_send_lsps_message_reaches_the_peer(node: SimNode, lnd: LndClient) -> None:
    bob = node.add_peer("bob", connect=True)
    await lnd.send_lsps_message(bob.pubkey, ANSWER)
    await lnd.send_lsps_message(bob.pubkey, b'{"jsonrpc":"2.0","id":"2","result":{}}')
    async with asyncio.timeout(5):
        assert await bob.wait_lsps(2) == [ANSWER, b'{"jsonrpc":"2.0","id":"2","result":{}}']
    assert bob.received == []  # not taken for an onion message


async def test_sending_lsps_to_a_disconnected_peer_is_peer_offline(
    node: SimNode, lnd: LndClient
) -> None:
    bob = node.add_peer("bob", connect=True)
    bob.disconnect()
    with pytest.raises(PeerOfflineError) as raised:
        await lnd.send_lsps_message(bob.pubkey, ANSWER)
    assert (raised.value.rpc, raised.value.code) == ("SendCustomMessage", "NOT_FOUND")
    assert not raised.value.retryable
    assert bob.lsps_received() == []


async def test_send_lsps_message_needs_offchain_write(node21: SimNode) -> None:
    bob = node21.add_peer("bob", connect=True)
    macaroon = node21.bake_macaroon(all_permissions_but("offchain:write"))
    async with client(node21.endpoint_with(macaroon)) as lnd:
        with pytest.raises(LndPermissionError, match="SendCustomMessage needs offchain:write"):
            await lnd.send_lsps_message(bob.pubkey, ANSWER)
    assert bob.lsps_received() == []
