"""simnet's share of LSPS5: SignMessage and VerifyMessage as lnd answers them, and LSPS0
messages (type 37913) between peers and the node, on both lnd generations, through the
raw generated stubs over real TLS."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import coincurve
import grpc
import grpc.aio
import pytest
from simnet import SimNode
from simnet.signing import sign_message, zbase32_decode, zbase32_encode

from lndmailbox.lnd.lnrpc import lightning_pb2 as ln
from lndmailbox.lnd.lnrpc import lightning_pb2_grpc as ln_grpc
from lndmailbox.lsps import LSPS_MESSAGE_TYPE
from lndmailbox.onion.tlv import scid
from tests.lsps_signatures import lightning_signer

REQUEST = b'{"jsonrpc":"2.0","id":"1","method":"lsps0.list_protocols","params":{}}'


@asynccontextmanager
async def lightning(node: SimNode, *permissions: str) -> AsyncIterator[Any]:
    """A Lightning stub whose every call carries a macaroon with ``permissions``."""
    creds = grpc.ssl_channel_credentials(root_certificates=node.tls.cert_pem)
    macaroon = node.bake_macaroon(permissions).hex()
    async with grpc.aio.secure_channel(node.target, creds) as channel:
        stub = ln_grpc.LightningStub(channel)

        class Calls:
            async def sign(self, msg: bytes, single_hash: bool = False) -> Any:
                request = ln.SignMessageRequest(msg=msg, single_hash=single_hash)
                return await stub.SignMessage(request, metadata=md, timeout=5)

            async def verify(self, msg: bytes, signature: str) -> Any:
                request = ln.VerifyMessageRequest(msg=msg, signature=signature)
                return await stub.VerifyMessage(request, metadata=md, timeout=5)

            def custom_messages(self) -> Any:
                return stub.SubscribeCustomMessages(
                    ln.SubscribeCustomMessagesRequest(), metadata=md
                )

            async def send_custom(self, peer: bytes, msg_type: int, data: bytes) -> Any:
                request = ln.SendCustomMessageRequest(peer=peer, type=msg_type, data=data)
                return await stub.SendCustomMessage(request, metadata=md, timeout=5)

        md = (("macaroon", macaroon),)
        yield Calls()


async def refused(awaitable: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await awaitable
    return raised.value.code(), raised.value.details() or ""


# --- SignMessage ---------------------------------------------------------------------------


async def test_sign_message_signs_with_the_node_key(node: SimNode) -> None:
    async with lightning(node, "message:write") as lnd:
        signature = (await lnd.sign(b"hello")).signature
    assert len(signature) == 104  # 65 bytes of z-base-32
    assert lightning_signer(b"hello", signature) == node.pubkey
    assert zbase32_decode(signature)[0] in (31, 32, 33, 34)


async def test_sign_message_is_lnds_for_a_known_key() -> None:
    """rust-lightning's vector (secret key 1, "test message"): RFC 6979 nonces, as btcec's,
    make lnd's signature with that key exactly this."""
    async with (
        SimNode(node_secret=(1).to_bytes(32, "big")) as sim,
        lightning(sim, "message:write") as lnd,
    ):
        signature = (await lnd.sign(b"test message")).signature
    assert signature == (
        "d9tibmnic9t5y41hg7hkakdcra94akas9ku3rmmj4ag9mritc8ok4p5qzefs78c9pqfhpuftqqzhydbdwfg7u6w6"
        "wdxcqpqn4sj4e73e"
    )


async def test_sign_message_single_hash_signs_one_sha256(node21: SimNode) -> None:
    async with lightning(node21, "message:write") as lnd:
        signature = (await lnd.sign(b"once", single_hash=True)).signature
    raw = zbase32_decode(signature)
    digest = hashlib.sha256(b"Lightning Signed Message:once").digest()
    recovered = coincurve.PublicKey.from_signature_and_message(
        raw[1:] + bytes([raw[0] - 31]), digest, hasher=None
    )
    assert recovered.format() == node21.pubkey
    assert lightning_signer(b"once", signature) != node21.pubkey  # not the double hash


async def test_sign_message_refuses_an_empty_message_as_lnd(node21: SimNode) -> None:
    async with lightning(node21, "message:write") as lnd:
        assert await refused(lnd.sign(b"")) == (grpc.StatusCode.UNKNOWN, "need a message to sign")


async def test_sign_message_needs_message_write(node21: SimNode) -> None:
    async with lightning(node21, "message:read", "offchain:write") as lnd:
        assert await refused(lnd.sign(b"x")) == (grpc.StatusCode.UNKNOWN, "permission denied")


# --- VerifyMessage -------------------------------------------------------------------------


