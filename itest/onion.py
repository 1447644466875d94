"""Onion messages on the regtest network: built with the project's sphinx, sent by real lnd.

The sender writes a payload for the recipient and blinds a path LSP -> recipient; its lnd
hands the message to the LSP. What the LSP must forward is computed independently by
peeling the message with the LSP's own key (Signer.DeriveSharedKey through
:class:`lndmailbox.lnd.LndNodeKey`), so the test knows the exact bytes the recipient must
receive.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from itest.build import Generation
from itest.lndnode import LndNode
from itest.network import Network
from itest.rpc import NodeRpc
from lndmailbox import onion
from lndmailbox.lnd import LndClient, LndEndpoint
from lndmailbox.lnd.lnrpc import lightning_pb2 as ln
from lndmailbox.onion.wire import ONION_MESSAGE_TYPE, OnionMessage

# The recipient's payload record: odd (so no reader may reject it as unknown), >= 64 (a
# final-hop payload field), and none of BOLT 12's 64/66/68.
PAYLOAD_TYPE = 65537


@dataclass(frozen=True)
class Letter:
    """One message on its way: what the sender sends and what the LSP must pass on."""

    payload: bytes
    path: onion.BlindedPath
    sent: OnionMessage
    forward: onion.Forward

    @property
    def delivered(self) -> OnionMessage:
        return self.forward.message


def endpoint(node: LndNode) -> LndEndpoint:
    return LndEndpoint(
        target=node.rpcserver,
        tls_cert=node.tls_cert_path.read_bytes(),
        macaroon=node.admin_macaroon_path.read_bytes(),
    )


async def peel_with(node: LndNode, message: OnionMessage) -> onion.Forward | onion.Receive:
    """One layer off ``message`` with ``node``'s identity key, which stays inside its lnd."""
    async with LndClient(endpoint(node)) as client:
        return await onion.peel(message.path_key, message.onion, client.node_key())


async def write_letter(
    network: Network,
    *,
    scid: int | None = None,
    label: str = "",
    recipient: LndNode | None = None,
) -> Letter:
    """A message LSP -> recipient naming the recipient by node id, or by ``scid``, one of the
    short channel ids of its channel. The recipient is ``network.recipient`` unless another
    node (a peer of the LSP) is given."""
    lsp = network.lsp
    recipient = recipient or network.recipient
    if scid is not None:
        first = onion.BlindedHopSpec(lsp.pubkey, short_channel_id=scid)
    else:
        first = onion.BlindedHopSpec(lsp.pubkey, next_node_id=recipient.pubkey)
    last = onion.BlindedHopSpec(recipient.pubkey, path_id=os.urandom(32))
    path = onion.create_blinded_path([first, last], onion.random_secret())
    payload = f"itest {label} ".encode() + os.urandom(16).hex().encode()
    first_hop, message = onion.build_onion_message(
        path, {PAYLOAD_TYPE: payload}, onion.random_secret()
    )
    assert first_hop == lsp.pubkey
    forward = await peel_with(lsp, message)
    assert isinstance(forward, onion.Forward), forward
    if scid is not None:
        assert forward.short_channel_id == scid
    else:
        assert forward.next_node_id == recipient.pubkey
    return Letter(payload, path, message, forward)


async def send_to_lsp(network: Network, message: OnionMessage) -> None:
    """The sender's lnd hands ``message`` to the LSP: SendCustomMessage 513 or SendOnionMessage."""
    async with network.sender.rpc() as rpc:
        await send_onion_message(rpc, network.generation, network.lsp.pubkey, message)


async def send_onion_message(
    rpc: NodeRpc, generation: Generation, peer: bytes, message: OnionMessage
) -> None:
    """The lnd behind ``rpc`` sends ``message`` to its peer ``peer``, the generation's way."""
    if generation is Generation.CUSTOM:
        await rpc.lightning.SendCustomMessage(
            ln.SendCustomMessageRequest(peer=peer, type=ONION_MESSAGE_TYPE, data=message.encode()),
            timeout=20,
        )
    else:
        await rpc.lightning.SendOnionMessage(
            ln.SendOnionMessageRequest(peer=peer, path_key=message.path_key, onion=message.onion),
            timeout=20,
        )


def inbox_stream(network: Network, rpc: NodeRpc) -> Any:
    """The recipient-side stream of onion messages for this generation."""
    if network.generation is Generation.CUSTOM:
        return rpc.lightning.SubscribeCustomMessages(ln.SubscribeCustomMessagesRequest())
    return rpc.lightning.SubscribeOnionMessages(ln.SubscribeOnionMessagesRequest())


def is_letter(network: Network, letter: Letter) -> Any:
    """A predicate over the recipient's stream items: is this item ``letter``?"""
    if network.generation is Generation.CUSTOM:

        def custom(item: ln.CustomMessage) -> bool:
            return item.type == ONION_MESSAGE_TYPE and item.data == letter.delivered.encode()

        return custom

    def native(item: ln.OnionMessageUpdate) -> bool:
        return item.onion == letter.delivered.onion

    return native


async def check_received(
    network: Network, letter: Letter, item: Any, recipient: LndNode | None = None
) -> None:
    """The recipient (``network.recipient`` unless given) got ``letter`` from the LSP, and the
    payload inside is the sender's.

    custom: the bytes are exactly the LSP hop's output; peeling them with the recipient's
    key (inside its lnd) yields a Receive with the payload. native: the recipient's lnd
    peeled it itself and shows the payload among the custom records.
    """
    lsp = network.lsp
    recipient = recipient or network.recipient
    assert item.peer == lsp.pubkey
    if network.generation is Generation.CUSTOM:
        assert item.type == ONION_MESSAGE_TYPE
        assert OnionMessage.decode(item.data) == letter.delivered
        received = await peel_with(recipient, letter.delivered)
        assert isinstance(received, onion.Receive), received
        assert received.payload[PAYLOAD_TYPE] == letter.payload
    else:
        assert item.path_key == letter.delivered.path_key
        assert item.onion == letter.delivered.onion
        assert dict(item.custom_records) == {PAYLOAD_TYPE: letter.payload}
        # lnd shows the recipient's encrypted_recipient_data as it arrived (still encrypted).
        assert item.encrypted_recipient_data == letter.path.hops[-1].encrypted_recipient_data
        assert item.reply_path == ln.BlindedPath()
