"""How long moving a large mailbox from the old key layout takes, and what a leader's start
pays when there is nothing to move.

``python -m bench.migrate [MESSAGES] [PEERS]`` (default 100000 over 10000): a Redis server
of its own; the release with the old key layout (commit 77ed6b6, taken from git into a
temporary directory) fills it through its own ``Store`` (standard 1366-byte onions, the
first message of every tenth peer handed to lnd, so unconfirmed), then this release moves
it (:meth:`LayoutMigration.run`) and runs once more, with nothing left to move. Prints
the fill's size, the move's time, its round trips and Redis commands (INFO commandstats),
the longest single call Redis ran (SLOWLOG, which is what would hold up other clients),
the second run's time, and then the time to move the mailbox to a second Redis server
(``mailboxctl migrate --to``: copy, check, remove). Not part of ``make bench``: each move
happens once.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OLD_RELEASE = "77ed6b6"
ROOT = Path(__file__).resolve().parent.parent
NODE = bytes.fromhex("02" + "11" * 32)


async def fill(url: str, messages: int, peers: int, seed: int) -> None:
    """Run under the old release's ``lndmailbox`` (PYTHONPATH): its own Store writes."""
    from lndmailbox.store import Limits, NewMessage, Store

    rng = random.Random(seed)
    keys = [b"\x02" + rng.randbytes(32) for _ in range(peers)]
    now = time.time()
    store = Store.from_url(url, NODE, Limits(ttl=86400, max_bytes_total=2**40))
    try:
        batch: list[NewMessage] = []
        for i in range(messages):
            peer = keys[i % peers]
            batch.append(
                NewMessage(peer, keys[0], b"\x02" + rng.randbytes(32), rng.randbytes(1366), now)
            )
            if len(batch) == 64:
                await store.queues.put_many(batch)
                batch = []
        if batch:
            await store.queues.put_many(batch)
        for peer in keys[::10]:
            ready, _ = await store.queues.peek(peer, now, limit=1)
            await store.queues.move_delivered(ready, int(now * 1000))
    finally:
        await store.aclose()


async def measure(url: str, other: str) -> None:
    import redis.asyncio as aioredis

    from lndmailbox.store import Store, move_mailbox

    admin = aioredis.Redis.from_url(url)
    # only calls of 1 ms or more are logged (and then read back): the ones that matter
    await admin.config_set("slowlog-log-slower-than", 1000)
    await admin.config_set("slowlog-max-len", 100_000)
    await admin.slowlog_reset()
    await admin.config_resetstat()
    async with Store.from_url(url, NODE) as store:
        started = time.perf_counter()
        moved = await store.layout.run()
        took = time.perf_counter() - started
        stats = await admin.info("commandstats")
        calls = sum(int(v["calls"]) for v in stats.values())
        scripts = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
        logged = await admin.slowlog_get(100_000)
        worst = max(logged, key=lambda e: int(e["duration"]), default=None)
        slowest = int(worst["duration"]) if worst else 0
        what = _named(worst["command"]) if worst else ""
        print(f"moved in {took:.2f} s: {moved.describe()}")
        longest = f", the longest {slowest} us ({what})" if worst else ""
        print(
            f"  Redis commands run (the scripts' own counted): {calls}, {scripts} of them "
            f"scripts; {len(logged)} calls took 1 ms or more{longest}"
        )
        await admin.config_resetstat()
        started = time.perf_counter()
        again = await store.layout.run()
        took = time.perf_counter() - started
        stats = await admin.info("commandstats")
        calls = sum(int(v["calls"]) for v in stats.values())
        print(f"second run in {took * 1000:.1f} ms, {calls} Redis commands: {again.describe()}")
        async with Store.from_url(other, NODE) as destination:
            started = time.perf_counter()
            copied = await move_mailbox(store, destination)
            took = time.perf_counter() - started
        print(
            f"moved to another Redis (mailboxctl migrate --to) in {took:.2f} s: {copied.keys} "
            f"keys, {copied.payload_bytes} bytes dumped, checked, removed from the first"
        )
    await admin.aclose()


def _named(command: bytes) -> str:
    """A slow log entry's command, a script named by its file."""
    import hashlib

    from lndmailbox.store import lua

    words = command.split()
    shas = {hashlib.sha1(lua.program(n).encode()).hexdigest(): n for n in lua.SCRIPTS}
    if words[0].upper() == b"EVALSHA":
        return f"script {shas.get(words[1].decode(), '?')}"
    return words[0].decode()


def main() -> None:
    from lndmailbox.store import RedisServer

    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    peers = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    seed = random.randrange(2**32)
    print(f"seed {seed}; {messages} messages over {peers} peers")
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", OLD_RELEASE, "lndmailbox"],
            capture_output=True,
            check=True,
        )
        (Path(tmp) / "old").mkdir()
        subprocess.run(["tar", "-x", "-C", f"{tmp}/old"], input=archive.stdout, check=True)
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        other = RedisServer(Path(tmp) / "other")
        other.start()
        try:
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.migrate",
                    "--fill",
                    server.url,
                    str(messages),
                    str(peers),
                    str(seed),
                ],
                env={**os.environ, "PYTHONPATH": f"{Path(tmp) / 'old'}:{ROOT}"},
                check=True,
                cwd=tmp,
            )
            print(f"filled by the old release in {time.perf_counter() - started:.1f} s")
            asyncio.run(measure(server.url, other.url))
        finally:
            server.stop()
            other.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fill"]:
        url, messages, peers, seed = sys.argv[2], *map(int, sys.argv[3:6])
        asyncio.run(fill(url, messages, peers, seed))
    else:
        main()
