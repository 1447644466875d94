"""What real lnd answers, checked against the binaries: the facts the mailbox and simnet rely on.

Each test states one fact of shared/lnd-facts.md (or one the mailbox's code assumes) and
asserts it on both generations; where the generations differ the test says how.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import coincurve
import grpc
import pytest

from itest.build import LND_VERSIONS, Generation
from itest.network import Network
from itest.onion import (
    PAYLOAD_TYPE,
    check_received,
    inbox_stream,
    is_letter,
    send_to_lsp,
    write_letter,
)
from itest.process import wait_for
from itest.rpc import Collector, collect
from lndmailbox import onion
from lndmailbox.lnd.lnrpc import lightning_pb2 as ln
from lndmailbox.lnd.lnrpc import signer_pb2 as signer
from lndmailbox.onion.tlv import format_scid

pytestmark = pytest.mark.timeout(900)

NOT_CONNECTED = "peer is not connected"


def some_point() -> bytes:
    return coincurve.PrivateKey(os.urandom(32)).public_key.format(compressed=True)


async def test_getinfo_version_names_the_release(network: Network) -> None:
    version = LND_VERSIONS[network.generation]
    async with network.lsp.rpc() as rpc:
        info = await rpc.lightning.GetInfo(ln.GetInfoRequest())
    assert info.version == f"{version.removeprefix('v')} commit={version}"
    assert info.identity_pubkey == network.lsp.pubkey_hex
    assert [c.network for c in info.chains] == ["regtest"]


async def test_onion_message_feature_bit_39_is_advertised(network: Network) -> None:
    """0.20 advertises option_onion_messages only through custom-init/custom-nodeann and does
    not know its name; 0.21 advertises and names it itself."""
    async with network.lsp.rpc() as rpc:
        info = await rpc.lightning.GetInfo(ln.GetInfoRequest())
        peers = await rpc.lightning.ListPeers(ln.ListPeersRequest())
    sender = next(p for p in peers.peers if p.pub_key == network.sender.pubkey_hex)
    seen = {
        "getinfo": _feature(info.features, 39),
        "listpeers": _feature(sender.features, 39),
    }
    print(f"feature 39 on lnd {network.generation.value}: {seen}")
    if network.generation is Generation.CUSTOM:
        expected = ("unknown", False, False)
    else:
        expected = ("onion-messages", False, True)
    assert seen == {"getinfo": expected, "listpeers": expected}


def _feature(features: Any, bit: int) -> tuple[str, bool, bool] | None:
    if bit not in features:
        return None
    feature = features[bit]
    return (feature.name, feature.is_required, feature.is_known)


async def test_lsps0_feature_bit_729_is_advertised(network: Network) -> None:
    """Both generations advertise LSPS0's bit from ``--protocol.custom-init=729`` and
    ``--protocol.custom-nodeann=729`` (itest/lndnode.py): GetInfo lists the node
    announcement's features, the sender's ListPeers the LSP's init."""
    await asyncio.to_thread(network.ensure_sender_connected)
    async with network.lsp.rpc() as rpc:
        info = await rpc.lightning.GetInfo(ln.GetInfoRequest())
    async with network.sender.rpc() as rpc:
        peers = await rpc.lightning.ListPeers(ln.ListPeersRequest())
    lsp = next(p for p in peers.peers if p.pub_key == network.lsp.pubkey_hex)
    seen = {"getinfo": _feature(info.features, 729), "listpeers": _feature(lsp.features, 729)}
    print(f"feature 729 on lnd {network.generation.value}: {seen}")
    expected = ("unknown", False, False)
    assert seen == {"getinfo": expected, "listpeers": expected}


