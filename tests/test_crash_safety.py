"""One daemon, killed outright (SIGKILL) at random moments, over traffic that never stops.

A sender streams a message about every 10 ms for the whole run, to four recipients that
flap online and offline every 30 to 300 ms (tests/traffic.py), while the daemon is
started, killed (50 times here, 300 in the long form), started again. Most messages
reach a live daemon far from any kill and must arrive with no excuse at all.

What must hold:

- Every message heard by a live daemon reaches its recipient (peeled with the recipient's
  own key to its payload), except one the daemon was killed while holding unjournaled:
  lnd's streams carry no acknowledgement, so what was read and not yet written to Redis
  dies with the process. Each such loss must have been published within
  :data:`IN_MEMORY_BOUND` of its kill: tens of milliseconds.
- What lnd published while no daemon was subscribed is lost (lnd keeps nothing for a
  missing subscriber) and only reported: a lone daemon cannot have it; a standby can.
- No loss of the fast-reconnect shape (lnd 0.21 failed to forward, the recipient was back
  at once, the daemon left the message to lnd), reported as its own kind. A kill shows
  more of them than flapping alone: the race guard, which would store such a message when
  its recipient next goes offline, keeps it in memory only, and dies with the daemon.
- Every message stored was delivered: each one Redis held at any kill reaches its
  recipient, and every ``stored`` event has its ``delivered`` one; the counters agree
  with the events; the mailbox ends empty and its indexes agree with its queues
  (``lndmailbox.store.audit``, after every kill and at the end).

The seed is printed (``CRASH_SEED`` replays the test's own choices). Each daemon logs at
INFO into its own file under the test's ``tmp_path/logs``; a daemon that ends before its
kill fails the test with the end of its log (the daemon exits only on a signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from pathlib import Path

from simnet import Personality

from lndmailbox.store import Store, free_port
from lndmailbox.store.audit import audit
from tests.daemon_harness import GENERATIONS, ci_and_long, wait_until
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

KILLS = 50
LONG_KILLS = 300
START_UP_KILLS = 0.1
"""The share of kills that come at a random moment of the daemon's start-up (importing,
connecting, replaying its predecessor's journal) rather than while it runs."""
START_UP = (0.0, 1.2)
RUNNING = (0.2, 3.5)
"""Seconds a daemon runs after it leads, ready, before its kill, on top of as long as it
took to lead: then most messages reach a live daemon however slow the machine is (a CI
run on a loaded 2-core machine took over 2 s to start each daemon, and without the
addition under half of its messages met a live one)."""
LAST_RUN = 2.0
"""Seconds of traffic the last daemon, which is not killed, gets before the end."""


@GENERATIONS
@ci_and_long(KILLS, LONG_KILLS, timeout=900, long_timeout=3600)  # CI: about 130 s here
async def test_sigkill_loses_nothing_outside_the_window(
    personality: Personality, redis_url: str, tmp_path: Path, size: int
) -> None:
    await sigkills(personality, redis_url, tmp_path, size)


