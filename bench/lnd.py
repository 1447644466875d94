"""``make bench-lnd`` (``python -m bench.lnd``): the mailbox's ingest against real lnd.

The itest's regtest network (itest/network.py: btcd, and sender -> LSP -> recipient lnd
nodes with channels), from the itest's binary cache (itest/build.py), once per lnd
generation: 0.21 (native onion messages) and 0.20 (custom messages 513). The mailbox daemon
runs as its own process (itest/daemon.py) against the LSP, lnd's Go signer doing every
ECDH (Signer.DeriveSharedKey), with a Redis started as the daemon's embedded mode runs one.
Every lnd logs at ``info``, as an operator's would.

lnd 0.21's onion-message ingress token buckets (lncfg/protocol.go:
``protocol.onion-msg-{peer,global}-{kbps,burst-bytes}``; defaults 512 kbps / 262144 B per
peer, 5120 kbps / 1638400 B in all) are raised on the LSP far past what the machine can
carry, and lowered on the recipient to the least lnd takes, so that the recipient drops
what the LSP forwards it before peeling it: a phone is not on the LSP's machine. lnd 0.20
has no such limit on custom messages.

Two cases, each with its own messages, built before anything is timed:

* ``realistic``: senders reuse a handful of blinded paths (an offer's or a static
  invoice's): 90% of the messages go to an online peer (the recipient, along one of
  :data:`ONLINE_PATHS` paths; lnd 0.21 forwards them itself, on 0.20 the mailbox sends
  them), 10% to a few offline allowed peers (one path each), which the mailbox stores;
* ``worst``: every message on a blinded path of its own, every one stored (its next hop an
  offline peer on the allowlist, a random node id).

The sender's lnd sends them to the LSP (SendOnionMessage on 0.21, SendCustomMessage on
0.20) from this process, ``--in-flight`` calls at a time, never more than ``--window``
messages ahead of what the daemon has decided (its counters in Redis: stored +
left_to_lnd + forwarded + dropped) and, on 0.21, never more than ``--lnd-window`` ahead
of what the LSP's lnd has published (this process follows its SubscribeOnionMessages
too): lnd 0.21 drops a peer's onion messages silently once 40 wait for its actor.

Each case: ``--warmup`` messages untimed, whose second half gives a first rate; then a
lead-in of about :attr:`Config.lead` seconds, the timed interval (``--seconds``, with the
CPU each process spent in it: utime + stime from /proc), and sending stops. Every message
sent must then be decided as the case says (stored, or left to lnd / forwarded; none
dropped), and a sample of the stored ones is peeled by its peer's own key to the payload
it was sent with. On 0.21 the same warm-up messages first go to lnd with no mailbox
running: the rate lnd sustains alone, timed by what it published.

The baseline is lnd's default global ceiling, 5120 kbps over 1366-byte packets: about 469
messages/s. Everything shares the machine (three lnds, btcd, the sender, Redis and the
daemon); the daemon's CPU per message, less what it spends idle, is the figure that
carries to a bigger one (at low rates its per-wakeup costs are spread over few messages).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import enum
import hashlib
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc

from bench.__main__ import machine
from bench.mailbox import LND_CEILING_MSGS
from itest.build import Generation, ensure_chain
from itest.daemon import MailboxDaemon
from itest.network import Network
from itest.onion import PAYLOAD_TYPE, send_onion_message
from itest.rpc import NodeRpc
from lndmailbox import onion
from lndmailbox.config import Settings
from lndmailbox.lnd.lnrpc import lightning_pb2 as ln
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.store import RedisServer, Store

WORST_TARGET = 2.0
"""The worst case against lnd 0.21, as a multiple of lnd's default ceiling."""

RAISED_ONION_LIMITS = (
    "--protocol.onion-msg-peer-kbps=10000000",
    "--protocol.onion-msg-peer-burst-bytes=268435456",
    "--protocol.onion-msg-global-kbps=10000000",
    "--protocol.onion-msg-global-burst-bytes=268435456",
)
"""lnd 0.21's ingress buckets (lncfg/protocol.go), 10 Gbps and 256 MiB: never reached."""

