"""How long a failover keeps the store's calls failing, on the tests' local Cluster (3
primaries, 3 replicas, ``cluster-node-timeout 1000``) and Sentinel group (a primary, a
replica, 3 sentinels, ``down-after-milliseconds 1000``): the seconds from SIGKILL of the
primary that holds the node's keys to the first put that succeeds again through the same
client, and how many calls failed (as StoreUnavailableError) meanwhile.

Not part of ``make bench`` (it times Redis, not the mailbox):
``.venv/bin/python -m bench.failover [runs]``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from lndmailbox.errors import StoreUnavailableError
from lndmailbox.store import Store
from tests.redis_topologies import LocalCluster, SentinelGroup, running
from tests.store_helpers import put_one

NODE = bytes.fromhex("02" + "55" * 32)
NOW = 1_700_000_000.0


def _pubkey() -> bytes:
    return b"\x02" + os.urandom(32)


async def _put(store: Store) -> None:
    await put_one(store, _pubkey(), _pubkey(), _pubkey(), os.urandom(300), NOW)


async def one_failover(deployment: LocalCluster | SentinelGroup) -> tuple[float, int]:
    """(seconds until a put succeeds again, calls that failed) for one killed primary;
    the dead primary is back as a replica when it returns."""
    async with Store.from_url(deployment.url, NODE) as store:
        key = store.keys.counters_key
        await _put(store)
        if isinstance(deployment, LocalCluster):
            old = deployment.kill_primary(key)
        else:
            old = deployment.kill_primary()
        killed, failed = time.monotonic(), 0
        while True:
            try:
                await _put(store)
                break
            except StoreUnavailableError:
                failed += 1
                await asyncio.sleep(0.05)
        took = time.monotonic() - killed
        await asyncio.to_thread(deployment.restore, old)
        return took, failed


def main(runs: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        for deployment in (
            LocalCluster(Path(directory) / "cluster"),
            SentinelGroup(Path(directory) / "sentinel"),
        ):
            kind = type(deployment).__name__
            with running(deployment):
                for _ in range(runs):
                    took, failed = asyncio.run(one_failover(deployment))
                    print(f"{kind}: a put succeeds {took:.2f} s after the kill; {failed} failed")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
