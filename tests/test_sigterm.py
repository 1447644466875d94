"""SIGTERM ends the daemon with exit code 0 within 5 s, whatever is away.

The real daemon runs as a subprocess (the signal and the exit code are the point), against
simnet and a real Redis. Each test brings the daemon into one state, waits for the state
itself (a log line, a byte held back, a journal entry), sends SIGTERM and measures how long
the process takes to exit, against the promise of 5 s (not a speed benchmark):

- lnd down: refusing connections at start and while running, and taking connections
  without ever answering (a hung lnd, a partition) at start and while the decider waits
  for its signer;
- Redis down: at start, while waiting for the node lock another daemon holds, and while
  running with kept messages buffered in memory (then the daemon says how many it lost);
- in the middle of a drain to a peer: lnd taking the messages, and lnd holding a send.

Where the state depends on lnd, on both lnd generations. What the daemon holds when it
stops is checked too: nothing that reached Redis is lost (journaled messages are decided
by the next daemon, a drain cut short leaves the rest queued).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from simnet import Personality, SimNode, SimPeer

from lndmailbox.daemon import run
from lndmailbox.onion import BlindedHopSpec, Receive, message_via
from lndmailbox.onion.tlv import scid
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.store import Limits, NewMessage, RedisServer, Store, free_port
from tests.daemon_harness import PAYLOAD_TYPE, wait_until, world
from tests.daemon_process import ROOM_FOR_EVERYTHING, daemon_argv

PROMISE = 5.0
"""Seconds from SIGTERM to the exit, in every state (the issue's promise)."""

GENERATIONS = pytest.mark.parametrize(
    "personality", [Personality.LND_0_20, Personality.LND_0_21], ids=["lnd0.20", "lnd0.21"]
)
ROOMY = Limits(max_messages_per_peer=100_000, max_bytes_per_peer=2**30, max_bytes_total=2**30)


# --- a relay that can stop passing bytes ---------------------------------------------------


class Relay:
    """TCP between the daemon and simnet that can stop passing bytes, one way or both, with
    every connection left open: an lnd that takes requests and never answers, as a hung
    lnd or a network partition looks to its client (no reset, no error, only silence)."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self.requests = asyncio.Event()
        """Clear: bytes from the daemon to lnd are held back."""
        self.answers = asyncio.Event()
        """Clear: bytes from lnd to the daemon are held back."""
        self.requests.set()
        self.answers.set()
        self.held_requests = 0
        """Bytes from the daemon held back so far."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    @property
    def target(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            lnd_reader, lnd_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(
                self._pipe(reader, lnd_writer, self.requests, count=True),
                self._pipe(lnd_reader, writer, self.answers, count=False),
            )
        except asyncio.CancelledError:
            pass  # stop(): asyncio's server must not log a cancelled connection as an error
        finally:
            writer.close()
            lnd_writer.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        flowing: asyncio.Event,
        *,
        count: bool,
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if not flowing.is_set():
                    if count:
                        self.held_requests += len(data)
                    await flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.close()


# --- the daemon as a subprocess --------------------------------------------------------------


@dataclass
class Daemon:
    process: asyncio.subprocess.Process
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def logged(self, text: str, *, count: int = 1, within: float = 30.0) -> None:
        """Waits until the daemon has logged ``text`` ``count`` times."""

        def seen() -> bool:
            if self.process.returncode is not None:
                raise AssertionError(f"the daemon exited {self.process.returncode}:\n{self.log()}")
            return self.log().count(text) >= count

        await wait_until(seen, within=within, what=f"the daemon to log {text!r} x{count}")

    async def sigterm(self, state: str) -> float:
        """SIGTERM; the seconds until the process exited, which must be with 0."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), 60)
        took = time.monotonic() - started
        print(f"\n{state}: exit {code} {took:.2f}s after SIGTERM")
        assert code == 0, f"exit {code}:\n{self.log()[-4000:]}"
        assert took < PROMISE, f"{state}: {took:.2f}s after SIGTERM:\n{self.log()[-4000:]}"
        return took


@contextlib.asynccontextmanager
async def daemon(
    tmp_path: Path, node: SimNode, redis_url: str, *extra: str, target: str | None = None
) -> AsyncIterator[Daemon]:
    cert, macaroon = node.write_credentials(tmp_path / "lnd")
    log_path = tmp_path / f"daemon-{time.monotonic_ns()}.log"
    command = daemon_argv(
        target or node.target,
        cert,
        macaroon,
        redis_url,
        "--allow-channel-peers",
        *ROOM_FOR_EVERYTHING,
        "--log-level",
        "debug",
        *extra,
    )
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
        )
    try:
        yield Daemon(process, log_path)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@dataclass
class Lsp:
    """simnet's node with alice (online, sends) and bob (offline, allowed: a channel)."""

    node: SimNode
    alice: SimPeer
    bob: SimPeer

    def message_for_bob(self, text: bytes) -> OnionMessage:
        _, message = message_via(
            [BlindedHopSpec(self.node.pubkey, next_node_id=self.bob.pubkey), self.bob.pubkey],
            {PAYLOAD_TYPE: text},
        )
        return message

    async def payload(self, message: OnionMessage) -> bytes:
        peeled = await self.bob.peel(message)
        assert isinstance(peeled, Receive)
        return peeled.payload[PAYLOAD_TYPE]


@contextlib.asynccontextmanager
async def lsp(personality: Personality) -> AsyncIterator[Lsp]:
    node = SimNode(personality, onion_rate_limits=None)
    await node.start()
    alice = node.add_peer("alice")
    bob = node.add_peer("bob")
    node.open_channel(alice, scid(800_000, 1, 0))
    node.open_channel(bob, scid(800_000, 2, 0))
    alice.connect()
    try:
        yield Lsp(node, alice, bob)
    finally:
        await node.stop()


@contextlib.asynccontextmanager
async def relay_to(node: SimNode) -> AsyncIterator[Relay]:
    relay = Relay(node.port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


READY = "ready: following lnd's peer events and onion messages"
LND_FAILING = "lnd failing ("
LND_STILL_FAILING = "lnd still failing"


async def inbox(store: Store) -> int:
    return len(await store.journal.pending())


# --- lnd down ------------------------------------------------------------------------------


@GENERATIONS
async def test_lnd_refusing_connections_at_start(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    async with lsp(personality) as w:
        await w.node.stop()
        async with daemon(tmp_path, w.node, redis_url) as d:
            # A few tries in: the backoff has grown past the first second.
            await d.logged(LND_STILL_FAILING, count=3)
            await d.sigterm("lnd refusing connections at start")
        # One retry layer: one WARNING for the outage, not one per layer.
        assert d.log().count(LND_FAILING) == 1
        assert "waiting for lnd failing" not in d.log()


@GENERATIONS
async def test_lnd_never_answering_at_start(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    async with lsp(personality) as w, relay_to(w.node) as relay:
        relay.requests.clear()  # GetInfo's attempt hangs (its deadline is 30 s)
        async with daemon(tmp_path, w.node, redis_url, target=relay.target) as d:
            await wait_until(lambda: relay.held_requests > 0, what="the daemon's first request")
            await d.sigterm("lnd never answering at start")


@GENERATIONS
async def test_lnd_going_down_while_running(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    async with lsp(personality) as w, daemon(tmp_path, w.node, redis_url) as d:
        await d.logged(READY)
        await w.node.stop()
        await d.logged(LND_STILL_FAILING, count=3)
        await d.sigterm("lnd down while running")


@GENERATIONS
async def test_lnd_stops_answering_the_signer_while_deciding(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    """The decider's ECDH calls hang (lnd's stream still flows): the shutdown's budget
    cuts them short, and the messages stay journaled for the next daemon, which stores
    them."""
    sent = 5
    async with (
        lsp(personality) as w,
        relay_to(w.node) as relay,
        Store.from_url(redis_url, w.node.pubkey) as store,
    ):
        async with daemon(tmp_path, w.node, redis_url, target=relay.target) as d:
            await d.logged(READY)
            relay.requests.clear()
            for n in range(sent):
                await w.alice.send_onion_message(w.message_for_bob(b"held %d" % n))

            async def journaled() -> bool:
                return await inbox(store) == sent

            await wait_until(journaled, what="the messages to be journaled")
            await wait_until(lambda: relay.held_requests > 0, what="a signer call held")
            await d.sigterm("lnd not answering the decider's signer calls")
        assert f"stopping with {sent} messages read from lnd and not decided: {sent} stay" in (
            d.log()
        )
        assert await inbox(store) == sent
        assert (await store.events.counters()).get("lost", 0) == 0

        # The next daemon, with lnd answering, decides and stores them.
        async with daemon(tmp_path, w.node, redis_url) as d:

            async def stored() -> bool:
                return len(await store.queues.messages(w.bob.pubkey)) == sent

            await wait_until(stored, within=30, what="the journaled messages to be stored")
            await d.sigterm("after storing what the last one left journaled")
        kept = await store.queues.messages(w.bob.pubkey)
        payloads = {await w.payload(OnionMessage(m.path_key, m.onion)) for m in kept}
        assert payloads == {b"held %d" % n for n in range(sent)}


# --- in the middle of a drain --------------------------------------------------------------


async def queue_for_bob(store: Store, w: Lsp, count: int) -> None:
    """``count`` messages queued for bob as the LSP keeps them: the hop that bob peels."""
    batch = []
    for n in range(count):
        _, message = message_via([w.bob.pubkey], {PAYLOAD_TYPE: b"queued %d" % n})
        batch.append(
            NewMessage(w.bob.pubkey, w.alice.pubkey, message.path_key, message.onion, time.time())
        )
    for start in range(0, count, 500):
        await store.queues.put_many(batch[start : start + 500])


@GENERATIONS
async def test_in_the_middle_of_a_drain(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    queued = 3000
    async with (
        lsp(personality) as w,
        Store.from_url(redis_url, w.node.pubkey, ROOMY) as store,
    ):
        await queue_for_bob(store, w, queued)
        async with daemon(tmp_path, w.node, redis_url) as d:
            await d.logged(READY)
            w.bob.connect()
            await wait_until(lambda: len(w.bob.received) >= 100, what="the drain to be going")
            await d.sigterm("in the middle of a drain")
        left = await store.queues.messages(w.bob.pubkey)
        assert left, "the drain ended before SIGTERM: this tests nothing"
        # Nothing lost: each message was delivered, or it is still queued (or both: a
        # message lnd took just before the stop may be sent again).
        delivered = {await w.payload(m) for m in w.bob.received}
        still_queued = {await w.payload(OnionMessage(m.path_key, m.onion)) for m in left}
        assert delivered | still_queued == {b"queued %d" % n for n in range(queued)}
        print(f"{len(delivered)} delivered, {len(left)} left queued")


@GENERATIONS
async def test_in_the_middle_of_a_drain_with_a_send_held_by_lnd(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    """lnd holds a send until the peer is active (up to the send's 10 s deadline)."""
    queued = 50
    async with (
        lsp(personality) as w,
        relay_to(w.node) as relay,
        Store.from_url(redis_url, w.node.pubkey, ROOMY) as store,
    ):
        await queue_for_bob(store, w, queued)
        async with daemon(tmp_path, w.node, redis_url, target=relay.target) as d:
            await d.logged(READY)
            relay.requests.clear()
            w.bob.connect()  # the peer event still reaches the daemon; its send does not
            await wait_until(lambda: relay.held_requests > 0, what="the first send held")
            await d.sigterm("a drain whose send lnd holds")
        assert w.bob.received == []
        assert len(await store.queues.messages(w.bob.pubkey)) == queued


# --- Redis down ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_redis_down_at_start(tmp_path: Path) -> None:
    async with lsp(Personality.LND_0_21) as w, own_redis(tmp_path) as redis:
        redis.stop()
        async with daemon(tmp_path, w.node, redis.url) as d:
            await d.logged("taking the node lock in Redis still failing", count=3)
            await d.sigterm("Redis down at start")


async def test_redis_down_while_waiting_for_the_node_lock(tmp_path: Path) -> None:
    async with lsp(Personality.LND_0_21) as w, own_redis(tmp_path) as redis:
        async with Store.from_url(redis.url, w.node.pubkey) as store:
            assert await store.control.acquire_lock("elsewhere:1:0123abcd", 600.0)
        async with daemon(tmp_path, w.node, redis.url) as d:
            await d.logged("leads this node; standing by")
            redis.stop()
            await d.logged("taking the node lock in Redis still failing", count=2)
            await d.sigterm("Redis down while waiting for the node lock")


@GENERATIONS
async def test_redis_down_with_messages_buffered(personality: Personality, tmp_path: Path) -> None:
    """Kept messages wait in memory while Redis is away; at SIGTERM they cannot be
    written: the daemon exits at once and says how many it lost."""
    sent = 25
    async with lsp(personality) as w, own_redis(tmp_path) as redis:
        port = free_port()
        async with daemon(tmp_path, w.node, redis.url, "--metrics-addr", f"127.0.0.1:{port}") as d:
            await d.logged(READY)
            redis.stop()
            for n in range(sent):
                await w.alice.send_onion_message(w.message_for_bob(b"buffered %d" % n))
            # Every one read and being decided, and the store writer has met Redis away.
            await wait_until(lambda: received(port) == sent, what="every message read")
            await d.logged("writing messages to Redis")
            await d.sigterm("Redis down with messages buffered")
        lost = re.search(r"(\d+) messages held in memory could not reach Redis", d.log())
        assert lost is not None, d.log()[-4000:]
        assert int(lost.group(1)) == sent


def received(port: int) -> float:
    """The daemon's ``received_total``: messages it took from the decision queue."""
    url = f"http://127.0.0.1:{port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    match = re.search(r"^lndmailbox_received_total (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# --- one retry layer -----------------------------------------------------------------------


async def test_one_lnd_outage_at_start_is_logged_once(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The wait for lnd is the client's own retry: one WARNING when lnd is away, one INFO
    when it answers, not two of each."""
    caplog.set_level(logging.INFO, logger="lndmailbox")
    async with world(Personality.LND_0_21, redis_url, tmp_path) as w:
        await w.node.stop()
        w.stop = asyncio.Event()
        w.task = asyncio.create_task(run(w.settings, stop=w.stop))
        await wait_until(lambda: "failing" in caplog.text, what="the outage to be logged")
        await w.node.start()
        await wait_until(lambda: READY in caplog.text, within=30, what="the daemon to be ready")
    warnings = [r for r in caplog.records if "failing" in r.getMessage()]
    recoveries = [r for r in caplog.records if "working again" in r.getMessage()]
    assert [r.getMessage().split(" failing")[0] for r in warnings] == ["lnd"]
    assert [r.levelno for r in warnings] == [logging.WARNING]
    assert [r.getMessage().split(" working again")[0] for r in recoveries] == ["lnd"]