LEAST_ONION_LIMITS = (
    "--protocol.onion-msg-peer-kbps=1",
    "--protocol.onion-msg-peer-burst-bytes=65537",
    "--protocol.onion-msg-global-kbps=1",
    "--protocol.onion-msg-global-burst-bytes=65537",
)
"""The least lnd 0.21 accepts (config.go: a burst holds one 65535-byte message and its
2-byte type): about one message a second gets through."""

ONLINE_PATHS = 3
"""Blinded paths the realistic case's online messages share (an offer's few paths)."""

MAILBOX_ARGS = (
    "--log-level", "info",
    # Nothing is evicted: every message the case stores stays, so each one costs the same.
    "--max-messages-per-peer", "1000000",
    "--max-bytes-per-peer", "256MiB",
)  # fmt: skip

IDLE_SECONDS = 4.0
"""How long each process's CPU is read with nothing sent, to take its timers out."""

DECIDING = ("stored", "left_to_lnd", "forwarded")
"""The daemon's counters that decide a message the case sends; the rest are drops."""


class BenchError(Exception):
    """The run could not measure: a process failed, lnd lost messages, outcomes differ."""


class Case(enum.Enum):
    REALISTIC = "realistic"
    WORST = "worst"


# Messages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Where each message of a case goes after the LSP, and along which blinded path."""

    case: Case
    lsp: bytes
    online: bytes
    offline: tuple[bytes, ...]

    def destination(self, i: int) -> tuple[bytes, int | None]:
        """Message ``i``'s next hop after the LSP, and which of that hop's shared paths it
        takes (None: a path of its own)."""
        if self.case is Case.WORST:
            return self.offline[i % len(self.offline)], None
        if i % 10 == 9:
            return self.offline[(i // 10) % len(self.offline)], 0
        return self.online, i % ONLINE_PATHS

    def is_stored(self, i: int) -> bool:
        return self.destination(i)[0] != self.online

    def payload(self, i: int) -> bytes:
        return f"bench-lnd {self.case.value} {i}".encode()

    def index_of(self, payload: bytes) -> int:
        """The message number a payload of this plan carries (ValueError if none)."""
        prefix = f"bench-lnd {self.case.value} ".encode()
        if not payload.startswith(prefix):
            raise ValueError(f"not a payload of the {self.case.value} case: {payload!r}")
        return int(payload[len(prefix) :])


def _path(lsp: bytes, peer: bytes, secret: bytes) -> onion.BlindedPath:
    hops = [
        onion.BlindedHopSpec(lsp, next_node_id=peer),
        onion.BlindedHopSpec(peer, path_id=hashlib.sha256(b"path id" + secret).digest()),
    ]
    return onion.create_blinded_path(hops, secret)


def build(plan: Plan, start: int, stop: int) -> list[bytes]:
    """Messages ``start``..``stop`` of ``plan``, encoded. A shared path is derived from its
    peer and number alone, so every process that builds a part builds the same one."""
    shared: dict[tuple[bytes, int], onion.BlindedPath] = {}
    out = []
    for i in range(start, stop):
        peer, which = plan.destination(i)
        if which is None:
            path = _path(plan.lsp, peer, onion.random_secret())
        else:
            path = shared.get((peer, which)) or shared.setdefault(
                (peer, which),
                _path(plan.lsp, peer, hashlib.sha256(b"shared path %d" % which + peer).digest()),
            )
        first, message = onion.build_onion_message(
            path, {PAYLOAD_TYPE: plan.payload(i)}, onion.random_secret()
        )
        assert first == plan.lsp
        out.append(message.encode())
    return out


async def build_all(plan: Plan, start: int, stop: int, chunk: int = 500) -> list[OnionMessage]:
    """Messages ``start``..``stop`` of ``plan``, built in a process per core."""
    loop = asyncio.get_running_loop()
    workers = max(1, len(os.sched_getaffinity(0)))
    context = multiprocessing.get_context("spawn")  # this process has gRPC threads
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(pool, build, plan, first, min(first + chunk, stop))
                for first in range(start, stop, chunk)
            )
        )
    return [OnionMessage.decode(m) for part in parts for m in part]