async def test_verify_message_is_valid_for_the_node_itself(node: SimNode) -> None:
    async with lightning(node, "message:write", "message:read") as lnd:
        signature = (await lnd.sign(b"mine")).signature
        answer = await lnd.verify(b"mine", signature)
    assert (answer.valid, answer.pubkey) == (True, node.pubkey.hex())


async def test_verify_message_is_valid_only_for_a_node_with_a_channel(node21: SimNode) -> None:
    alice = node21.add_peer("alice", connect=True)
    signature = sign_message(alice.secret, b"from alice")  # as alice's own lnd would
    async with lightning(node21, "message:read") as lnd:
        stranger = await lnd.verify(b"from alice", signature)
        node21.open_channel(alice, scid(700_000, 1, 0))
        known = await lnd.verify(b"from alice", signature)
    # lnd returns the recovered key either way: only "valid" says it is in the graph.
    assert (stranger.valid, stranger.pubkey) == (False, alice.pubkey.hex())
    assert (known.valid, known.pubkey) == (True, alice.pubkey.hex())


async def test_verify_message_of_another_message_recovers_another_key(node21: SimNode) -> None:
    async with lightning(node21, "message:write", "message:read") as lnd:
        signature = (await lnd.sign(b"this")).signature
        answer = await lnd.verify(b"that", signature)
    assert not answer.valid
    assert answer.pubkey not in ("", node21.pubkey.hex())


@pytest.mark.parametrize(
    "signature",
    ["", "yyyy", zbase32_encode(bytes([31]) + bytes(64)), zbase32_encode(bytes([26]) + bytes(64))],
    ids=["empty", "short", "zero-r-s", "header-26"],
)
async def test_verify_message_of_an_unrecoverable_signature_is_invalid_with_no_key(
    node21: SimNode, signature: str
) -> None:
    async with lightning(node21, "message:read") as lnd:
        answer = await lnd.verify(b"x", signature)
    assert (answer.valid, answer.pubkey) == (False, "")


async def test_verify_message_errors_as_lnd(node21: SimNode) -> None:
    async with lightning(node21, "message:read") as lnd:
        assert await refused(lnd.verify(b"", "yy")) == (
            grpc.StatusCode.UNKNOWN,
            "need a message to verify",
        )
        assert await refused(lnd.verify(b"x", "yyl")) == (
            grpc.StatusCode.UNKNOWN,
            "failed to decode signature: illegal z-base-32 data at input byte 2",
        )
    async with lightning(node21, "message:write") as lnd:
        assert await refused(lnd.verify(b"x", "yy")) == (
            grpc.StatusCode.UNKNOWN,
            "permission denied",
        )


# --- LSPS0 messages ------------------------------------------------------------------------


async def test_an_lsps_request_reaches_subscribe_custom_messages(node: SimNode) -> None:
    """Type 37913 is in the custom range: lnd passes it on with no configuration, on 0.21
    as on 0.20 (where 513 needs protocol.custom-message)."""
    alice = node.add_peer("alice", connect=True)
    async with lightning(node, "offchain:read") as lnd:
        stream = lnd.custom_messages()
        async with asyncio.timeout(5):
            await node.wait_for_subscribers("custom_messages")
            result = await alice.lsps_request(REQUEST)
            item = await stream.read()
        stream.cancel()
    assert (result.published, result.subscribers, result.drop_reason) == (True, 1, None)
    assert (item.peer, item.type, item.data) == (alice.pubkey, LSPS_MESSAGE_TYPE, REQUEST)


async def test_wait_lsps_returns_what_the_node_sent_oldest_first(node: SimNode) -> None:
    bob = node.add_peer("bob", connect=True)
    async with lightning(node, "offchain:write") as lnd:
        waiting = asyncio.create_task(bob.wait_lsps(2))
        await lnd.send_custom(bob.pubkey, LSPS_MESSAGE_TYPE, b'{"id":"1"}')
        await lnd.send_custom(bob.pubkey, 40000, b"other")  # not LSPS: not counted
        await asyncio.sleep(0)
        assert not waiting.done()
        await lnd.send_custom(bob.pubkey, LSPS_MESSAGE_TYPE, b'{"id":"2"}')
        async with asyncio.timeout(5):
            assert await waiting == [b'{"id":"1"}', b'{"id":"2"}']
    assert bob.lsps_received() == [b'{"id":"1"}', b'{"id":"2"}']
    assert await bob.wait_lsps() == [b'{"id":"1"}', b'{"id":"2"}']


async def test_an_lsps_answer_to_an_offline_peer_is_not_found(node: SimNode) -> None:
    bob = node.add_peer("bob")
    async with lightning(node, "offchain:write") as lnd:
        assert await refused(lnd.send_custom(bob.pubkey, LSPS_MESSAGE_TYPE, b"{}")) == (
            grpc.StatusCode.NOT_FOUND,
            "peer is not connected",
        )
    assert bob.lsps_received() == []
