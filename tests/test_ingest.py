"""Ingest's promises that the end-to-end tests cannot reach on purpose."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lndmailbox.clock import SystemClock
from lndmailbox.ingest import Ingest, RaceGuard
from lndmailbox.lnd import IncomingOnionMessage, Transport
from lndmailbox.metrics import Metrics
from lndmailbox.parcel import Parcel
from lndmailbox.peers import ChannelMap, PeerTracker
from lndmailbox.report import Reporter
from lndmailbox.sphinx import BlindedHopSpec, LocalNodeKey, message_via
from lndmailbox.store import Store


class HangingSigner:
    """A signer that never answers, like an lnd that stopped mid-call."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def ecdh(self, point: bytes) -> bytes:
        self.called.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def no_channels() -> dict[int, bytes]:
    return {}


async def test_a_message_cut_short_by_shutdown_stays_journaled(
    redis_url: str, tmp_path: Path
) -> None:
    node = LocalNodeKey.generate()
    bob = LocalNodeKey.generate()
    clock = SystemClock()
    metrics = Metrics()
    decided: list[str | None] = []
    kept: list[Parcel] = []
    async with Store.from_url(redis_url, node.pubkey) as store:
        signer = HangingSigner()

        async def allowed(peer: bytes) -> bool:
            return True

        async def send(peer: bytes, path_key: bytes, onion: bytes) -> None:
            raise AssertionError("nothing is sent")

        ingest = Ingest(
            node_id=node.pubkey,
            node_key=signer,
            transport=Transport.CUSTOM,
            peers=PeerTracker(clock),
            channels=ChannelMap(no_channels, clock),
            is_allowed=allowed,
            send=send,
            clock=clock,
            keep=kept.append,
            decided=decided.append,
            race=RaceGuard(clock, 0),
            reporter=Reporter(node=node.pubkey, metrics=metrics, store=store),
            metrics=metrics,
        )
        _, message = message_via([BlindedHopSpec(node.pubkey), bob.pubkey], {65: b"x"})
        incoming = IncomingOnionMessage(
            peer=LocalNodeKey.generate().pubkey, path_key=message.path_key, onion=message.onion
        )
        task = asyncio.create_task(ingest.handle(incoming, "entry-1"))
        await signer.called.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert decided == []  # the next daemon decides it again
    assert kept == []
