"""The decider's promises that the end-to-end tests cannot reach on purpose."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lndmailbox.clock import SystemClock
from lndmailbox.daemon.decider import Decider
from lndmailbox.daemon.decision_queue import Arrival, DecisionQueue
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.peers import PeerTracker
from lndmailbox.daemon.race_guard import RaceGuard
from lndmailbox.errors import LndCredentialsError
from lndmailbox.lnd import IncomingOnionMessage, Transport
from lndmailbox.onion import BlindedHopSpec, LocalNodeKey, NodeKey, message_via
from lndmailbox.store import Store
from tests.decider_parts import Decided, Kept, NothingSent, decider_for


class HangingSigner:
    """A signer that never answers, like an lnd that stopped mid-call."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def ecdh(self, point: bytes) -> bytes:
        self.called.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def _decider(
    store: Store,
    node: LocalNodeKey,
    node_key: NodeKey,
    *,
    kept: Kept,
    decided: Decided,
    metrics: Metrics,
    queue: DecisionQueue,
    workers: int,
) -> Decider:
    """A decider on the custom transport that keeps mail for any channel peer (none here)."""
    clock = SystemClock()
    return decider_for(
        store,
        node_id=node.pubkey,
        node_key=node_key,
        transport=Transport.CUSTOM,
        clock=clock,
        peers=PeerTracker(clock),
        race=RaceGuard(clock, 0),
        sender=NothingSent(),
        kept=kept,
        decided=decided,
        metrics=metrics,
        allow_channel_peers=True,
        queue=queue,
        workers=workers,
    )


async def test_a_message_cut_short_by_shutdown_stays_journaled(
    redis_url: str, tmp_path: Path
) -> None:
    node = LocalNodeKey.generate()
    bob = LocalNodeKey.generate()
    metrics = Metrics()
    decided, kept = Decided(), Kept()
    async with Store.from_url(redis_url, node.pubkey) as store:
        signer = HangingSigner()
        decider = _decider(
            store,
            node,
            signer,
            kept=kept,
            decided=decided,
            metrics=metrics,
            queue=DecisionQueue(),
            workers=1,
        )
        _, message = message_via([BlindedHopSpec(node.pubkey), bob.pubkey], {65: b"x"})
        incoming = IncomingOnionMessage(
            peer=LocalNodeKey.generate().pubkey, path_key=message.path_key, onion=message.onion
        )
        task = asyncio.create_task(decider.decide(Arrival(incoming, "entry-1")))
        await signer.called.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert decided.entries == []  # the next daemon decides it again
    assert kept.messages == []


async def test_run_decides_everything_queued_before_it_stops(redis_url: str) -> None:
    node = LocalNodeKey.generate()
    metrics = Metrics()
    decided, kept = Decided(), Kept()
    queue = DecisionQueue()
    async with Store.from_url(redis_url, node.pubkey) as store:
        decider = _decider(
            store,
            node,
            node,
            kept=kept,
            decided=decided,
            metrics=metrics,
            queue=queue,
            workers=2,
        )
        entries = [f"entry-{i}" for i in range(5)]
        for entry in entries:
            # Messages for the node itself: decided (dropped as final_hop) without lnd.
            _, message = message_via([node.pubkey], {65: entry.encode()})
            incoming = IncomingOnionMessage(
                peer=LocalNodeKey.generate().pubkey, path_key=message.path_key, onion=message.onion
            )
            queue.put_nowait(Arrival(incoming, entry))
        stop = asyncio.Event()
        stop.set()
        await asyncio.wait_for(decider.run(stop), 10)
    assert sorted(e for e in decided.entries if e is not None) == entries
    assert queue.empty()
    assert kept.messages == []
    dropped = metrics.registry.get_sample_value("lndmailbox_dropped_total", {"reason": "final_hop"})
    assert dropped == 5


class RefusedSigner:
    """lnd refusing the macaroon on every peel."""

    async def ecdh(self, point: bytes) -> bytes:
        raise LndCredentialsError(
            "macaroon has expired", rpc="DeriveSharedKey", code="UNAUTHENTICATED", retryable=False
        )


async def test_what_a_credential_stop_leaves_is_left_for_the_shutdown(redis_url: str) -> None:
    """The one in hand and those set aside after lnd refused the macaroon are left for the
    shutdown to account for: journaled, for the next daemon; not (Redis was away), lost."""
    node = LocalNodeKey.generate()
    metrics = Metrics()
    decided, kept = Decided(), Kept()
    queue = DecisionQueue()
    async with Store.from_url(redis_url, node.pubkey) as store:
        decider = _decider(
            store,
            node,
            RefusedSigner(),
            kept=kept,
            decided=decided,
            metrics=metrics,
            queue=queue,
            workers=1,
        )
        arrivals = []
        for i in range(4):
            _, message = message_via([node.pubkey], {65: b"%d" % i})
            incoming = IncomingOnionMessage(
                peer=LocalNodeKey.generate().pubkey, path_key=message.path_key, onion=message.onion
            )
            arrivals.append(Arrival(incoming, None if i % 2 else f"entry-{i}"))
        for arrival in arrivals:
            queue.put_nowait(arrival)
        with pytest.raises(LndCredentialsError):
            await asyncio.wait_for(decider.run(asyncio.Event()), 10)
    assert decided.entries == []
    assert kept.messages == []
    assert sorted(queue.undecided(), key=arrivals.index) == arrivals
