"""Which SCID an lnd 0.21.3 LSP forwards an onion message by, for each channel an LSP opens to
a phone: checked against the real binaries, native generation only.

A phone behind an LSP (LDK's default ``DefaultMessageRouter``) names the LSP's next hop in its
compact blinded paths by the alias the LSP sent in channel_ready: one of the LSP's
ListChannels ``alias_scids``. lnd 0.21.3 resolves a next-hop SCID only through its channel
graph (``onionmessage/resolver.go`` ``GraphNodeResolver.RemotePubFromSCID`` ->
``ChannelGraph.FetchChannelEdgesByID``: an exact lookup of the edge index, no alias manager),
so a name works exactly when it is the SCID the graph holds the channel under. That SCID
is set by ``funding/manager.go``:

- a channel that confirms before use (kinds a and b) enters the graph under its real SCID
  (``handleFundingConfirmation`` -> ``MarkAsOpen(real)``, then ``handleChannelReadyReceived``
  -> ``addToGraph(real)``); its alias is only an ``aliasmgr`` entry;
- a zero-conf channel's SCID *is* its base alias (``RequestAlias`` at the reservation), the
  alias it sends in channel_ready, and ``addToGraph`` puts the edge under it once both
  channel_ready messages are through; at 6 confirmations ``waitForZeroConfChannel`` records
  the real SCID (``MarkRealScid``) but replaces the edge (``DeleteAliasEdge`` +
  ``addToGraph(real)``) only for a *public* channel, so a private one keeps its alias in the
  graph for good and its real SCID never enters it;
- ``annAfterSixConfs`` swaps an alias edge for the real one only for public channels.

So (outcome at the LSP for a message whose next hop is the phone)::

    channel (private, anchors)    moment          alias      real SCID  node id
    a  option-scid-alias only     1, 3, 6 confs   dropped    delivered  delivered
                                  LSP restart     dropped    delivered  delivered
    b  --scid_alias               1, 3, 6 confs   dropped    delivered  delivered
                                  LSP restart     dropped    delivered  delivered
    c  --zero_conf --scid_alias   unconfirmed     delivered  (none)     delivered
                                  1, 3, 6 confs   delivered  dropped    delivered
                                  LSP restart     delivered  dropped    delivered

(a and b open at their first confirmation; c's alias works once the edge is in the graph,
up to a second after the channel turns active, see :func:`itest.channels.wait_in_graph`.)
A dropped message fails inside lnd before it is published ("Failed to fetch channel edges
for SCID ...: edge not found"), so a mailbox never sees it.

lnd caches every SCID it resolved (an LRU of 1000, no expiry): after the first delivery a
later one may come from the cache, so each moment also reads the graph itself (GetChanInfo
by channel point, the same lookup), and the restart empties the cache.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from itest.build import Generation
from itest.channels import (
    ChannelKind,
    LspView,
    chain_scid,
    confirmations,
    lsp_view,
    mine_to,
    open_private_channel,
    phone,
    wait_in_graph,
)
from itest.lndnode import LndNode
from itest.network import Network
from itest.onion import Letter, check_received, inbox_stream, is_letter, send_to_lsp, write_letter
from itest.process import wait_for
from itest.rpc import collect
from lndmailbox.onion.tlv import format_scid

# The custom generation (lnd 0.20) does not read onion messages: these facts exist only for
# the native one, so only its network is requested (no custom case is generated).
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.parametrize("network", [Generation.NATIVE], indirect=True, ids=["lnd0.21"]),
]

Outcome = Literal["delivered", "dropped"]
D: Outcome = "delivered"
X: Outcome = "dropped"
NAMES = ("alias", "real scid", "node id")

UNCONFIRMED, ONE, THREE, SIX, RESTART = (
    "unconfirmed",
    "1 conf",
    "3 confs",
    "6 confs",
    "after LSP restart",
)

# kind -> moment -> outcome by (alias, real scid, node id); None: no real SCID exists yet.
Row = tuple[Outcome, Outcome | None, Outcome]
CONFIRMED_FIRST: Mapping[str, Row] = dict.fromkeys((ONE, THREE, SIX, RESTART), (X, D, D))
EXPECTED: Mapping[ChannelKind, Mapping[str, Row]] = {
    ChannelKind.OPTION_SCID_ALIAS: CONFIRMED_FIRST,
    ChannelKind.SCID_ALIAS_TYPE: CONFIRMED_FIRST,
    ChannelKind.ZERO_CONF: {
        UNCONFIRMED: (D, None, D),
        **dict.fromkeys((ONE, THREE, SIX, RESTART), (D, X, D)),
    },
}


@pytest.fixture
def phone_node(network: Network, kind: ChannelKind) -> Iterator[LndNode]:
    """A fresh phone lnd per test: one channel to the LSP, as an LSP's user has."""
    with phone(network, f"phone-{kind.value}") as node:
        yield node