async def test_lsps0_message_37913_reaches_subscribe_custom_messages(network: Network) -> None:
    """37913 is in the custom range (>= 32768): lnd sends it and streams it to
    SubscribeCustomMessages with no ``protocol.custom-message`` setting, on both generations
    (the custom generation's setting names 513 only)."""
    await asyncio.to_thread(network.ensure_sender_connected)
    payload = b'{"jsonrpc":"2.0","id":"fact","method":"lsps0.list_protocols","params":{}}'
    async with (
        network.lsp.rpc() as rpc,
        collect(
            rpc.lightning.SubscribeCustomMessages(ln.SubscribeCustomMessagesRequest())
        ) as stream,
    ):
        async with network.sender.rpc() as sender:
            answer = await sender.lightning.SendCustomMessage(
                ln.SendCustomMessageRequest(peer=network.lsp.pubkey, type=37913, data=payload),
                timeout=10,
            )
        assert answer.status == "message sent successfully"
        item = await stream.wait_for("the 37913 message", lambda i: i.type == 37913)
        assert (item.peer, item.data) == (network.sender.pubkey, payload)


async def test_send_to_a_disconnected_peer_is_not_found(network: Network) -> None:
    await asyncio.to_thread(network.take_recipient_offline)
    async with network.lsp.rpc() as rpc:
        with pytest.raises(grpc.aio.AioRpcError) as custom:
            await rpc.lightning.SendCustomMessage(
                ln.SendCustomMessageRequest(peer=network.recipient.pubkey, type=513, data=b"x"),
                timeout=10,
            )
        assert custom.value.code() is grpc.StatusCode.NOT_FOUND
        assert custom.value.details() == NOT_CONNECTED

        with pytest.raises(grpc.aio.AioRpcError) as onion:
            await rpc.lightning.SendOnionMessage(
                ln.SendOnionMessageRequest(
                    peer=network.recipient.pubkey, path_key=some_point(), onion=b"\x00" * 1366
                ),
                timeout=10,
            )
    if network.generation is Generation.CUSTOM:
        assert onion.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert onion.value.details() == (
            "unknown method SendOnionMessage for service lnrpc.Lightning"
        )
    else:
        assert onion.value.code() is grpc.StatusCode.NOT_FOUND
        assert onion.value.details() == NOT_CONNECTED


async def test_custom_message_513_to_a_connected_peer(network: Network) -> None:
    """0.20 sends it (custom-message=513); 0.21 refuses 513 as a custom type (it knows it)."""
    await asyncio.to_thread(network.ensure_sender_connected)
    async with network.lsp.rpc() as rpc:
        request = ln.SendCustomMessageRequest(peer=network.sender.pubkey, type=513, data=b"\x00")
        if network.generation is Generation.CUSTOM:
            answer = await rpc.lightning.SendCustomMessage(request, timeout=10)
            assert answer.status == "message sent successfully"
        else:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await rpc.lightning.SendCustomMessage(request, timeout=10)
            assert refused.value.code() is grpc.StatusCode.UNKNOWN
            assert refused.value.details() == (
                "msg type: 513 not in custom range: <unknown> and not overridden"
            )


async def test_derive_shared_key_is_sha256_of_compressed_ecdh(network: Network) -> None:
    ephemeral = coincurve.PrivateKey(os.urandom(32))
    async with network.lsp.rpc() as rpc:
        answer = await rpc.signer.DeriveSharedKey(
            signer.SharedKeyRequest(ephemeral_pubkey=ephemeral.public_key.format())
        )
    node_point = coincurve.PublicKey(network.lsp.pubkey)
    expected = hashlib.sha256(node_point.multiply(ephemeral.secret).format(compressed=True))
    assert answer.shared_key == expected.digest()


async def test_peer_events_on_disconnect_and_reconnect(network: Network) -> None:
    """No replay on subscribe; OFFLINE on disconnect, ONLINE on connect, hex pubkeys."""
    await asyncio.to_thread(network.bring_recipient_online)
    recipient = network.recipient.pubkey_hex
    async with (
        network.lsp.rpc() as rpc,
        collect(rpc.lightning.SubscribePeerEvents(ln.PeerEventSubscription())) as events,
    ):
        await asyncio.sleep(1.0)
        assert events.items == []  # the current state is not replayed
        await asyncio.to_thread(network.take_recipient_offline)
        await events.wait_for("PEER_OFFLINE", lambda e: e.type == ln.PeerEvent.PEER_OFFLINE)
        await asyncio.to_thread(network.bring_recipient_online)
        await events.wait_for("PEER_ONLINE", lambda e: e.type == ln.PeerEvent.PEER_ONLINE)
        peers = await rpc.lightning.ListPeers(ln.ListPeersRequest())
        await asyncio.sleep(1.0)
        seen = [(e.pub_key, ln.PeerEvent.EventType.Name(e.type)) for e in events.items]
    assert seen == [(recipient, "PEER_OFFLINE"), (recipient, "PEER_ONLINE")]
    assert recipient in {p.pub_key for p in peers.peers}