async def check_stored(plan: Plan, key: onion.LocalNodeKey, message: OnionMessage) -> int:
    """Peels ``message``, stored for the peer of ``key``, with that key: it must be the
    final hop's and carry the payload of a message ``plan`` sent that peer. Returns the
    message's number."""
    result = await onion.peel(message.path_key, message.onion, key)
    if not isinstance(result, onion.Receive):
        raise BenchError(f"a message stored for {key.pubkey.hex()} peels to {result!r}")
    i = plan.index_of(result.payload[PAYLOAD_TYPE])
    if plan.destination(i)[0] != key.pubkey:
        raise BenchError(f"message {i} of the {plan.case.value} case stored for the wrong peer")
    return i


# Measuring -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of process ``pid`` so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command name: state is field 3, utime 14 and stime 15 (proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Snapshot:
    at: float
    count: int
    """Messages done when it was taken: decided by the daemon (published by lnd, alone)."""
    cpu: dict[str, float]


def decided(counters: Mapping[str, int]) -> int:
    return sum(counters.get(name, 0) for name in DECIDING) + dropped(counters)


def dropped(counters: Mapping[str, int]) -> int:
    return sum(n for name, n in counters.items() if name.startswith(("dropped", "lost")))


@dataclass(frozen=True)
class Row:
    generation: Generation
    case: Case
    sent: int
    start: Snapshot
    end: Snapshot
    outcomes: dict[str, int]
    """The daemon's counters' growth over the whole case."""
    checked: int
    """Stored messages peeled to their payloads by their peers' keys."""
    idle: Mapping[str, float] = field(default_factory=dict)
    """CPU seconds per second each process spent with no message coming (before the run)."""
    lnd_alone: bool = False
    """The baseline: lnd 0.21 took the case's warm-up messages with no mailbox running."""

    @property
    def messages(self) -> int:
        return self.end.count - self.start.count

    @property
    def seconds(self) -> float:
        return self.end.at - self.start.at

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def ratio(self) -> float:
        return self.rate / LND_CEILING_MSGS

    def us_per_message(self, process: str) -> float | None:
        """CPU per message of ``process`` (None: it was not running)."""
        if process not in self.end.cpu:
            return None
        return (self.end.cpu[process] - self.start.cpu[process]) * 1e6 / self.messages

    def us_net_of_idle(self, process: str) -> float | None:
        """CPU per message less what the process spends when nothing comes (its timers)."""
        if process not in self.end.cpu:
            return None
        idle = self.idle.get(process, 0.0) * self.seconds
        return (self.end.cpu[process] - self.start.cpu[process] - idle) * 1e6 / self.messages


@dataclass
class Meter:
    """Follows the daemon's counters in Redis, what lnd published (when its stream is
    followed too), and the CPU of every process of the run."""

    store: Store
    pids: dict[str, int]
    base: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    published: int | None = None
    """Onion messages lnd 0.21 streamed since the run began (None: not followed)."""
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def decided(self) -> int:
        """Messages the daemon decided since :meth:`begin`."""
        return decided(self.counters) - decided(self.base)

    def growth(self) -> dict[str, int]:
        names = set(self.counters) | set(self.base)
        grown = {n: self.counters.get(n, 0) - self.base.get(n, 0) for n in sorted(names)}
        return {n: v for n, v in grown.items() if v}

    async def read(self) -> None:
        counters = await self.store.events.counters()
        async with self.changed:
            self.counters = counters
            self.changed.notify_all()

    async def begin(self) -> None:
        await self.read()
        self.base = dict(self.counters)

    async def follow(self, stream: AsyncIterable[object]) -> None:
        """Counts what lnd publishes on ``stream`` (lnd 0.21's SubscribeOnionMessages)."""
        self.published = 0
        async for _ in stream:
            async with self.changed:
                self.published += 1
                self.changed.notify_all()

    def snapshot(self, count: int) -> Snapshot:
        cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items() if pid}
        cpu["bench"] = time.process_time()
        return Snapshot(time.perf_counter(), count, cpu)

    async def idle(self, seconds: float) -> dict[str, float]:
        """CPU seconds per second of each process over ``seconds`` with nothing sent."""
        before = self.snapshot(0)
        await asyncio.sleep(seconds)
        after = self.snapshot(0)
        took = after.at - before.at
        return {name: (after.cpu[name] - before.cpu[name]) / took for name in after.cpu}


