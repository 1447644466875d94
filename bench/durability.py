"""What waiting for a replica costs: store and deliver per message, wait off vs on.

A primary and one replica (two valkey-server processes, both ``appendonly yes``,
``appendfsync everysec``, as the embedded server runs) on this machine. Each message
takes the path of one that arrives alone (its own batch, the dearest case), through the
store's calls: journaled, stored, its journal entry decided, read for delivery, moved to
unconfirmed and confirmed. Five of those six calls are writes that matter and wait
(journal twice, put, delivered, confirm). The same in batches of 64 to one peer (what
load brings: the writers take what arrived while the last write was on its way), eight
waits a batch. WAITAOF is measured with both servers syncing
every second (``everysec``, what the embedded server runs) and on every write
(``always``), each against wait off on the same policy. The modes run in turns, several rounds, so that the machine's noise
falls on each alike; the figure is the median round.

``python -m bench.durability [--messages N] [--rounds R]``; ``python -m bench`` runs it
too (one row per mode).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from lndmailbox.store import NewEntry, NewMessage, RedisServer, ReplicaWait, Store

NODE = bytes.fromhex("02" + "66" * 32)
SENDER = bytes.fromhex("03" + "77" * 32)
PATH_KEY = bytes.fromhex("02" + "88" * 32)
PACKET = 1366
DRAIN_GROUP = 16
"""What a drain moves to unconfirmed in one call (daemon/deliverer.py)."""


@dataclass(frozen=True)
class Mode:
    name: str
    wait: ReplicaWait
    fsync: str
    """``appendfsync`` of both servers while the mode runs."""
    messages: int | None = None
    """Messages a round (None: the bench's number)."""
    once: bool = False
    """Measured in the first round only (a slow mode)."""
    batch: int = 1
    """Messages a batch (to one peer): 1, each alone, the dearest case; 64, under load."""


MODES = (
    # Each mode is measured against the "off" mode before it.
    Mode("off", ReplicaWait(replicas=0), "everysec"),
    Mode("WAIT 1 (auto)", ReplicaWait(replicas=None, timeout=1.0), "everysec"),
    # A WAITAOF waits about a second for the replica's sync to be acknowledged (on either
    # policy): a few messages, once, tell its cost.
    Mode("WAITAOF 1 1", ReplicaWait(replicas=None, timeout=5.0, aof=True), "everysec", 2, True),
    Mode("off, batches of 64", ReplicaWait(replicas=0), "everysec", 2048, batch=64),
    Mode(
        "WAIT, batches of 64", ReplicaWait(replicas=None, timeout=1.0), "everysec", 2048, batch=64
    ),
    Mode("off, fsync always", ReplicaWait(replicas=0), "always"),
    Mode("WAITAOF, always", ReplicaWait(replicas=None, timeout=5.0, aof=True), "always", 2, True),
)


@dataclass(frozen=True)
class Figure:
    mode: str
    messages: int
    per_message: float
    """Seconds per message, the median round."""
    rounds: tuple[float, ...]


async def _batch(store: Store, first: int, size: int, now: float) -> None:
    """Messages ``first`` .. ``first + size - 1``, all to one peer, through the calls the
    daemon makes for a batch: journaled, stored, decided, read, moved to unconfirmed 16 at
    a time (as a drain does), confirmed."""
    peer = bytes.fromhex("02" + (first % 1000).to_bytes(32, "big").hex())
    numbers = range(first, first + size)
    onions = [n.to_bytes(8, "big") * (PACKET // 8) + bytes(PACKET % 8) for n in numbers]
    entries = [f"{n:032x}" for n in numbers]
    await store.journal.write(
        [NewEntry(e, SENDER, PATH_KEY, o, now) for e, o in zip(entries, onions, strict=True)]
    )
    results = await store.queues.put_many(
        [NewMessage(peer, SENDER, PATH_KEY, o, now) for o in onions]
    )
    await store.journal.write(decided=entries)
    ready, _ = await store.queues.peek(peer, now, limit=size)
    sent_ms = int(now * 1000)
    for i in range(0, len(ready), DRAIN_GROUP):
        await store.queues.move_delivered(ready[i : i + DRAIN_GROUP], sent_ms)
    confirmed = await store.queues.confirm(peer, [(r.message_id, sent_ms) for r in results])
    if len(confirmed) != size:
        raise RuntimeError(f"{len(confirmed)} of messages {first}.. were confirmed: {results}")


async def _round(
    client: aioredis.Redis, wait: ReplicaWait, first: int, messages: int, batch: int
) -> float:
    store = Store(client, NODE, wait=wait)
    now = time.time()
    await _batch(store, first - batch, batch, now)  # scripts loaded, auto has looked
    start = time.perf_counter()
    for n in range(first, first + messages, batch):
        await _batch(store, n, batch, now)
    seconds = time.perf_counter() - start
    if store.durable.short:
        raise RuntimeError(f"{store.durable.short} waits came back short")
    return seconds / messages


async def _follow(primary: aioredis.Redis, replica: aioredis.Redis, port: int) -> None:
    """Makes ``replica`` a replica of the primary on ``port``; returns once it follows."""
    # Not the default 5 s a primary waits for more replicas before a full sync.
    await primary.config_set("repl-diskless-sync-delay", 0)
    await replica.replicaof("127.0.0.1", port)
    for _ in range(500):
        if int((await primary.info("replication"))["connected_slaves"]) >= 1:
            return
        await asyncio.sleep(0.02)
    raise RuntimeError("the replica did not follow the primary within 10 s")


async def measure(
    *,
    messages: int = 500,
    rounds: int = 5,
    modes: Sequence[Mode] = MODES,
    say: Callable[[str], None] = print,
) -> list[Figure]:
    with (
        tempfile.TemporaryDirectory(prefix="lndmailbox-bench-durability-") as tmp,
        RedisServer(Path(tmp) / "primary", persist=True) as primary,
        RedisServer(Path(tmp) / "replica", persist=True) as replica,
    ):
        client = aioredis.Redis.from_url(primary.url)
        replica_client = aioredis.Redis.from_url(replica.url)
        try:
            await _follow(client, replica_client, primary.port)
            times: dict[str, list[float]] = {mode.name: [] for mode in modes}
            counts = {
                mode.name: -(-(mode.messages or messages) // mode.batch) * mode.batch
                for mode in modes
            }
            first = 64
            for r in range(rounds):
                for mode in modes:
                    if mode.once and r:
                        continue
                    for c in (client, replica_client):
                        await c.config_set("appendfsync", mode.fsync)
                    count = counts[mode.name]
                    times[mode.name].append(
                        await _round(client, mode.wait, first, count, mode.batch)
                    )
                    first += count + mode.batch
                await client.flushall()
                say(f"round {r + 1}/{rounds} done")
        finally:
            await client.aclose()
            await replica_client.aclose()
    return [Figure(mode, counts[mode], statistics.median(t), tuple(t)) for mode, t in times.items()]


def lines(figures: Sequence[Figure]) -> list[str]:
    """The figures as text, each against wait off on the same fsync policy, same run."""
    out = []
    base = figures[0].per_message
    for f in figures:
        if f.mode.startswith("off"):
            base = f.per_message
        rounds = ", ".join(f"{t * 1e6:.0f}" for t in f.rounds)
        out.append(
            f"{f.mode:<14} {f.per_message * 1e6:8.0f} us/msg  {f.per_message / base:5.2f}x "
            f"of off  (rounds of {f.messages}: {rounds} us)"
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.durability", description=__doc__)
    parser.add_argument("--messages", type=int, default=500, help="messages per mode and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (each runs every mode)")
    args = parser.parse_args(argv)
    figures = asyncio.run(measure(messages=args.messages, rounds=args.rounds))
    print("store + deliver, one message at a time, primary + 1 replica (AOF everysec):")
    print("\n".join(lines(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