async def test_what_the_lsp_stream_shows_for_an_offline_next_hop(network: Network) -> None:
    """custom: the incoming 513 as sent. native: lnd tries to forward, fails, and still
    publishes the *incoming* path_key and onion, with the sender as peer."""
    await asyncio.to_thread(network.ensure_sender_connected)
    await asyncio.to_thread(network.take_recipient_offline)
    letter = await write_letter(network, label="fact-offline")
    async with network.lsp.rpc() as rpc, collect(inbox_stream(network, rpc)) as stream:
        await send_to_lsp(network, letter.sent)
        if network.generation is Generation.CUSTOM:
            item = await stream.wait_for("the 513 message", lambda i: i.type == 513)
            assert item.peer == network.sender.pubkey
            assert item.data == letter.sent.encode()
        else:
            item = await stream.wait_for("the onion message", lambda i: True)
            assert item.peer == network.sender.pubkey
            assert item.path_key == letter.sent.path_key
            assert item.onion == letter.sent.onion
            assert dict(item.custom_records) == {}
            # lnd always sends a reply_path message, empty when there is none.
            assert item.reply_path == ln.BlindedPath()
            # For a forward, encrypted_recipient_data is the LSP hop's ciphertext as received.
            assert item.encrypted_recipient_data == letter.path.hops[0].encrypted_recipient_data
        await asyncio.sleep(1.0)
        assert len(stream.items) == 1


async def test_native_lsp_forwards_to_an_online_next_hop_and_still_publishes(
    network: Network,
) -> None:
    """native: lnd forwards itself and publishes the incoming message too; custom: lnd does not
    forward (only the mailbox can), the recipient gets nothing from lnd alone."""
    await asyncio.to_thread(network.ensure_sender_connected)
    await asyncio.to_thread(network.bring_recipient_online)
    letter = await write_letter(network, label="fact-online")
    async with (
        network.lsp.rpc() as lsp_rpc,
        network.recipient.rpc() as recipient_rpc,
        collect(inbox_stream(network, lsp_rpc)) as at_lsp,
        collect(inbox_stream(network, recipient_rpc)) as at_recipient,
    ):
        await send_to_lsp(network, letter.sent)
        await at_lsp.wait_for("the incoming message at the LSP", lambda i: True)
        if network.generation is Generation.NATIVE:
            item = await at_recipient.wait_for("lnd's forward", is_letter(network, letter))
            await check_received(network, letter, item)
        else:
            await asyncio.sleep(3.0)
            assert at_recipient.items == []


async def test_native_drops_an_unknown_short_channel_id(network: Network) -> None:
    """native: a next hop named by an SCID lnd cannot resolve is dropped, nothing published."""
    if network.generation is Generation.CUSTOM:
        return  # lnd 0.20 does not read onion messages at all
    await asyncio.to_thread(network.ensure_sender_connected)
    lsp, recipient = network.lsp, network.recipient
    path = onion.create_blinded_path(
        [
            onion.BlindedHopSpec(lsp.pubkey, short_channel_id=(999 << 40) | (1 << 16)),
            onion.BlindedHopSpec(recipient.pubkey),
        ],
        onion.random_secret(),
    )
    _, message = onion.build_onion_message(path, {PAYLOAD_TYPE: b"x"}, onion.random_secret())
    async with lsp.rpc() as rpc, collect(inbox_stream(network, rpc)) as stream:
        await send_to_lsp(network, message)
        await asyncio.sleep(3.0)
        assert stream.items == []


