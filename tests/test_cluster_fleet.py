"""Ten lnd nodes, each with its own daemon, on one Redis Cluster; a primary killed (SIGKILL)
under load, and every message counted.

Each node is a simnet lnd (0.20 and 0.21 alternate) with alice (online, the sender) and
bob (offline until the end): every message alice sends is kept in the Cluster for bob.
The nodes' keys are seeded at random (``FLEET_SEED`` replays them) and must spread over
at least 2 of the 3 shards. While every alice sends, the primary of the first node's
slot is killed outright; its replica takes over; sending goes on through the failover.
Then every bob comes online, and each message sent is, for the node that got it, either
delivered to bob once (bob peels it with his own key and finds the payload) or lost; the
losses are told apart: counted by their daemon (``lost``), or not. With the replica wait
on (``--redis-wait-replicas auto``, the default) there must be none of either; with it
off, a write the killed primary acknowledged and had not passed on is gone unseen, so the
count is printed, whatever it is, as a measured figure (what the daemons counted must
still be among the losses).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from simnet import Personality

from lndmailbox.store import free_port
from tests.daemon_harness import World, ci_and_long, wait_until, world
from tests.redis_topologies import LocalCluster
from tests.traffic import seeded

FLEET = 10
SEND_FOR = 4.0
"""Seconds each alice sends over (CI form): the kill comes after a quarter of it, and the
failover (about 2 s with the test Cluster's 1 s node timeout) falls inside."""
LONG_SEND_FOR = 20.0
SHORT_WAIT = "lndmailbox_replica_wait_short_total"


def counters_key(w: World) -> str:
    """A key of the node's: every one of them is in this slot (the node is the hash tag)."""
    return f"lndmailbox:{{{w.node.pubkey.hex()}}}:counters"


@dataclass
class Sender:
    """One node's alice, sending ``count`` messages to bob over ``seconds``."""

    w: World
    count: int
    seconds: float
    sent: list[bytes] = field(default_factory=list)

    async def run(self) -> None:
        start = time.monotonic()
        for i in range(self.count):
            text = b"node %s message %d" % (self.w.node.pubkey.hex()[:8].encode(), i)
            result = await self.w.alice.send_onion_message(self.w.message_for_bob(text))
            assert result.published, f"lnd dropped {text!r}: {result.drop_reason}"
            self.sent.append(text)
            due = start + (i + 1) * self.seconds / self.count
            await asyncio.sleep(max(0.0, due - time.monotonic()))


def fail_over(cluster: LocalCluster, key: str) -> float:
    """SIGKILLs the primary of ``key``'s slot and waits for its replica to take over;
    returns the seconds that took. The dead node comes back as a replica, in sync, before
    this returns, whatever happened (the session's Cluster is left as it was found)."""
    old = cluster.kill_primary(key)
    killed = time.monotonic()
    try:
        cluster.wait_for_failover(key, old)
        return time.monotonic() - killed
    finally:
        cluster.restore(old)


def scrape(port: int) -> dict[str, float]:
    """The daemon's counters that matter here: lost (all reasons) and short waits."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {"lost": 0.0, "short": 0.0}
    for line in text.splitlines():
        if m := re.match(r"lndmailbox_lost_total\{[^}]*\} (\S+)", line):
            out["lost"] += float(m.group(1))
        elif m := re.match(rf"{SHORT_WAIT} (\S+)", line):
            out["short"] += float(m.group(1))
    return out


async def settled(w: World) -> bool:
    """Nothing journaled, queued or waiting for confirmation: each message has its end."""
    return not await w.store.journal.pending() and not await w.held_for(w.bob)


@pytest.mark.parametrize("wait", ["auto", "off"])
@ci_and_long(15, 200, timeout=240, long_timeout=1200)  # CI: about 16 s each here
async def test_ten_nodes_through_a_primary_killed_under_load_every_message_counted(
    redis_cluster: LocalCluster, cluster_url: str, tmp_path: Path, wait: str, size: float
) -> None:
    rng = seeded("FLEET_SEED", "fleet node keys")
    count = int(size)
    seconds = SEND_FOR if count <= 50 else LONG_SEND_FOR
    ports = [free_port() for _ in range(FLEET)]
    async with contextlib.AsyncExitStack() as stack:
        fleet: list[World] = []
        for i in range(FLEET):
            personality = Personality.LND_0_20 if i % 2 == 0 else Personality.LND_0_21
            w = await stack.enter_async_context(
                world(
                    personality,
                    cluster_url,
                    tmp_path / f"node{i}",
                    node_secret=rng.randbytes(32),
                    confirm_after=0.2,
                    # bob keeps every message: none gives way to a newer one
                    max_messages_per_peer=max(64, count),
                    max_bytes_per_peer=max(256 * 1024, count * 2048),
                    redis_wait_replicas=None if wait == "auto" else 0,
                    metrics_addr=f"127.0.0.1:{ports[i]}",
                )
            )
            fleet.append(w)
        shard_of = [redis_cluster.primary_for(counters_key(w)).port for w in fleet]
        for i, (w, port) in enumerate(zip(fleet, shard_of, strict=True)):
            print(
                f"node{i} {w.node.pubkey.hex()[:16]} lnd {w.node.personality.release}: shard {port}"
            )
        assert len(set(shard_of)) >= 2, f"every node's keys on one shard: {shard_of}"
        await asyncio.gather(*(w.start_daemon() for w in fleet))

        killed = shard_of[0]
        on_killed = [i for i, port in enumerate(shard_of) if port == killed]
        senders = [Sender(w, count, seconds) for w in fleet]
        sending = asyncio.gather(*(s.run() for s in senders))
        await asyncio.sleep(seconds / 4)
        took = await asyncio.to_thread(fail_over, redis_cluster, counters_key(fleet[0]))
        await sending

        for w in fleet:
            w.bob.connect()
        for w in fleet:
            await wait_until(lambda w=w: settled(w), within=60, what="every mailbox to settle")
        metrics = [await asyncio.to_thread(scrape, port) for port in ports]
        evicted = [(await w.store.events.counters()).get("evicted", 0) for w in fleet]
        assert evicted == [0] * FLEET, "a message gave way to a newer one: not the test's"
        received: list[Counter[bytes]] = []
        for w in fleet:
            received.append(Counter(await w.payloads_received(w.bob)))

    for i, (sender, got) in enumerate(zip(senders, received, strict=True)):
        twice = {text: n for text, n in got.items() if n > 1}
        assert not twice, f"node{i}: delivered more than once: {twice}"
        assert set(got) <= set(sender.sent), f"node{i}: bob got what alice never sent"
    sent = [len(s.sent) for s in senders]
    delivered = [len(got) for got in received]
    lost = [n - d for n, d in zip(sent, delivered, strict=True)]
    counted = [int(m["lost"]) for m in metrics]
    short = [int(m["short"]) for m in metrics]
    for i in range(FLEET):
        print(
            f"node{i}{' (killed shard)' if i in on_killed else ''}: sent {sent[i]}, "
            f"delivered {delivered[i]}, lost {lost[i]}, counted lost {counted[i]}, "
            f"short waits {short[i]}"
        )
    print(
        f"wait {wait}: {FLEET} nodes, shard {killed} killed (nodes {on_killed} on it), "
        f"promoted after {took:.1f} s; {sum(sent)} sent, {sum(delivered)} delivered, "
        f"{sum(lost)} lost ({sum(counted)} counted by the daemons, "
        f"{sum(lost) - sum(counted)} unseen), {sum(short)} short waits"
    )
    if wait == "auto":
        assert lost == counted == [0] * FLEET
    else:
        # Off, a write the killed primary acknowledged and had not yet passed on is gone
        # with it, and no daemon can know: such losses are printed above, not failed on.
        assert all(c <= n for c, n in zip(counted, lost, strict=True)), "counted, delivered"