@dataclass(frozen=True)
class Driven:
    """What :func:`drive` measured: the snapshots at the timed interval's two ends, and how
    many messages it sent (the first ``sent`` of those it was given)."""

    start: Snapshot
    end: Snapshot
    sent: int


async def drive(
    meter: Meter,
    send: Callable[[OnionMessage], Awaitable[None]],
    messages: Sequence[OnionMessage],
    *,
    lead: int,
    seconds: float,
    tail: int,
    in_flight: int,
    window: int,
    lnd_window: int,
    lnd_alone: bool = False,
    stall: float = 20.0,
    every: float = 0.02,
    check_alive: Callable[[], None] = lambda: None,
) -> Driven:
    """Sends ``messages`` through ``send`` and times the daemon's decisions: from the
    moment it has decided ``lead`` of them, for ``seconds`` or until all but ``tail`` are
    decided, whichever comes first. Sending stops there; returns once every message sent
    is decided.

    At most ``in_flight`` sends at a time, none more than ``window`` ahead of the daemon's
    decisions, and, where the meter follows lnd's stream, none more than ``lnd_window``
    ahead of what lnd published: lnd 0.21 queues a peer's onion messages for one actor
    in a mailbox of 50 and silently drops from 40 on (onionmessage/actor.go), so a sender
    further ahead than that loses messages whenever lnd falls behind.

    ``lnd_alone``: no daemon runs; what lnd published counts as done."""
    if lnd_alone and meter.published is None:
        raise ValueError("lnd alone needs the meter to follow lnd's stream")
    if not 0 <= lead <= len(messages) - tail:
        raise ValueError(f"lead {lead} and tail {tail} do not fit {len(messages)} messages")
    sent = 0
    decided_before = meter.decided
    published_before = meter.published
    snapshots: list[Snapshot] = []

    def done() -> int:
        if lnd_alone:
            return sent - lnd_behind()
        return meter.decided - decided_before

    def lnd_behind() -> int:
        if meter.published is None or published_before is None:
            return 0
        return sent - (meter.published - published_before)

    def more() -> bool:
        return sent < len(messages) and len(snapshots) < 2

    def room() -> bool:
        return not more() or (sent - done() < window and lnd_behind() < lnd_window)

    async def sender() -> None:
        nonlocal sent
        while more():
            async with meter.changed:
                await meter.changed.wait_for(room)
            if not more():
                return
            message = messages[sent]
            sent += 1
            await send(message)

    async def follow() -> None:
        last, progress_at = -1, time.monotonic()
        while len(snapshots) < 2 or done() < sent:
            check_alive()
            await meter.read()
            now = done()
            if not snapshots and now >= lead:
                snapshots.append(meter.snapshot(now))
            elif len(snapshots) == 1 and (
                now >= len(messages) - tail or time.perf_counter() - snapshots[0].at >= seconds
            ):
                snapshots.append(meter.snapshot(now))
                async with meter.changed:
                    meter.changed.notify_all()  # the senders stop
            if now != last:
                last, progress_at = now, time.monotonic()
            elif time.monotonic() - progress_at > stall:
                lnd = "" if meter.published is None else f", lnd published {sent - lnd_behind()}"
                raise BenchError(
                    f"no decision for {stall:.0f}s: {now} of {sent} sent messages decided{lnd}; "
                    f"the daemon's counters grew by {meter.growth()}"
                )
            await asyncio.sleep(every)

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(follow())
            for _ in range(in_flight):
                group.create_task(sender())
    except* BenchError as group_error:
        raise group_error.exceptions[0] from None
    if not lnd_alone and done() > sent:
        raise BenchError(f"{done()} decisions for {sent} messages sent")
    if lnd_behind() > 0:
        raise BenchError(f"lnd published {sent - lnd_behind()} of {sent} messages")
    start, end = snapshots
    return Driven(start, end, sent)


