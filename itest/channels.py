"""The channels an LSP opens to phones, on the session's regtest network.

A *phone* is a fresh lnd that does not listen (like ``Network.recipient``), connected to the
LSP, with a :class:`~itest.acceptor.ChannelAcceptor` that accepts every channel and agrees to
zero-conf when asked: an lnd run with ``--protocol.zero-conf`` takes a zero-conf channel
only through a ChannelAcceptor. The LSP opens one private anchors channel of a
:class:`ChannelKind` to it; :func:`lsp_view` reads what the LSP's lnd then says about it:
its ListChannels entry and the SCID its channel graph holds the channel under, which is the
only place lnd 0.21 looks an onion message's next-hop SCID up
(``onionmessage/resolver.go`` ``GraphNodeResolver.RemotePubFromSCID``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from itest.acceptor import ChannelAcceptor
from itest.build import Generation
from itest.lndnode import LncliError, LndNode
from itest.network import CHANNEL_SATS, Network
from itest.process import wait_for


class Peer(Protocol):
    """The other end of a channel from the LSP: an :class:`LndNode` phone, or any wallet
    (itest/ldknode.py's LdkNode) with a name and a node id."""

    name: str

    @property
    def pubkey(self) -> bytes: ...


class ChannelKind(enum.Enum):
    """A private channel an LSP may open to a phone. Every one of them gets SCID aliases: both
    lnds run with ``--protocol.option-scid-alias`` (itest/lndnode.py)."""

    OPTION_SCID_ALIAS = "option-scid-alias"
    """No alias channel type: only the option-scid-alias feature bit, negotiated by both."""
    SCID_ALIAS_TYPE = "scid-alias-type"
    """``--scid_alias``: the option_scid_alias channel type, confirmed before use."""
    ZERO_CONF = "zero-conf"
    """``--zero_conf --scid_alias``: usable at once, what LSPs open to phones."""

    @property
    def lncli_flags(self) -> tuple[str, ...]:
        if self is ChannelKind.OPTION_SCID_ALIAS:
            return ()
        if self is ChannelKind.SCID_ALIAS_TYPE:
            return ("--scid_alias",)
        return ("--zero_conf", "--scid_alias")

    @property
    def zero_conf(self) -> bool:
        return self is ChannelKind.ZERO_CONF


@dataclass(frozen=True)
class LspView:
    """What the LSP's lnd says about one channel (``lncli listchannels`` and ``getchaninfo``)."""

    channel_point: str
    active: bool
    scid: int
    """ListChannels ``scid`` (``chan_id`` of lnd 0.20): for a zero-conf channel, its base alias."""
    alias_scids: tuple[int, ...]
    """The LSP's own aliases of the channel: the one it sent in channel_ready is among them,
    and that is what a phone's compact blinded paths name the channel by."""
    peer_scid_alias: int
    """The alias the phone sent in its channel_ready (the LSP uses it only toward the phone)."""
    zero_conf: bool
    zero_conf_confirmed_scid: int
    """A zero-conf channel's real SCID once the funding transaction has 6 confirmations, else 0."""
    graph_scid: int | None
    """The SCID the LSP's channel graph holds the channel under (None: not in the graph)."""


@contextmanager
def phone(network: Network, name: str) -> Iterator[LndNode]:
    """A fresh non-listening lnd connected to the LSP with a ChannelAcceptor running."""
    assert network.generation is Generation.NATIVE, "phones are for the native generation"
    node = LndNode(
        name,
        network.lsp.binaries,
        network.generation,
        network.btcd,
        network.workdir / name,
        network.log_dir,
        listen=False,
    )
    acceptor = ChannelAcceptor(node)
    try:
        node.start()
        node.wait_synced(network.btcd.height())
        acceptor.start()
        node.connect(network.lsp)
        yield node
    finally:
        acceptor.stop()
        node.stop()


def open_private_channel(network: Network, peer: Peer, kind: ChannelKind) -> str:
    """The LSP opens a private anchors channel of ``kind`` to ``peer``; returns the funding txid
    once the funding transaction is in btcd's mempool (nothing is mined)."""
    args = [
        "openchannel",
        f"--node_key={peer.pubkey.hex()}",
        f"--local_amt={CHANNEL_SATS}",
        "--sat_per_vbyte=2",
        "--private",
        "--channel_type=anchors",
        *kind.lncli_flags,
    ]
    txid = str(network.lsp.lncli(*args)["funding_txid"])
    wait_for(
        "the funding transaction in btcd's mempool",
        lambda: txid in network.btcd.call("getrawmempool"),
        timeout=30,
    )
    return txid


def confirmations(network: Network, txid: str) -> int:
    answer: dict[str, Any] = network.btcd.call("getrawtransaction", txid, 1)
    return int(answer.get("confirmations", 0))


def chain_scid(network: Network, channel_point: str) -> int | None:
    """The real SCID of ``channel_point`` from btcd: block height, index in the block, output
    (None while unconfirmed). lnd learns a zero-conf channel's real SCID only at 6
    confirmations; the chain has it from the first."""
    txid, output = channel_point.split(":")
    answer: dict[str, Any] = network.btcd.call("getrawtransaction", txid, 1)
    if not answer.get("blockhash"):
        return None
    block: dict[str, Any] = network.btcd.call("getblock", answer["blockhash"])
    index = list(block["tx"]).index(txid)
    return int(block["height"]) << 40 | index << 16 | int(output)


def mine_to(network: Network, txid: str, confs: int) -> None:
    """Mines until ``txid`` has ``confs`` confirmations and every lnd of the network has seen
    the new tip (extra phones sync on their own)."""
    missing = confs - confirmations(network, txid)
    assert missing >= 0, f"{txid} already has more than {confs} confirmations"
    if missing:
        network.btcd.generate(missing)
    network.wait_synced()


def _funded_by(node: LndNode, peer: Peer, txid: str, *, active_only: bool = False) -> list[Any]:
    args = ["listchannels", f"--peer={peer.pubkey.hex()}"]
    if active_only:
        args.append("--active_only")
    channels: list[Any] = node.lncli(*args)["channels"]
    return [c for c in channels if str(c["channel_point"]).startswith(f"{txid}:")]


def lsp_view(network: Network, peer: Peer, txid: str) -> LspView | None:
    """The LSP's view of its channel to ``peer`` funded by ``txid`` (None: not open yet)."""
    lsp = network.lsp
    listed = _funded_by(lsp, peer, txid)
    if not listed:
        return None
    (channel,) = listed
    point = str(channel["channel_point"])
    try:
        edge = lsp.lncli("getchaninfo", f"--chan_point={point}")
        graph_scid: int | None = int(str(edge["channel_id"]))
    except LncliError as e:
        if "edge not found" not in e.stderr:
            raise
        graph_scid = None
    return LspView(
        channel_point=point,
        active=bool(channel["active"]),
        scid=int(str(channel.get("scid", channel["chan_id"]))),
        alias_scids=tuple(int(str(a)) for a in channel.get("alias_scids") or ()),
        peer_scid_alias=int(str(channel.get("peer_scid_alias", 0))),
        zero_conf=bool(channel.get("zero_conf", False)),
        zero_conf_confirmed_scid=int(str(channel.get("zero_conf_confirmed_scid", 0))),
        graph_scid=graph_scid,
    )


def wait_in_graph(network: Network, peer: Peer, txid: str, *, timeout: float = 30) -> LspView:
    """Waits until the channel is active at the LSP and in its channel graph, and, when
    ``peer`` is an lnd, active on its side too (another wallet's side is the caller's to check:
    an lnd takes onion messages only from peers it has an open channel with).

    lnd adds the edge to its graph only after it has received the peer's channel_ready, in
    the funding manager's next state step (``funding/manager.go`` ``Manager.stateStep``,
    state ``channelReadySent``, polled every second: ``checkPeerChannelReadyInterval``;
    then ``handleChannelReadyReceived`` -> ``addToGraph``), up to a second after the channel
    turned active: a message sent as soon as ListChannels says "active" can find no edge
    yet and be dropped.
    """
    seen: list[LspView] = []

    def ready() -> bool:
        view = lsp_view(network, peer, txid)
        if view is None or not view.active or view.graph_scid is None:
            return False
        seen.append(view)
        if isinstance(peer, LndNode):
            return bool(_funded_by(peer, network.lsp, txid, active_only=True))
        return True

    alive = [network.lsp.process]
    if isinstance(peer, LndNode):
        alive.append(peer.process)
    wait_for(
        f"channel LSP<->{peer.name} active and in the LSP's graph",
        ready,
        timeout=timeout,
        alive=alive,
    )
    return seen[-1]
