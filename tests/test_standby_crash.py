"""A leader and its hot standby, the leader killed outright (SIGKILL) again and again, over
traffic that never stops: nothing is lost, with no window.

A sender streams a message about every 10 ms for the whole run to four recipients that
flap online and offline every 30 to 300 ms (tests/traffic.py). Two daemons run on the
node: the leader decides, the standby journals what it reads from lnd's stream too. At a
random moment the leader is SIGKILLed; the standby takes over; a fresh daemon is started
as the new standby, and the next kill waits until it stands by on lnd's stream. So from
the first standby's subscription to the end at least one live daemon is always on lnd's
stream (issue 13: "0 messages lost, with no window").

What must hold:

- Every message published while a live daemon was on lnd's stream reaches its recipient
  (peeled with the recipient's own key to its payload): no in-memory window at a kill, no
  unheard gap at a takeover. Duplicates are allowed and reported.
- lnd itself drops nothing; simnet's record of publications no daemon heard agrees with
  the sender's, and none of them fell while a live daemon stood on the stream.
- Every message stored was delivered: each one Redis held at any kill reaches its
  recipient, every ``stored`` event has its ``delivered`` one, the counters agree with
  the events, the mailbox ends empty (``--confirm-after`` is short, and the end waits for
  the last confirmations) and its indexes agree with its queues
  (``lndmailbox.store.audit``).
- Every kill is taken over: the standby leads, ready, within :data:`TAKEOVER_BOUND`
  (a generous bound against a takeover that never comes, not a timing assertion). The
  failover times (kill to the standby's ``/health/leader`` 200 and ready, polled every
  20 ms) are printed, median and maximum, against issue 13's 2 s target.

The seed is printed (``STANDBY_CRASH_SEED`` replays the test's own choices).
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

from simnet import Personality

from lndmailbox.store import Store, free_port
from tests.daemon_harness import GENERATIONS, ci_and_long, wait_until
from tests.daemon_process import ROOM_FOR_EVERYTHING, daemon_argv, health
from tests.traffic import (
    Books,
    Life,
    Loss,
    Network,
    Sent,
    Traffic,
    held_in_redis,
    message_stream,
    received_texts,
    seeded,
    undelivered,
)

KILLS = 50
LONG_KILLS = 200
RUNNING = (0.2, 2.0)
"""Seconds between the new standby's standing by on lnd's stream and the next kill of the
leader: a random moment of the leader's work (deciding, delivering, confirming)."""
LAST_RUN = 2.0
"""Seconds of traffic the last pair, which is not killed, gets before the end."""
TAKEOVER_BOUND = 30.0
"""Seconds within which the standby must lead, ready, after its leader's kill: far past
the 2 s target, only against a takeover that never comes."""
TARGET = 2.0
"""Issue 13's failover target, seconds: printed against, never asserted."""
POLL = 0.02
CONFIRM_AFTER = "0.5"
"""Short, so that the last messages are confirmed (and leave the mailbox) soon after the
traffic stops: every recipient then stays online."""


@GENERATIONS
@ci_and_long(KILLS, LONG_KILLS, timeout=900, long_timeout=3600)  # CI: about 120 s here
async def test_sigkills_of_the_leader_lose_nothing_with_a_standby(
    personality: Personality, redis_url: str, tmp_path: Path, size: int
) -> None:
    await leader_kills(personality, redis_url, tmp_path, size)