async def sigkills(personality: Personality, redis_url: str, tmp_path: Path, kills: int) -> None:
    rng = seeded("CRASH_SEED", "crash test")
    net = await Network.start(personality)
    cert, macaroon = net.node.write_credentials(tmp_path / "lnd")
    port = free_port()
    command = daemon_argv(
        net.node.target,
        cert,
        macaroon,
        redis_url,
        "--allow-channel-peers",
        *ROOM_FOR_EVERYTHING,
        "--log-level",
        "info",
        "--metrics-addr",
        f"127.0.0.1:{port}",
    )
    traffic = Traffic(net, rng)
    lives: list[Life] = []
    held_at_kills: dict[str, tuple[bytes, bytes]] = {}
    """Every message Redis held at a kill: id -> (recipient, payload)."""
    journaled_at_kills: set[bytes] = set()
    """The payloads of every message the journal held at a kill."""
    audits: list[str] = []
    early: list[str] = []
    """Daemons that ended before their kill: the daemon exits only on a signal."""
    logs = tmp_path / "logs"
    logs.mkdir()
    store = Store.from_url(redis_url, net.node.pubkey)
    last: asyncio.subprocess.Process | None = None
    exit_code = None
    try:
        traffic.start()
        for n in range(1, kills + 1):
            started = time.monotonic()
            killed = False
            log_path = logs / f"daemon-{n}.log"
            with log_path.open("wb") as log_file:
                daemon = await asyncio.create_subprocess_exec(
                    *command, stdin=subprocess.DEVNULL, stderr=log_file
                )
            try:
                ready = None
                if rng.random() < START_UP_KILLS:
                    await asyncio.sleep(rng.uniform(*START_UP))
                else:
                    await wait_until(lambda: leading(port), within=30, what="the daemon to lead")
                    ready = time.monotonic()
                    # A daemon slow to start (a loaded machine) runs longer too, so that
                    # most of the traffic still meets a live daemon far from its kill.
                    await asyncio.sleep(rng.uniform(*RUNNING) + (ready - started))
                with contextlib.suppress(ProcessLookupError):  # it ended already
                    daemon.send_signal(signal.SIGKILL)
                    killed = True
                lives.append(Life(started, time.monotonic(), ready))
            finally:
                if not killed:
                    # Once only: Popen's send_signal polls first, and that poll may reap
                    # the killed daemon before asyncio's watcher, which then reports 255.
                    with contextlib.suppress(ProcessLookupError):
                        daemon.kill()
                code = await daemon.wait()
            if code != -signal.SIGKILL:
                tail = log_path.read_text(errors="replace").splitlines()[-5:]
                early.append(f"daemon {n} exited {code} before its kill; its log ends: {tail}")
            await wait_until(net.unsubscribed, what="the node to drop the dead daemon's stream")
            # Nothing runs against Redis now: it holds what the next daemon must deliver.
            audits += [f"after kill {n}: {p}" for p in await audit(store)]
            journaled_at_kills |= await journaled_texts(store, net)
            held_at_kills.update(await held_in_redis(store, net.recipients))

        # The last daemon is left running: everything kept must reach its recipient.
        started = time.monotonic()
        with (logs / "daemon-last.log").open("wb") as log_file:
            last = await asyncio.create_subprocess_exec(
                *command, stdin=subprocess.DEVNULL, stderr=log_file
            )
        await wait_until(lambda: leading(port), within=30, what="the last daemon to lead")
        lives.append(Life(started, ready=time.monotonic()))
        await asyncio.sleep(LAST_RUN)
        await traffic.stop()
        await net.caught_up(store)
        await net.deliver_zed(store)
        books = await Books.read(store)
    finally:
        await traffic.stop()
        if last is not None:
            if last.returncode is None:
                last.send_signal(signal.SIGTERM)
            exit_code = await asyncio.wait_for(last.wait(), 30)
        await store.aclose()
        await net.node.stop()
    assert exit_code == 0, "the last daemon did not stop cleanly on SIGTERM"

    received = await received_texts(net.recipients)
    verdict = judge(
        personality, traffic, received, lives, bound=IN_MEMORY_BOUND, journaled=journaled_at_kills
    )
    print(verdict.summary(kills))
    print(f"losses within 1 s before a kill: {verdict.near_kills()}")
    print(
        f"Redis held {len(held_at_kills)} messages at kills and {len(journaled_at_kills)} "
        f"journaled ones for the next daemon; simnet kept {len(net.node.unheard)} "
        f"publications no daemon heard; {sum(life.ready is not None for life in lives)} "
        f"daemons led; counters {books.counters}"
    )
    # The sender's view of what nobody heard and simnet's own record of it agree.
    assert len(net.node.unheard) == sum(
        s.result.published and not s.result.subscribers for s in traffic.sent
    )
    assert books.counters.get("stored", 0) > 0, "the scenario stored nothing: it tests nothing"
    assert verdict.no_excuse > verdict.sent // 2, "most messages must be checked with no excuse"
    failures = early + verdict.failures() + audits + books.disagreements()
    failures += undelivered(held_at_kills, received, books)
    assert not failures, "\n".join(failures)
