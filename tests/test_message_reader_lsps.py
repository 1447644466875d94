"""The message reader on the custom transport, where lnd's one custom stream carries LSPS0
messages among the onion messages: against simnet (lnd 0.20) and a real Redis.

An LSPS0 message goes to ``on_lsps`` and nowhere else (not the journal, not the decision
queue), yet proves its sender was there like any message; without ``on_lsps`` it is
dropped without a report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from simnet import Personality, SimNode

from lndmailbox.clock import SystemClock
from lndmailbox.daemon.decision_queue import Arrival, DecisionQueue
from lndmailbox.daemon.journal_writer import JournalWriter
from lndmailbox.daemon.message_reader import MessageReader
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.lnd import IncomingLspsMessage, IncomingOnionMessage, LndClient, Transport
from lndmailbox.onion import message_via
from lndmailbox.retry import Backoff
from lndmailbox.store import Limits, Store

TEXT = 65537
LIST = b'{"jsonrpc":"2.0","id":"1","method":"lsps0.list_protocols","params":{}}'


class Heard:
    """The confirmations' part: who was heard from, in order."""

    def __init__(self) -> None:
        self.peers: list[bytes] = []

    def heard_from(self, peer: bytes, at: float | None = None) -> None:
        self.peers.append(peer)


async def read_until(
    redis_client: aioredis.Redis,
    node: SimNode,
    on_lsps: Callable[[IncomingLspsMessage], None] | None,
    send: Callable[[], Awaitable[None]],
    arrivals: int,
) -> tuple[list[Arrival], Heard, Reporter, JournalWriter]:
    """Runs a reader until ``arrivals`` onion messages are queued after ``send()``."""
    store = Store(redis_client, node.pubkey, Limits(ttl=1e9))
    metrics, clock = Metrics(), SystemClock()
    reporter = Reporter(node=node.pubkey, metrics=metrics, events=store.events)
    journal = JournalWriter(store.journal, clock, reporter, metrics)
    queue = DecisionQueue()
    heard = Heard()
    peers_known, ready, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    peers_known.set()
    async with LndClient(node.endpoint, backoff=Backoff(0.05, 0.2), settle=0.1) as lnd:
        reader = MessageReader(
            lnd=lnd,
            transport=Transport.CUSTOM,
            journal=journal,
            queue=queue,
            reporter=reporter,
            hearing=heard,
            metrics=metrics,
            clock=clock,
            left_over=[],
            peers_known=peers_known,
            ready=ready,
            max_in_flight_bytes=10_000_000,
            on_lsps=on_lsps,
        )
        running = asyncio.create_task(reader.run(stop))
        async with asyncio.timeout(5):
            await ready.wait()
            await node.wait_for_subscribers("custom_messages")
            await send()
            got = [await queue.get() for _ in range(arrivals)]
        stop.set()
        await asyncio.wait_for(running, 5)
    return got, heard, reporter, journal


@pytest.mark.parametrize("with_handler", [True, False], ids=["on_lsps", "lsps5-off"])
async def test_lsps_messages_go_to_on_lsps_only(
    redis_client: aioredis.Redis, with_handler: bool
) -> None:
    async with SimNode(Personality.LND_0_20) as node:
        alice = node.add_peer("alice", connect=True)
        bob = node.add_peer("bob", connect=True)
        _, first = message_via([node.pubkey], {TEXT: b"one"})
        _, second = message_via([node.pubkey], {TEXT: b"two"})
        handed: list[IncomingLspsMessage] = []

        async def send() -> None:
            await alice.send_onion_message(first)
            await bob.lsps_request(LIST)
            await alice.send_onion_message(second)

        got, heard, _, journal = await read_until(
            redis_client, node, handed.append if with_handler else None, send, arrivals=2
        )
    assert [a.message for a in got] == [
        IncomingOnionMessage(alice.pubkey, first.path_key, first.onion),
        IncomingOnionMessage(alice.pubkey, second.path_key, second.onion),
    ]
    assert handed == ([IncomingLspsMessage(bob.pubkey, LIST)] if with_handler else [])
    # bob's request proves he was there, as an onion message would.
    assert heard.peers == [alice.pubkey, bob.pubkey, alice.pubkey]
    # Only the two onion messages are in flight: the request was never journaled.
    assert journal.bytes == sum(len(m.path_key) + len(m.onion) for m in (first, second))