@dataclass(frozen=True)
class Moment:
    label: str
    view: LspView
    real_scid: int | None
    outcomes: Mapping[str, Outcome]

    @property
    def row(self) -> Row:
        real = self.outcomes.get("real scid")
        return (self.outcomes["alias"], real, self.outcomes["node id"])


@pytest.mark.parametrize("kind", list(ChannelKind), ids=lambda k: k.value)
async def test_which_scid_the_lsp_forwards_by(
    network: Network, phone_node: LndNode, kind: ChannelKind
) -> None:
    """The table of the module docstring for one channel kind, moment by moment; at each
    moment the graph holds the channel under the one SCID that is delivered."""
    await asyncio.to_thread(network.ensure_sender_connected)
    txid = await asyncio.to_thread(open_private_channel, network, phone_node, kind)
    seen: list[Moment] = []

    if kind.zero_conf:
        await asyncio.to_thread(wait_in_graph, network, phone_node, txid)
        assert confirmations(network, txid) == 0
        seen.append(await moment(network, phone_node, txid, UNCONFIRMED))
    for label, confs in ((ONE, 1), (THREE, 3), (SIX, 6)):
        await asyncio.to_thread(mine_to, network, txid, confs)
        await asyncio.to_thread(wait_in_graph, network, phone_node, txid)
        if confs == 6:
            await asyncio.to_thread(wait_funding_flow_done, network, phone_node, txid)
        seen.append(await moment(network, phone_node, txid, label))

    await asyncio.to_thread(restart_lsp, network, phone_node)
    await asyncio.to_thread(wait_in_graph, network, phone_node, txid, timeout=60)
    seen.append(await moment(network, phone_node, txid, RESTART))

    table = {m.label: m.row for m in seen}
    print(f"\n{kind.value}: (alias, real scid, node id) {table}")
    assert table == EXPECTED[kind], f"{kind.value}: (alias, real scid, node id) {table}"

    # Why: the name the graph holds the channel under is the one that works.
    for m in seen:
        alias = m.view.alias_scids[0]
        if kind.zero_conf:
            assert m.view.scid == alias, m  # a zero-conf channel's SCID is its base alias
            assert m.view.graph_scid == alias, m
            # lnd learns the real SCID at 6 confirmations (funding/manager.go
            # waitForFundingConfirmation waits 6 for zero-conf) and keeps it beside the alias.
            expected_confirmed = m.real_scid if m.label in (SIX, RESTART) else 0
            assert m.view.zero_conf_confirmed_scid == expected_confirmed, m
        else:
            assert m.view.scid == m.real_scid, m
            assert m.view.graph_scid == m.real_scid, m


# One moment ---------------------------------------------------------------------------------


async def moment(network: Network, phone_node: LndNode, txid: str, label: str) -> Moment:
    """Sends the phone a message by each name and sees which ones the LSP forwards."""
    view = await asyncio.to_thread(lsp_view, network, phone_node, txid)
    assert view is not None
    real = await asyncio.to_thread(chain_scid, network, view.channel_point)
    assert len(view.alias_scids) == 1, view
    alias = view.alias_scids[0]
    # The phone was told this alias in the LSP's channel_ready: it is what a phone's compact
    # blinded paths name the channel by (LDK: ChannelDetails::get_inbound_payment_scid).
    (theirs,) = [
        c
        for c in await asyncio.to_thread(phone_node.channels, network.lsp)
        if c["channel_point"] == view.channel_point
    ]
    assert int(str(theirs["peer_scid_alias"])) == alias
    names: dict[str, int | None] = {"alias": alias, "real scid": real}
    outcomes = await forwarded(network, phone_node, names, label)
    await check_alias_map(network, view, real)
    return Moment(label, view, real, outcomes)


