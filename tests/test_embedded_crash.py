"""A daemon on its embedded Redis (no --redis-url) killed outright, and the next daemon taking
the server over.

The embedded server runs in a session of its own, so it outlives a daemon killed with
SIGKILL; the next daemon on the same --datadir finds the directory lock free (the kernel
dropped it with the dead process), finds the server answering on its socket and adopts it
rather than starting a second one, and delivers what the dead daemon stored. When a
supervisor kills the whole group instead (systemd's ``KillMode=control-group``), the
server dies too: the next daemon starts a new one from the append-only file, which holds
every write Redis acknowledged (Redis writes the file before it replies).

Traffic runs throughout (tests/traffic.py): what must hold is what the crash test asserts
for one kill. Every message Redis held at the kill, and a few stored on purpose for a
peer who stays away until the end, reach their recipients, peeled with their own keys;
the next daemon stops the server it adopted when it stops itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from simnet import Personality

from lndmailbox.store import RedisServer, Store, embedded_socket_path, free_port
from lndmailbox.store.audit import audit
from tests.daemon_harness import GENERATIONS, wait_until
from tests.daemon_process import ROOM_FOR_EVERYTHING, daemon_argv, leading
from tests.traffic import (
    IN_MEMORY_BOUND,
    Books,
    Life,
    Network,
    Traffic,
    held_in_redis,
    journaled_texts,
    judge,
    received_texts,
    seeded,
    undelivered,
)

FOR_ZED = 5
"""Messages stored for zed (offline until the end) before the kill, so there is mail."""


async def server_pid(store: Store) -> int:
    info = await store.redis.info("server")
    return int(info["process_id"])


def server_answers(datadir: Path) -> bool:
    """Whether a server answers PING on the embedded socket of ``datadir``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(embedded_socket_path(datadir)))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@GENERATIONS
@pytest.mark.parametrize("group", [False, True], ids=["daemon killed", "daemon and server killed"])
async def test_sigkill_on_embedded_redis_then_takeover(
    personality: Personality, group: bool, tmp_path: Path
) -> None:
    rng = seeded("EMBEDDED_SEED", "embedded crash test")
    net = await Network.start(personality)
    cert, macaroon = net.node.write_credentials(tmp_path / "lnd")
    datadir = tmp_path / "mailbox"
    port = free_port()
    command = daemon_argv(
        net.node.target,
        cert,
        macaroon,
        None,
        "--datadir",
        str(datadir),
        "--allow-channel-peers",
        *ROOM_FOR_EVERYTHING,
        "--log-level",
        "error",
        "--metrics-addr",
        f"127.0.0.1:{port}",
    )
    store = Store.from_url(f"unix://{embedded_socket_path(datadir)}?db=0", net.node.pubkey)
    traffic = Traffic(net, rng)
    lives: list[Life] = []
    daemon = await asyncio.create_subprocess_exec(*command, stdin=subprocess.DEVNULL)
    try:
        started = time.monotonic()
        await wait_until(lambda: leading(port), within=30, what="the first daemon to lead")
        ready = time.monotonic()
        traffic.start()
        for n in range(FOR_ZED):
            await net.send(net.zed, b"zed before the kill %d" % n)

        async def zeds_stored() -> bool:
            return len(await store.queues.messages(net.zed.pubkey)) == FOR_ZED

        await wait_until(zeds_stored, what="zed's mail to be stored")
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        first_server = await server_pid(store)
        daemon.send_signal(signal.SIGKILL)
        lives.append(Life(started, time.monotonic(), ready))
        await daemon.wait()
        await wait_until(net.unsubscribed, what="the node to drop the dead daemon's stream")
        assert server_answers(datadir), "the embedded server died with its daemon"
        assert await audit(store) == []
        held_at_kill = await held_in_redis(store, net.recipients)
        journaled = await journaled_texts(store, net)
        if group:
            os.kill(first_server, signal.SIGKILL)  # the rest of the group, as systemd would
            await wait_until(lambda: not server_answers(datadir), what="the server to die")

        started = time.monotonic()
        daemon = await asyncio.create_subprocess_exec(*command, stdin=subprocess.DEVNULL)
        await wait_until(lambda: leading(port), within=30, what="the next daemon to lead")
        lives.append(Life(started, ready=time.monotonic()))
        print(f"the next daemon followed lnd {time.monotonic() - started:.2f} s after its start")
        if group:
            assert await server_pid(store) != first_server
        else:
            assert await server_pid(store) == first_server, "a second server, not a takeover"
        await asyncio.sleep(1.0)
        await traffic.stop()
        await net.caught_up(store)
        await net.deliver_zed(store)
        books = await Books.read(store)
    finally:
        await traffic.stop()
        if daemon.returncode is None:
            daemon.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(daemon.wait(), 30)
        await store.aclose()
        stopped_server = not server_answers(datadir)
        if not stopped_server:  # leave no server behind, whatever failed
            server = RedisServer(datadir / "redis", unix_socket=embedded_socket_path(datadir))
            server.start()
            server.stop()
        await net.node.stop()
    assert exit_code == 0
    assert stopped_server, "the next daemon left the server it took over running"

    received = await received_texts([*net.recipients, net.zed])
    verdict = judge(
        personality, traffic, received, lives, bound=IN_MEMORY_BOUND, journaled=journaled
    )
    print(verdict.summary(kills=1))
    failures = verdict.failures() + books.disagreements()
    failures += undelivered(held_at_kill, received, books)
    failures += [
        f"zed's {n}, stored before the kill, never reached zed"
        for n in range(FOR_ZED)
        if not received[net.zed.pubkey][b"zed before the kill %d" % n]
    ]
    assert not failures, "\n".join(failures)
