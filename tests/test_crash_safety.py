"""The daemon killed outright (SIGKILL) at random moments, 50 times, over a stream of messages.

What must hold afterwards:

- Every message lnd handed the daemon reaches bob (peeled with bob's key to its payload),
  except one the daemon was killed while holding in memory: lnd's streams carry no
  acknowledgement, so a message read from the stream and not yet written to Redis dies
  with the process. The test shows each such message was handed over just before a kill,
  and counts those and the duplicates.
- The mailbox ends empty and its indexes agree with its queues (``lndmailbox.store.audit``).
- Every message stored and every one delivered has its event in the stream, and the
  counters agree with the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from simnet import Personality, SimNode

from lndmailbox.onion import BlindedHopSpec, Receive, message_via
from lndmailbox.onion.tlv import scid
from lndmailbox.store import Store, free_port
from lndmailbox.store.audit import audit
from tests.daemon_harness import PAYLOAD_TYPE, wait_until
from tests.daemon_process import ROOM_FOR_EVERYTHING, daemon_argv, leading

KILLS = 50
# A message handed to a daemon this long before it was killed may die with it.
IN_MEMORY_WINDOW = 0.5


@dataclass
class Ledger:
    handed_over: dict[bytes, float] = field(default_factory=dict)
    kills: list[float] = field(default_factory=list)


def daemon_command(
    node: SimNode, cert: Path, macaroon: Path, redis_url: str, port: int
) -> list[str]:
    return daemon_argv(
        node.target,
        cert,
        macaroon,
        redis_url,
        "--allow-channel-peers",
        *ROOM_FOR_EVERYTHING,
        "--sweep-interval",
        "1",
        "--log-level",
        "error",
        "--metrics-addr",
        f"127.0.0.1:{port}",
    )


@pytest.mark.parametrize(
    "personality", [Personality.LND_0_20, Personality.LND_0_21], ids=["lnd0.20", "lnd0.21"]
)
async def test_sigkill_loses_nothing_stored(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("CRASH_SEED") or int.from_bytes(os.urandom(4), "big"))
    print(f"crash test seed {seed} (replay with CRASH_SEED={seed})")
    rng = random.Random(seed)
    node = SimNode(personality, onion_rate_limits=None)
    await node.start()
    alice = node.add_peer("alice")
    bob = node.add_peer("bob")
    node.open_channel(alice, scid(800_000, 1, 0))
    node.open_channel(bob, scid(800_000, 2, 0))
    alice.connect()
    cert, macaroon = node.write_credentials(tmp_path / "lnd")
    port = free_port()
    command = daemon_command(node, cert, macaroon, redis_url, port)
    stream = "onion_messages" if personality is Personality.LND_0_21 else "custom_messages"
    ledger = Ledger()
    counter = 0

    async def send_burst(size: int) -> None:
        nonlocal counter
        for _ in range(size):
            text = f"message {counter}".encode()
            counter += 1
            _, message = message_via(
                [BlindedHopSpec(node.pubkey, next_node_id=bob.pubkey), bob.pubkey],
                {PAYLOAD_TYPE: text},
            )
            fate = await alice.send_onion_message(message)
            if fate.published or fate.forwarded_to is not None:
                ledger.handed_over[text] = time.monotonic()
            await asyncio.sleep(rng.uniform(0, 0.03))

    async def subscribed() -> bool:
        # Leading and ready: its own reader on lnd's stream (its standby's, which a lone
        # daemon opens first, is ended then), so a burst meets a daemon that decides.
        return await leading(port)

    try:
        for _ in range(KILLS):
            daemon = await asyncio.create_subprocess_exec(*command, stdin=subprocess.DEVNULL)
            try:
                await wait_until(subscribed, within=30, what="the daemon to subscribe")
                if rng.random() < 0.4:
                    bob.connect()  # a drain runs while the kill comes
                sender = asyncio.create_task(send_burst(rng.randint(1, 12)))
                await asyncio.sleep(rng.uniform(0, 0.3))
                daemon.send_signal(signal.SIGKILL)
                ledger.kills.append(time.monotonic())
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
            finally:
                if daemon.returncode is None:
                    daemon.kill()
                await daemon.wait()
            if bob.online and rng.random() < 0.7:
                bob.disconnect()
            await wait_until(
                lambda: node.subscriber_count(stream) == 0, what="the dead daemon's streams"
            )

        # A last daemon, left running, with bob online: everything kept must arrive.
        bob.disconnect()
        daemon = await asyncio.create_subprocess_exec(*command, stdin=subprocess.DEVNULL)
        try:
            await wait_until(subscribed, within=30, what="the last daemon to subscribe")
            bob.connect()
            async with Store.from_url(redis_url, node.pubkey) as store:

                async def drained() -> bool:
                    return await store.queues.messages(bob.pubkey) == []

                await wait_until(drained, within=30, what="the mailbox to empty")
                assert await audit(store) == []
                received = []
                for message in bob.received:
                    peeled = await bob.peel(message)
                    assert isinstance(peeled, Receive)
                    received.append(peeled.payload[PAYLOAD_TYPE])
                counters = await store.events.counters()
                events = await store.events.read(count=100_000)
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(daemon.wait(), 30) == 0
    finally:
        await node.stop()

    assert counters.get("stored", 0) > 0, "the scenario stored nothing: it tests nothing"
    assert counters.get("lost", 0) == 0
    # Written with the data, the stored and delivered events survive every kill.
    stored_ids = [e.message_id for e in events if e.kind == "stored"]
    delivered_ids = [e.message_id for e in events if e.kind == "delivered"]
    assert len(stored_ids) == counters["stored"]
    assert len(delivered_ids) == counters.get("delivered", 0)
    assert set(delivered_ids) <= set(stored_ids)

    missing = set(ledger.handed_over) - set(received)
    in_memory = 0
    widest = 0.0
    for text in missing:
        handed = ledger.handed_over[text]
        # Handed over just before a kill (in the daemon's memory), or just after one (to a
        # stream whose reader was already dead, which lnd cannot tell either).
        nearest_kill = min(ledger.kills, key=lambda k: abs(k - handed))
        assert abs(nearest_kill - handed) <= IN_MEMORY_WINDOW, (
            f"{text!r} was lost though no kill came near it"
        )
        in_memory += handed <= nearest_kill
        widest = max(widest, nearest_kill - handed)
    duplicates = len(bob.received) - len(set(received))
    print(
        f"\n{personality.release}: {len(ledger.kills)} kills, {len(ledger.handed_over)} messages "
        f"handed to the daemon, {len(set(received))} delivered, {duplicates} duplicates, "
        f"{in_memory} lost in a killed daemon's memory, "
        f"{len(missing) - in_memory} handed to an already killed one; "
        f"the earliest of them was handed over {widest * 1000:.0f} ms before its kill"
    )