# One generation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    generations: tuple[Generation, ...] = (Generation.NATIVE, Generation.CUSTOM)
    cases: tuple[Case, ...] = (Case.REALISTIC, Case.WORST)
    warmup: int = 1000
    """Messages sent first, untimed; the second half of them estimates the rate."""
    seconds: float = 20.0
    """About how long the timed interval lasts, from the warm-up's rate."""
    lead: float = 2.0
    """Seconds' worth of messages decided before the timed interval (its lead-in)."""
    tail: float = 1.5
    """Seconds' worth of messages held back: if the built ones run short, the interval ends
    that many before the last, so that the load lasts to its end."""
    most: int = 40_000
    """Messages built for the timed interval at most, whatever the rate."""
    in_flight: int = 16
    window: int = 512
    lnd_window: int = 32
    offline: Mapping[Case, int] = field(
        default_factory=lambda: {Case.REALISTIC: 4, Case.WORST: 200}
    )
    """Offline allowed peers each case stores mail for."""
    sample: int = 40
    """Stored messages of each case peeled by their peers' keys afterwards."""


@dataclass(frozen=True)
class Generated:
    generation: Generation
    version: str
    rows: list[Row]
    network_seconds: float


def node_args(generation: Generation) -> dict[str, list[str]]:
    """Each lnd at ``info``; on 0.21 the LSP's ingress limits raised, and the recipient's
    lowered to the least lnd takes, so that it drops what the LSP forwards it before
    peeling: a phone's lnd is not on the LSP's machine, and peeling costs lnd 0.21 as much
    as relaying (several ms of CPU a message)."""
    args = {name: ["--debuglevel=info"] for name in ("sender", "lsp", "recipient")}
    if generation is Generation.NATIVE:
        args["lsp"].extend(RAISED_ONION_LIMITS)
        args["recipient"].extend(LEAST_ONION_LIMITS)
    return args