@dataclass
class Daemon:
    name: str
    process: asyncio.subprocess.Process
    port: int
    log_path: Path
    life: Life
    """``started``: when the test saw it on lnd's stream (a standby standing by)."""

    async def state(self) -> tuple[str | None, bool, int]:
        """Its role, whether it is ready, and /health/leader's status."""
        _, body = await asyncio.to_thread(health, self.port)
        code, _ = await asyncio.to_thread(health, self.port, "/health/leader")
        return body.get("role"), body.get("ready") is True, code

    async def leads(self) -> bool:
        code, body = await asyncio.to_thread(health, self.port, "/health/leader")
        return code == 200 and body.get("ready") is True

    async def stands_by(self) -> bool:
        if self.process.returncode is not None:
            raise AssertionError(f"{self.name} exited {self.process.returncode}:\n{self.tail()}")
        code, body = await asyncio.to_thread(health, self.port)
        return code == 200 and body.get("role") == "standby" and body.get("ready") is True

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def leader_kills(
    personality: Personality, redis_url: str, tmp_path: Path, kills: int
) -> None:
    rng = seeded("STANDBY_CRASH_SEED", "standby crash test")
    began = time.monotonic()
    net = await Network.start(personality)
    cert, macaroon = net.node.write_credentials(tmp_path / "lnd")
    stream = message_stream(personality)
    store = Store.from_url(redis_url, net.node.pubkey)
    daemons: list[Daemon] = []

    async def spawn() -> Daemon:
        port = free_port()
        log_path = tmp_path / f"d{len(daemons)}.log"
        command = daemon_argv(
            net.node.target,
            cert,
            macaroon,
            redis_url,
            "--allow-channel-peers",
            *ROOM_FOR_EVERYTHING,
            "--confirm-after",
            CONFIRM_AFTER,
            "--log-level",
            "warning",
            "--metrics-addr",
            f"127.0.0.1:{port}",
        )
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *command, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        d = Daemon(f"d{len(daemons)}", process, port, log_path, Life(float("inf")))
        daemons.append(d)
        return d

    def alive() -> int:
        return sum(1 for d in daemons if d.process.returncode is None)

    def streams() -> int:
        return net.node.subscriber_count(stream)

    async def stand_by(d: Daemon) -> None:
        """Waits until ``d`` stands by and simnet counts its stream (and no dead one)."""
        await wait_until(d.stands_by, within=60, what=f"{d.name} to stand by")
        await wait_until(lambda: streams() == 2, within=30, what=f"{d.name} on lnd's stream")
        d.life = replace(d.life, started=time.monotonic())

    traffic = Traffic(net, rng)
    failovers: list[float] = []
    held_at_kills: dict[str, tuple[bytes, bytes]] = {}
    exit_codes: list[int] = []
    try:
        leader = await spawn()
        await wait_until(leader.leads, within=60, what="the first daemon to lead")
        standby = await spawn()
        await stand_by(standby)
        leader.life = replace(leader.life, started=standby.life.started)
        traffic.start()
        for n in range(1, kills + 1):
            await asyncio.sleep(rng.uniform(*RUNNING))
            leader.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            leader.life = replace(leader.life, killed=killed)
            while not await standby.leads():
                if time.monotonic() - killed > TAKEOVER_BOUND:
                    role, ready, code = await standby.state()
                    raise AssertionError(
                        f"kill {n}: {standby.name} did not take over within {TAKEOVER_BOUND}s "
                        f"(role {role}, ready {ready}, /health/leader {code}):\n{standby.tail()}"
                    )
                await asyncio.sleep(POLL)
            failovers.append(time.monotonic() - killed)
            await leader.process.wait()
            await wait_until(lambda: streams() <= alive(), within=30, what="the dead stream gone")
            held_at_kills.update(await held_in_redis(store, net.recipients))
            leader, standby = standby, await spawn()
            await stand_by(standby)

        await asyncio.sleep(LAST_RUN)
        await traffic.stop()
        await net.caught_up(store)
        await net.deliver_zed(store)

        async def all_confirmed() -> bool:
            for peer in net.recipients:
                if await store.queues.held(peer.pubkey):
                    return False
            return True

        await wait_until(all_confirmed, within=60, what="the last deliveries to be confirmed")
        books = await Books.read(store)
        for d in (standby, leader):
            d.process.send_signal(signal.SIGTERM)
            exit_codes.append(await asyncio.wait_for(d.process.wait(), 30))
    finally:
        await traffic.stop()
        for d in daemons:
            if d.process.returncode is None:
                d.process.kill()
                await d.process.wait()
        await store.aclose()
        await net.node.stop()
    assert exit_codes == [0, 0], f"the last pair did not stop cleanly on SIGTERM: {exit_codes}"

    received = await received_texts(net.recipients)
    lives = [d.life for d in daemons]
    kill_times = sorted(life.killed for life in lives if life.killed < float("inf"))
    covered = lost = unheard = uncovered = 0
    failures: list[str] = []
    for s in traffic.sent:
        arrived = received[s.recipient][s.text] > 0
        live = any(life.started <= s.at < life.killed for life in lives)
        unheard += not s.result.subscribers
        if not s.result.published:
            failures.append(f"{s.text!r}: dropped by lnd ({s.result.drop_reason})")
            continue
        if not live:
            uncovered += 1
            continue
        covered += 1
        if not s.result.subscribers:
            failures.append(
                f"{s.text!r}: published with no stream subscribed, {near(s, kill_times)}"
            )
        if not arrived:
            lost += 1
            before = next((k for k in kill_times if k >= s.at), float("inf")) - s.at
            stalled = traffic.stalled(s.at, s.at + before) if before != float("inf") else 0.0
            loss = Loss(s, before, stalled, traffic.back_after(s), None)
            failures.append(f"lost: {loss.describe()}; {near(s, kill_times)}")
    copies = sum(sum(t.values()) for t in received.values())
    delivered = sum(len(t) for t in received.values())
    took = sorted(failovers)
    print(
        f"{personality.release}: {kills} leader SIGKILLs with a standby in "
        f"{time.monotonic() - began:.0f} s; failover (kill to the standby's /health/leader "
        f"200, ready) median {statistics.median(took):.2f} s, max {took[-1]:.2f} s, "
        f"{sum(t > TARGET for t in took)} of {len(took)} over the {TARGET:.0f} s target "
        f"(all, s: {[round(t, 2) for t in took]})"
    )
    print(
        f"{len(traffic.sent)} messages sent, {covered} while a live daemon was on lnd's "
        f"stream, {uncovered} outside; lost {lost}; {unheard} published with no stream "
        f"subscribed (simnet: {len(net.node.unheard)}); {delivered} delivered, "
        f"{copies - delivered} duplicates; Redis held {len(held_at_kills)} messages at "
        f"kills; counters {books.counters}"
    )
    assert len(net.node.unheard) == sum(
        s.result.published and not s.result.subscribers for s in traffic.sent
    )
    assert books.counters.get("stored", 0) > 0, "the scenario stored nothing: it tests nothing"
    assert uncovered == 0, "every message of the run must fall while a live daemon listens"
    failures += books.disagreements() + undelivered(held_at_kills, received, books)
    assert not failures, "\n".join(failures)


def near(s: Sent, kills: list[float]) -> str:
    """Where ``s`` fell among the kills: after the one before it, before the next."""
    after = max((s.at - k for k in kills if k <= s.at), default=None)
    before = min((k - s.at for k in kills if k > s.at), default=None)
    return (
        f"{'-' if after is None else f'{after * 1000:.0f}'} ms after a kill, "
        f"{'-' if before is None else f'{before * 1000:.0f}'} ms before the next; "
        f"{s.result.subscribers} subscribers"
    )