async def test_native_drops_a_next_hop_named_by_an_scid_alias(network: Network) -> None:
    """native (0.21.3): lnd looks a next hop's SCID up only in its channel graph, which holds
    a channel that confirmed before use under its real SCID, so a message naming the
    recipient by the alias the LSP gave that channel fails inside lnd and is never
    published: the mailbox cannot keep it. (A zero-conf channel's alias does work:
    test_alias_facts.py has every kind; the custom transport resolves aliases in the
    mailbox, test_scenarios.)"""
    if network.generation is Generation.CUSTOM:
        return  # lnd 0.20 does not read onion messages at all
    channel = network.recipient_channel
    assert channel is not None
    assert channel.alias_scids, "lnd gave the private channel no SCID alias"
    alias = channel.alias_scids[0]
    await asyncio.to_thread(network.ensure_sender_connected)
    letter = await write_letter(network, scid=alias, label="alias")
    # lnd writes an SCID as block:tx:output.
    refusal = f"Failed to fetch channel edges for SCID {format_scid(alias).replace('x', ':')}: "
    refusal += "edge not found"
    async with network.lsp.rpc() as rpc, collect(inbox_stream(network, rpc)) as stream:
        await send_to_lsp(network, letter.sent)
        log = network.lsp.log_file
        await asyncio.to_thread(
            wait_for,
            f"lnd's log to say {refusal!r}",
            lambda: refusal in log.read_text(errors="replace"),
            timeout=20,
        )
        await asyncio.sleep(1.0)
        assert stream.items == []


async def test_native_drops_a_message_back_to_its_sender(network: Network) -> None:
    """native: a next hop equal to the peer the message came from is dropped unpublished."""
    if network.generation is Generation.CUSTOM:
        return  # lnd 0.20 does not read onion messages at all
    await asyncio.to_thread(network.ensure_sender_connected)
    lsp, sender = network.lsp, network.sender
    path = onion.create_blinded_path(
        [
            onion.BlindedHopSpec(lsp.pubkey, next_node_id=sender.pubkey),
            onion.BlindedHopSpec(sender.pubkey),
        ],
        onion.random_secret(),
    )
    _, message = onion.build_onion_message(path, {PAYLOAD_TYPE: b"x"}, onion.random_secret())
    async with (
        lsp.rpc() as lsp_rpc,
        sender.rpc() as sender_rpc,
        collect(inbox_stream(network, lsp_rpc)) as at_lsp,
        collect(inbox_stream(network, sender_rpc)) as at_sender,
    ):
        await send_to_lsp(network, message)
        await asyncio.sleep(3.0)
        assert at_lsp.items == []
        assert at_sender.items == []


async def test_how_streams_end_when_lnd_stops(network: Network) -> None:
    """What a subscriber sees when lnd shuts down (the mailbox must resubscribe after)."""
    async with network.lsp.rpc() as rpc:
        peers = Collector(rpc.lightning.SubscribePeerEvents(ln.PeerEventSubscription()))
        custom = Collector(
            rpc.lightning.SubscribeCustomMessages(ln.SubscribeCustomMessagesRequest())
        )
        onion = (
            Collector(rpc.lightning.SubscribeOnionMessages(ln.SubscribeOnionMessagesRequest()))
            if network.generation is Generation.NATIVE
            else None
        )
        await asyncio.sleep(1.0)
        try:
            await asyncio.to_thread(network.lsp.stop)
            ended = {
                "peer_events": await peers.wait_end(),
                "custom": await custom.wait_end(),
            }
            if onion is not None:
                ended["onion"] = await onion.wait_end()
        finally:
            await asyncio.to_thread(network.lsp.start)
            for collector in (peers, custom, onion):
                if collector is not None:
                    await collector.close()
    seen = {
        name: None if error is None else (error.code().name, error.details())
        for name, error in ended.items()
    }
    print(f"streams at lnd shutdown: {seen}")
    for name, result in seen.items():
        assert result is None or result[0] in ("UNKNOWN", "UNAVAILABLE", "CANCELLED"), (
            name,
            result,
        )