async def run_generation(
    config: Config, generation: Generation, workdir: Path, say: Callable[[str], None]
) -> Generated:
    binaries = ensure_chain()
    network = Network(binaries, generation, workdir / "net", node_args=node_args(generation))
    redis = RedisServer(
        workdir / "redis", persist=True, unix_socket=workdir / "redis" / "redis.sock"
    )
    started = time.monotonic()
    daemon: MailboxDaemon | None = None
    try:
        say(f"lnd {binaries.lnd[generation].version}: starting btcd and three lnds")
        await asyncio.to_thread(network.start)
        network_seconds = time.monotonic() - started
        version = str(network.lsp.getinfo()["version"])
        say(f"network up in {network_seconds:.0f}s ({network.timings}); LSP runs lnd {version}")
        await asyncio.to_thread(redis.start)
        store = Store.from_url(redis.url, network.lsp.pubkey)
        try:
            keys = {
                case: [onion.LocalNodeKey.generate() for _ in range(config.offline[case])]
                for case in config.cases
            }
            plans = {
                case: Plan(
                    case,
                    network.lsp.pubkey,
                    network.recipient.pubkey,
                    tuple(k.pubkey for k in keys[case]),
                )
                for case in config.cases
            }
            warm = {case: await build_all(plans[case], 0, config.warmup) for case in config.cases}
            await store.allowlist.add([k.pubkey for ks in keys.values() for k in ks])
            meter = Meter(
                store,
                {
                    "lsp": _pid(network.lsp.process.pid),
                    "sender": _pid(network.sender.process.pid),
                    "recipient": _pid(network.recipient.process.pid),
                    "btcd": _pid(network.btcd.process.pid),
                    "redis": int((await store.redis.info("server"))["process_id"]),
                },
            )
            rows: list[Row] = []
            async with network.sender.rpc() as rpc, network.lsp.rpc() as lsp_rpc:
                following = None
                if generation is Generation.NATIVE:
                    stream = lsp_rpc.lightning.SubscribeOnionMessages(
                        ln.SubscribeOnionMessagesRequest()
                    )
                    following = asyncio.create_task(meter.follow(stream))
                    await asyncio.sleep(0.5)  # lnd shows no sign of having subscribed
                try:
                    if following is not None:
                        # The baseline: what lnd sustains with no mailbox, the same messages.
                        for case in config.cases:
                            rows.append(
                                await _lnd_alone(config, network, meter, rpc, case, warm[case])
                            )
                            say(_said(rows[-1]))
                    daemon = MailboxDaemon(network, redis.url, workdir / "mailbox", MAILBOX_ARGS)
                    await asyncio.to_thread(daemon.start)
                    meter.pids["daemon"] = _pid(daemon.process.pid)
                    # Until then the daemon cannot tell that lnd found the recipient online,
                    # and keeps messages for it (rescued): not what this measures.
                    await asyncio.sleep(Settings().race_window + 1.0)
                    idle = await meter.idle(IDLE_SECONDS)
                    say(
                        "idle CPU: "
                        + ", ".join(f"{name} {share:.1%}" for name, share in idle.items())
                    )
                    for case in config.cases:
                        row = await _run_case(
                            config,
                            network,
                            meter,
                            rpc,
                            daemon,
                            plans[case],
                            keys[case],
                            warm[case],
                            say,
                        )
                        rows.append(replace(row, idle=idle))
                        say(_said(rows[-1]))
                finally:
                    if following is not None:
                        following.cancel()
                        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                            await following
        finally:
            await store.aclose()
        return Generated(generation, version, rows, network_seconds)
    finally:
        if daemon is not None:
            await asyncio.to_thread(daemon.stop)
        await asyncio.to_thread(redis.stop)
        await asyncio.to_thread(network.stop)


def _pid(pid: int | None) -> int:
    if pid is None:
        raise BenchError("a process of the run is not running")
    return pid


def _said(row: Row) -> str:
    what = f"{row.case.value}{' (lnd alone)' if row.lnd_alone else ''}"
    line = (
        f"{what}: {row.messages} messages in {row.seconds:.2f}s = {row.rate:.0f}/s "
        f"({row.ratio:.2f}x)"
    )
    if row.lnd_alone:
        return f"{line}, as lnd published them; no mailbox running"
    return (
        f"{line}, as the daemon decided them; outcomes of all {row.sent}: {row.outcomes}; "
        f"{row.checked} stored messages peeled to their payloads"
    )


def _sender(rpc: NodeRpc, network: Network) -> Callable[[OnionMessage], Awaitable[None]]:
    async def send(message: OnionMessage) -> None:
        await send_onion_message(rpc, network.generation, network.lsp.pubkey, message)

    return send


async def _lnd_alone(
    config: Config,
    network: Network,
    meter: Meter,
    rpc: NodeRpc,
    case: Case,
    messages: Sequence[OnionMessage],
) -> Row:
    """lnd 0.21 taking ``messages`` with no mailbox: timed by what it published."""
    timed = await drive(
        meter,
        _sender(rpc, network),
        messages,
        lead=len(messages) // 5,
        seconds=math.inf,
        tail=0,
        in_flight=config.in_flight,
        window=config.window,
        lnd_window=config.lnd_window,
        lnd_alone=True,
    )
    return Row(network.generation, case, timed.sent, timed.start, timed.end, {}, 0, lnd_alone=True)


