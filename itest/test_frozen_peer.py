"""How long real lnd takes to notice a silently broken connection, on both generations.

``--confirm-after`` (90 s, lndmailbox/config.py) rests on lnd dropping such a peer within
its ping interval plus its pong timeout (peer/brontide.go: ``pingInterval`` 1 min,
``pingTimeout`` 30 s; peer/ping_manager.go). Here an LDK wallet connects to the LSP and is
frozen with SIGSTOP: its TCP connection stays open and nothing answers on it, as when a
phone vanishes from the network without closing it. The test times the LSP's PEER_OFFLINE
from the freeze, and checks from lnd's log that a late pong is what ended the connection.

lnd triples both timeouts for a peer whose address contains "127.0.0.1", taking it for one
that came through a local Tor proxy (``isTorConnection``, ``scaleTimeout``). So the wallet
connects over IPv6 loopback for lnd's clearnet figure, and over 127.0.0.1 for the scaled
one, which every peer of an lnd behind a proxy on its own host gets.

The freeze comes right after PEER_ONLINE. lnd starts a peer's ping ticker just before it
publishes PEER_ONLINE, and the ticker first fires a whole interval later, so this is the
slowest case: the interval plus the timeout. A freeze at any other moment is noticed
sooner, but never sooner than a pong timeout after it (the pong to a ping sent before the
freeze arrives within milliseconds here), which is the lower bound checked: a connection
that closed instead of going silent would be dropped at once.

A frozen process differs from a vanished phone in one way: its kernel still acknowledges
what lnd writes. That does not change the figure: lnd retries a write that times out
instead of disconnecting (writeHandler), so a vanished phone is noticed by the same ping.

Slow (90 s, and 270 s over 127.0.0.1, per generation) and a fact about lnd's constants
rather than the mailbox's code: marked ``long``, so ``make itest`` (and CI) skips it;
``make itest-long`` runs it. Run it when LND_VERSIONS (itest/build.py) changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from itest.build import LND_VERSIONS, Binaries
from itest.ldknode import LdkNode
from itest.lndnode import LndNode
from itest.network import Network
from itest.rpc import collect
from lndmailbox.lnd.lnrpc import lightning_pb2 as ln

pytestmark = [pytest.mark.long, pytest.mark.timeout(900)]

PING_INTERVAL = 60.0
PONG_TIMEOUT = 30.0
"""lnd's constants (peer/brontide.go, the same in 0.20.2 and 0.21.3), for clearnet peers."""
TOR_MULTIPLIER = 3
"""lnd's ``torTimeoutMultiplier``: the scale of both for a peer it takes for a Tor one."""
MARGIN = 5.0
"""What lnd may take past the interval and the timeout: its Disconnect, the peer's
teardown and the event's way to us. Measured 0.1 s on both generations and both routes
(90.1 s and 270.1 s after PEER_ONLINE, the freeze less than 0.1 s after it); 5 s leaves
room for a loaded machine (2 shared cores) and is far below any change of lnd's constants
(the scaled route alone is 180 s longer)."""


@dataclass(frozen=True)
class Route:
    name: str
    address: Callable[[LndNode], str]
    scale: int
    """How lnd scales its ping interval and pong timeout for a peer that comes this way."""


ROUTES = [
    Route("[::1], clearnet timeouts", lambda lnd: lnd.p2p_address_ipv6, 1),
    Route("127.0.0.1, timeouts scaled as for Tor", lambda lnd: lnd.p2p_address, TOR_MULTIPLIER),
]


def peer_event(
    node: LdkNode, kind: ln.PeerEvent.EventType.ValueType
) -> Callable[[ln.PeerEvent], bool]:
    return lambda e: e.pub_key == node.node_id and e.type == kind


@pytest.mark.parametrize("route", ROUTES, ids=["ipv6", "ipv4-loopback"])
async def test_lnd_drops_a_frozen_peer_within_its_ping_interval_and_pong_timeout(
    network: Network, binaries: Binaries, tmp_path: Path, route: Route
) -> None:
    lsp = network.lsp
    slowest = (PING_INTERVAL + PONG_TIMEOUT) * route.scale
    phone = LdkNode("frozen", binaries.ldk, tmp_path / "frozen", network.log_dir)
    tip = f"{network.btcd.call('getbestblockhash')}:{network.btcd.height()}"
    async with (
        lsp.rpc() as rpc,
        collect(rpc.lightning.SubscribePeerEvents(ln.PeerEventSubscription())) as events,
    ):
        try:
            await asyncio.to_thread(phone.start, tip)
            await asyncio.to_thread(phone.connect, lsp, route.address(lsp))
            await events.wait_for(
                "the phone's PEER_ONLINE", peer_event(phone, ln.PeerEvent.PEER_ONLINE)
            )
            online = time.monotonic()
            assert phone.node_id in await asyncio.to_thread(lsp.peers)
            log_start = lsp.log_file.stat().st_size

            phone.freeze()
            frozen = time.monotonic()
            await events.wait_for(
                "the frozen phone's PEER_OFFLINE",
                peer_event(phone, ln.PeerEvent.PEER_OFFLINE),
                within=slowest + 60,
            )
            dropped = time.monotonic()
        finally:
            phone.thaw()
            await asyncio.to_thread(phone.stop)

    took = dropped - frozen
    print(
        f"\n[lnd {network.generation.value}] a frozen peer is dropped after {took:.1f} s "
        f"(over {route.name}; {dropped - online:.1f} s after its PEER_ONLINE; "
        f"lnd {LND_VERSIONS[network.generation]})"
    )
    assert phone.node_id not in await asyncio.to_thread(lsp.peers)
    with lsp.log_file.open("rb") as log:
        log.seek(log_start)
        since_freeze = log.read().decode(errors="replace")
    assert any(
        "pong response failure" in line and phone.node_id in line
        for line in since_freeze.splitlines()
    ), f"lnd dropped the phone for another reason; its log since the freeze:\n{since_freeze}"
    assert PONG_TIMEOUT * route.scale - MARGIN < took < slowest + MARGIN
