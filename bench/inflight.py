"""Peak RSS of the daemon and of Redis under a burst of large garbage onion messages.

``python -m bench.inflight [COUNT] [ONION_BYTES]`` (default 3000 x 65000): simnet as lnd
0.20 (which hands type-513 messages over unpeeled) in this process, a Redis server and the
daemon as processes of their own. alice sends COUNT messages of ONION_BYTES of random
bytes with fresh keys (a valid path key and ephemeral key each, so the daemon makes two
ECDH round trips to find the HMAC wrong, nothing cached) as fast as simnet takes them;
the figure is each process's peak RSS (``VmHWM``) once the daemon's metrics show every
message dropped, against its RSS just before the burst. ``LNDMAILBOX_*`` settings in the
environment reach the daemon (``LNDMAILBOX_MAX_IN_FLIGHT_BYTES=4MiB``, say).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import coincurve
from redis import Redis
from simnet import Personality, SimNode

from lndmailbox.onion.tlv import scid
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.store import RedisServer, free_port


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _point() -> bytes:
    return coincurve.PrivateKey(os.urandom(32)).public_key.format(compressed=True)


def _garbage(onion_bytes: int) -> OnionMessage:
    return OnionMessage(_point(), b"\x00" + _point() + os.urandom(onion_bytes - 1 - 33))


def _dropped(port: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("lndmailbox_dropped_total{"):
            name, value = line.rsplit(" ", 1)
            if float(value):
                found[name.split('"')[1]] = float(value)
    return found


async def measure(count: int, onion_bytes: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="lndmailbox-inflight-"))
    redis = RedisServer(tmp / "redis")
    redis.start()
    with Redis.from_url(redis.url) as client:
        redis_pid = int(client.info("server")["process_id"])
    node = SimNode(Personality.LND_0_20, onion_rate_limits=None)
    await node.start()
    alice = node.add_peer("alice")
    node.open_channel(alice, scid(800_000, 1, 0))
    alice.connect()
    cert, macaroon = node.write_credentials(tmp / "lnd")
    port = free_port()
    command = [
        sys.executable, "-m", "lndmailbox", "--rpcserver", node.target,
        "--tlscertpath", str(cert), "--macaroonpath", str(macaroon), "--network", "regtest",
        "--redis-url", redis.url, "--metrics-addr", f"127.0.0.1:{port}",
        "--log-level", "warning",
    ]  # fmt: skip
    with (tmp / "daemon.log").open("wb") as log:
        daemon = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        await node.wait_for_subscribers("custom_messages")
        await asyncio.sleep(1.0)  # settled
        burst = [_garbage(onion_bytes) for _ in range(count)]
        daemon_before, redis_before = _kib(daemon.pid, "VmRSS"), _kib(redis_pid, "VmRSS")
        started = time.monotonic()
        for message in burst:
            await alice.send_onion_message(message)
        while True:
            if sum(_dropped(port).values()) >= count:
                break
            await asyncio.sleep(0.1)
        took = time.monotonic() - started
        daemon_peak, redis_peak = _kib(daemon.pid, "VmHWM"), _kib(redis_pid, "VmHWM")
        print(f"{count} x {onion_bytes}-byte garbage onions, all dropped in {took:.1f}s")
        for name, before, peak in (
            ("daemon", daemon_before, daemon_peak),
            ("redis", redis_before, redis_peak),
        ):
            print(
                f"{name:7}RSS before {before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB "
                f"(+{(peak - before) / 1024:.1f} MiB)"
            )
        print("dropped:", _dropped(port))
    finally:
        daemon.send_signal(signal.SIGTERM)
        await daemon.wait()
        await node.stop()
        redis.stop()


if __name__ == "__main__":
    asyncio.run(
        measure(
            int(sys.argv[1]) if len(sys.argv) > 1 else 3000,
            int(sys.argv[2]) if len(sys.argv) > 2 else 65_000,
        )
    )