async def forwarded(
    network: Network, recipient: LndNode, names: Mapping[str, int | None], label: str
) -> dict[str, Outcome]:
    """One message per SCID in ``names`` (None: skipped), then one by node id, all from the
    sender through the LSP to ``recipient``.

    The node-id message goes last and always arrives: lnd handles one peer's onion
    messages in order (one actor per peer, onionmessage/actor.go), so once it has been
    published at the LSP and delivered to the recipient, every earlier message has been
    forwarded or dropped. Delivered: the recipient's lnd peeled it with its own key and
    shows the sender's payload, and the LSP published the incoming message. Dropped: it
    never reached either stream and the LSP's log says why.
    """
    letters: dict[str, Letter] = {}
    for name, scid in names.items():
        if scid is not None:
            letters[name] = await write_letter(
                network, scid=scid, label=f"{label} {name}", recipient=recipient
            )
    last = letters["node id"] = await write_letter(
        network, label=f"{label} node id", recipient=recipient
    )
    log = network.lsp.log_file
    offset = log.stat().st_size
    async with (
        network.lsp.rpc() as lsp_rpc,
        recipient.rpc() as recipient_rpc,
        collect(inbox_stream(network, lsp_rpc)) as at_lsp,
        collect(inbox_stream(network, recipient_rpc)) as at_recipient,
    ):
        for letter in letters.values():
            await send_to_lsp(network, letter.sent)
        await at_recipient.wait_for(f"the {label} node-id message", is_letter(network, last))
        await at_lsp.wait_for(
            f"the LSP to publish the {label} node-id message",
            lambda i: i.onion == last.sent.onion,
        )
        outcomes: dict[str, Outcome] = {}
        for name, letter in letters.items():
            got = [i for i in at_recipient.items if is_letter(network, letter)(i)]
            published = [i for i in at_lsp.items if i.onion == letter.sent.onion]
            if got:
                await check_received(network, letter, got[0], recipient)
                assert len(published) == 1, f"{label} {name}: delivered, published {published}"
                outcomes[name] = D
            else:
                assert published == [], f"{label} {name}: dropped but published"
                scid = names[name]
                assert scid is not None
                await asyncio.to_thread(wait_refusal, log, offset, scid)
                outcomes[name] = X
    return outcomes


def wait_refusal(log: Path, offset: int, scid: int) -> None:
    """lnd's resolver logged that the graph has no edge for ``scid`` (after ``offset``)."""
    # lnd writes an SCID as block:tx:output.
    refusal = f"Failed to fetch channel edges for SCID {format_scid(scid).replace('x', ':')}: "
    refusal += "edge not found"

    def logged() -> bool:
        with log.open("rb") as f:
            if log.stat().st_size >= offset:  # else rotated: read it all
                f.seek(offset)
            return refusal in f.read().decode(errors="replace")

    wait_for(f"lnd's log to say {refusal!r}", logged, timeout=10)


async def check_alias_map(network: Network, view: LspView, real: int | None) -> None:
    """ListAliases says the same: the alias map's base SCID is the graph's SCID. A private
    zero-conf channel's base is its alias; a confirmed-first channel's base is its real SCID."""
    answer = await asyncio.to_thread(network.lsp.lncli, "listaliases")
    maps = {
        int(str(m["base_scid"])): [int(str(a)) for a in m.get("aliases") or ()]
        for m in answer.get("alias_maps") or ()
    }
    alias = view.alias_scids[0]
    base = alias if view.zero_conf else real
    assert base is not None
    assert alias in maps.get(base, []), (base, maps)
    assert view.graph_scid == base


# Funding flow and restart --------------------------------------------------------------------


def wait_funding_flow_done(network: Network, peer: LndNode, txid: str) -> None:
    """lnd's funding manager has finished with the channel: nothing in its graph changes any
    more (``funding/manager.go`` ``stateStep`` ``addedToGraph`` logs this after
    ``annAfterSixConfs``; for zero-conf after ``waitForZeroConfChannel``, at 6 confirmations)."""
    (channel,) = [
        c for c in network.lsp.channels(peer) if str(c["channel_point"]).startswith(f"{txid}:")
    ]
    done = re.compile(
        rf"Channel\({re.escape(str(channel['chan_id']))}\) with ShortChanID \S+: "
        r"successfully announced"
    )
    wait_for(
        f"lnd to finish the funding flow of {channel['channel_point']}",
        lambda: done.search(network.lsp.log_file.read_text(errors="replace")) is not None,
        timeout=30,
        alive=[network.lsp.process],
    )


def restart_lsp(network: Network, peer: LndNode) -> None:
    """Restarts the LSP's lnd (its SCID cache goes) and reconnects the sender and ``peer``."""
    network.lsp.restart()
    network.wait_synced()
    network.ensure_sender_connected()
    peer.connect(network.lsp)  # a phone does not listen: it dials the LSP itself
    wait_for(
        f"the LSP to see {peer.name} again",
        lambda: network.lsp.is_connected(peer),
        timeout=30,
    )