async def _run_case(
    config: Config,
    network: Network,
    meter: Meter,
    rpc: NodeRpc,
    daemon: MailboxDaemon,
    plan: Plan,
    keys: Sequence[onion.LocalNodeKey],
    warm_messages: Sequence[OnionMessage],
    say: Callable[[str], None],
) -> Row:
    async def run(messages: Sequence[OnionMessage], lead: int, seconds: float, tail: int) -> Driven:
        return await drive(
            meter,
            _sender(rpc, network),
            messages,
            lead=lead,
            seconds=seconds,
            tail=tail,
            in_flight=config.in_flight,
            window=config.window,
            lnd_window=config.lnd_window,
            check_alive=daemon.check_alive,
        )

    await meter.begin()
    warm = await run(warm_messages, len(warm_messages) // 2, math.inf, 0)
    rate = (warm.end.count - warm.start.count) / (warm.end.at - warm.start.at)
    lead, tail = max(50, round(rate * config.lead)), max(50, round(rate * config.tail))
    # Enough for the timed interval at half again the warm-up's rate; fewer end it early.
    count = lead + max(200, min(config.most, round(rate * config.seconds * 1.5))) + tail
    started = time.monotonic()
    first = len(warm_messages)
    messages = await build_all(plan, first, first + count)
    say(
        f"{plan.case.value}: warm-up {first} messages at {rate:.0f}/s; built "
        f"{count} more in {time.monotonic() - started:.1f}s (not timed)"
    )
    timed = await run(messages, lead, config.seconds, tail)
    total = first + timed.sent
    outcomes = meter.growth()
    _check_outcomes(plan, network.generation, total, outcomes)
    checked = await _check_sample(plan, meter.store, {k.pubkey: k for k in keys}, config.sample)
    return Row(network.generation, plan.case, total, timed.start, timed.end, outcomes, checked)


def _check_outcomes(
    plan: Plan, generation: Generation, total: int, outcomes: Mapping[str, int]
) -> None:
    stored = sum(1 for i in range(total) if plan.is_stored(i))
    online = "left_to_lnd" if generation is Generation.NATIVE else "forwarded"
    want = {"stored": stored, online: total - stored}
    got = {name: outcomes.get(name, 0) for name in (*DECIDING, "rescued")}
    if dropped(outcomes) or {n: v for n, v in got.items() if v} != {
        n: v for n, v in want.items() if v
    }:
        raise BenchError(f"{plan.case.value}: outcomes {dict(outcomes)}, not {want}")


async def _check_sample(
    plan: Plan, store: Store, keys: Mapping[bytes, onion.LocalNodeKey], sample: int
) -> int:
    """Peels up to ``sample`` messages stored for the case's peers with their own keys."""
    checked = 0
    per_peer = max(1, sample // len(plan.offline))
    for peer in plan.offline:
        for message in (await store.queues.messages(peer))[:per_peer]:
            await check_stored(plan, keys[peer], OnionMessage(message.path_key, message.onion))
            checked += 1
    if sample and not checked:
        raise BenchError(f"{plan.case.value}: nothing stored to check")
    return checked


# The report -------------------------------------------------------------------------------

PROCESSES = ("daemon", "lsp", "sender", "recipient", "btcd", "redis", "bench")
"""Whose CPU per message the table shows: the daemon, each lnd, btcd, Redis, this process
(the sender's gRPC client)."""


def _us(value: float | None, width: int) -> str:
    return f"{value:{width}.0f}" if value is not None else f"{'-':>{width}}"


def table(results: Sequence[Generated]) -> list[str]:
    cpu_head = " ".join(f"{p:>9}" for p in PROCESSES)
    lines = [
        f"{'':58}{'CPU us per message':-^69}  {'daemon, idle taken out':-^22}",
        f"{'lnd':<12} {'case':<20} {'messages':>8} {'seconds':>7} {'msg/s':>6} {'x469':>6}"
        f" {cpu_head}  {'us/msg':>7} {'one core':>14}",
    ]
    for g in results:
        for r in g.rows:
            cpu = " ".join(_us(r.us_per_message(p), 9) for p in PROCESSES)
            net = r.us_net_of_idle("daemon")
            alone = f"{1e6 / net:.0f} msg/s" if net is not None and net > 0 else "-"
            what = f"{r.case.value}{', lnd alone' if r.lnd_alone else ''}"
            lines.append(
                f"{g.version.split()[0]:<12} {what:<20} {r.messages:>8} "
                f"{r.seconds:>7.2f} {r.rate:>6.0f} {r.ratio:>5.2f}x {cpu}  {_us(net, 7)} "
                f"{alone:>14}"
            )
    return lines


def verdicts(results: Sequence[Generated]) -> list[str]:
    lines = []
    for g in results:
        alone = {r.case: r for r in g.rows if r.lnd_alone}
        for r in g.rows:
            if r.lnd_alone:
                continue
            if r.case in alone:
                lines.append(
                    f"lnd {g.generation.value} {r.case.value}: with the mailbox "
                    f"{r.rate / alone[r.case].rate:.2f}x the rate lnd sustains alone"
                )
            if g.generation is Generation.NATIVE and r.case is Case.WORST:
                ok = "ok" if r.ratio >= WORST_TARGET else "MISSED"
                lines.append(
                    f"target: worst case on lnd {g.generation.value}, >= {WORST_TARGET:g}x "
                    f"lnd's ceiling on {len(os.sched_getaffinity(0))} cores: {r.ratio:.2f}x "
                    f"{ok} (daemon {_us(r.us_per_message('daemon'), 0)} us CPU/message)"
                )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lnd",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = Config()
    parser.add_argument(
        "--lnd",
        nargs="+",
        choices=[g.value for g in Generation],
        default=[g.value for g in defaults.generations],
        help="lnd generations to measure (default: both, 0.21 first)",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=[c.value for c in Case],
        default=[c.value for c in defaults.cases],
    )
    parser.add_argument(
        "--seconds", type=float, default=defaults.seconds, help="about how long each is timed"
    )
    parser.add_argument(
        "--warmup", type=int, default=defaults.warmup, help="untimed messages first"
    )
    parser.add_argument("--in-flight", type=int, default=defaults.in_flight)
    parser.add_argument("--window", type=int, default=defaults.window)
    parser.add_argument("--lnd-window", type=int, default=defaults.lnd_window)
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's directory (every log) after it"
    )
    args = parser.parse_args(argv)
    config = Config(
        generations=tuple(Generation(v) for v in args.lnd),
        cases=tuple(Case(v) for v in args.cases),
        seconds=args.seconds,
        warmup=args.warmup,
        in_flight=args.in_flight,
        window=args.window,
        lnd_window=args.lnd_window,
    )
    began = time.monotonic()
    print(f"lndmailbox ingest against real lnd, on {machine()}", flush=True)
    print(
        f"baseline: lnd's default global ceiling, {LND_CEILING_MSGS:.0f} msg/s "
        "(5120 kbps / 1366-byte packets); shared machines are noisy\n",
        flush=True,
    )
    results = []
    workdir = Path(tempfile.mkdtemp(prefix="lndmailbox-bench-lnd-"))
    failed = True
    try:
        for generation in config.generations:
            results.append(
                asyncio.run(
                    run_generation(
                        config,
                        generation,
                        workdir / generation.value,
                        say=lambda s: print(f"  {s}", flush=True),
                    )
                )
            )
        failed = False
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
    finally:
        if args.keep or failed:
            print(f"every log of the run is in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print("\n".join(table(results)))
    print("\n".join(verdicts(results)))
    print(f"(the whole run took {time.monotonic() - began:.0f}s)")
    return 1 if failed else 0


if __name__ == "__main__":
    # Through the module's own name, so the builder processes find ``build`` there.
    from bench.lnd import main as named_main

    sys.exit(named_main())
