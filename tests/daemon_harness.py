"""A running mailbox daemon against simnet and a real Redis, for end-to-end tests.

The daemon runs in-process through :func:`lndmailbox.daemon.run`, the same code path as
the ``lndmailbox`` command, connected to simnet over TLS gRPC with a macaroon.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from simnet import Personality, SimNode, SimPeer

from lndmailbox.config import Settings
from lndmailbox.daemon import run
from lndmailbox.onion import BlindedHopSpec, Receive, message_via
from lndmailbox.onion.tlv import scid
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.store import Store, StoredMessage

PAYLOAD_TYPE = 65
GENERATIONS = pytest.mark.parametrize(
    "personality", [Personality.LND_0_20, Personality.LND_0_21], ids=["lnd0.20", "lnd0.21"]
)
"""Runs a test against simnet as each lnd generation: 0.18-0.20 (custom messages) and
0.21 (native onion messages)."""


def ci_and_long(ci: float, long: float, *, timeout: int, long_timeout: int) -> pytest.MarkDecorator:
    """Parametrizes a heavy scenario's ``size`` (kills, seconds): a form that fits the CI
    run, and the full form under ``-m long`` (``make test-long``), each with its timeout."""
    return pytest.mark.parametrize(
        "size",
        [
            pytest.param(ci, id="ci", marks=pytest.mark.timeout(timeout)),
            pytest.param(
                long, id="long", marks=(pytest.mark.long, pytest.mark.timeout(long_timeout))
            ),
        ],
    )


BOB_SCID = scid(800_000, 7, 1)
BOB_ALIAS = scid(16_000_000, 0, 1)
"""The alias of bob's channel, which confirmed before use: lnd 0.21 does not forward by it."""


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    within: float = 10.0,
    what: str = "condition",
) -> None:
    """Polls ``condition`` until it holds; fails the test with ``what`` after ``within`` s."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


async def counter(w: World, name: str) -> int:
    """A counter the daemon keeps in Redis (0 until first counted)."""
    return (await w.store.events.counters()).get(name, 0)


async def counted(w: World, name: str, value: int) -> None:
    """Waits until the daemon's counter ``name`` reads ``value``."""

    async def reached() -> bool:
        return await counter(w, name) == value

    await wait_until(reached, what=f"counter {name} == {value}")


async def stored_count(w: World, count: int) -> None:
    """Waits until exactly ``count`` messages are queued for bob."""

    async def reached() -> bool:
        return len(await w.stored_for(w.bob)) == count

    await wait_until(reached, what=f"{count} stored for bob")


@dataclass
class World:
    """simnet's LSP node with alice (sender, online) and bob (recipient), plus the daemon."""

    node: SimNode
    alice: SimPeer
    bob: SimPeer
    store: Store
    settings: Settings
    stop: asyncio.Event
    task: asyncio.Task[None] | None = None

    async def start_daemon(self, **changes: object) -> None:
        if changes:
            self.settings = replace(self.settings, **changes)  # type: ignore[arg-type]
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(run(self.settings, stop=self.stop))
        await wait_until(self._daemon_ready, what="the daemon to follow lnd's streams")

    async def _daemon_ready(self) -> bool:
        if self.task is not None and self.task.done():
            self.task.result()
        streams = (
            "onion_messages" if self.node.personality is Personality.LND_0_21 else "custom_messages"
        )
        # A daemon's standby stream comes up first: ready is the leader's own pipeline on
        # lnd's streams, as its heartbeat says.
        beats = await self.store.control.read_daemons()
        return (
            self.node.subscriber_count("peer_events") >= 1
            and self.node.subscriber_count(streams) >= 1
            and any(b.get("role") == "leader" and b.get("ready") for b in beats.values())
        )

    async def stop_daemon(self) -> None:
        if self.task is None:
            return
        self.stop.set()
        await asyncio.wait_for(self.task, 60)
        self.task = None

    def message_for_bob(
        self, text: bytes, *, by_scid: bool = False, override: bool = False
    ) -> OnionMessage:
        """alice -> LSP -> bob, bob's hop named by node id or by channel id."""
        lsp_hop = BlindedHopSpec(
            self.node.pubkey,
            short_channel_id=BOB_SCID if by_scid else None,
            next_node_id=None if by_scid else self.bob.pubkey,
        )
        if override:
            # The LSP hop hands bob a path key of a second blinded path that starts at bob.
            from lndmailbox.onion import create_blinded_path, random_secret

            second_secret = random_secret()
            second = create_blinded_path([BlindedHopSpec(self.bob.pubkey)], second_secret)
            lsp_hop = replace(lsp_hop, override_secret=second_secret)
            del second
        first, message = message_via([lsp_hop, self.bob.pubkey], {PAYLOAD_TYPE: text})
        assert first == self.node.pubkey
        return message

    async def stored_for(self, peer: SimPeer) -> list[StoredMessage]:
        """What is queued for ``peer`` (not what lnd took and waits for confirmation)."""
        return await self.store.queues.messages(peer.pubkey)

    async def held_for(self, peer: SimPeer) -> list[StoredMessage]:
        """Everything Redis holds for ``peer``: unconfirmed, then queued."""
        return await self.store.queues.held(peer.pubkey)

    async def payloads_received(self, peer: SimPeer) -> list[bytes]:
        """What ``peer`` got, peeled with its own key."""
        texts = []
        for message in peer.received:
            result = await peer.peel(message)
            assert isinstance(result, Receive), result
            texts.append(result.payload[PAYLOAD_TYPE])
        return texts


@contextlib.asynccontextmanager
async def world(
    personality: Personality,
    redis_url: str,
    tmp_path: Path,
    *,
    node_secret: bytes | None = None,
    **settings: object,
) -> AsyncIterator[World]:
    """``node_secret``: the LSP node's key (random by default), which picks its keys'
    Cluster slot."""
    node = SimNode(personality, onion_msg_relay_all=False, node_secret=node_secret)
    await node.start()
    alice = node.add_peer("alice")
    bob = node.add_peer("bob")
    node.open_channel(alice, scid(800_000, 3, 0))
    node.open_channel(bob, BOB_SCID, alias_scids=[BOB_ALIAS])
    alice.connect()
    cert, macaroon = node.write_credentials(tmp_path / "lnd")
    values: dict[str, object] = {
        "rpcserver": node.target,
        "tlscertpath": cert,
        "macaroonpath": macaroon,
        "network": "regtest",
        "redis_url": redis_url,
        "datadir": tmp_path / "mailbox",
        "allow_channel_peers": True,
        "race_window": 2.0,
        "sweep_interval": 0.2,
    }
    values.update(settings)
    config = Settings(**values)  # type: ignore[arg-type]
    store = Store.from_url(redis_url, node.pubkey)
    w = World(node, alice, bob, store, config, asyncio.Event())
    try:
        yield w
    finally:
        await w.stop_daemon()
        await store.aclose()
        await node.stop()
