"""The daemon's figures: sustained ingest, draining to a returning peer, Redis memory.

One world per lnd personality: simnet in its own process (:mod:`bench.simnet_process`,
so its gRPC serving and ECDH do not share the daemon's interpreter), a real Redis-protocol
server started the way the daemon's embedded mode runs it (unix socket, append-only file),
and the real daemon, :func:`lndmailbox.daemon.run`, in this process with
``--allow-channel-peers``. Peers: ``alice`` (the sender, online), ``carol`` (online: the
bare sends go to her), ``bob`` (offline: the drain) and ``r000``... (offline: ingest).

* Ingest: alice sends N messages for the offline recipients (round robin) as fast as
  simnet takes them; timed from the first send to the moment the daemon's ``stored``
  counter in Redis shows all N. Every message is peeled by the daemon with ECDH through
  simnet's Signer over gRPC, decided and written with the store's Lua script. The
  baseline is lnd's default global onion-message ceiling (5120 kbps: about 470 messages
  of 1366 bytes per second, see lnd-facts.md); simnet's own buckets are off.
* Signer (same run, before the daemon starts): DeriveSharedKey calls alone, 64 in
  flight, to fresh points: the round trips every peel makes to lnd (two per message with a
  fresh blinded path), with the CPU each side spends on one.
* Floor (same run, before the daemon starts): the same messages read from lnd's stream and
  peeled through simnet's signer with the daemon's concurrency, and nothing else. What
  ingest adds on top of it is the mailbox's own cost (deciding, Redis, reporting).
* Drain: M messages are queued for bob through the daemon while he is offline; bob
  connects and the time until simnet saw him receive all M is the figure. Baseline: M
  sequential ``LndClient.send_onion_message`` calls from this process to carol, with the
  same messages and the same transport, measured just before and just after the drain.
  Afterwards bob peels every message he received to its payload.
* Memory: ``MEMORY USAGE`` (every element sampled) of the peers' queue and dedup keys,
  divided by the messages they hold, against a message's size (33 + 1366 bytes); once
  for the ingest recipients' short queues and once for bob's long one.
* Realistic mix (after the drain, the daemon up for its race window): senders reuse a
  handful of blinded paths (``mix_paths``, one per recipient, as with offers and static
  invoices), 9 messages in 10 to online peers (``m-on..``: lnd 0.21 forwards them itself
  and the daemon leaves them to it; on the custom transport the daemon sends them) and 1
  in 10 to offline allowed peers (``m-off..``: stored). Timed from the first send until
  every message is decided (``stored`` + ``left_to_lnd`` + ``forwarded`` in Redis); then
  checked: exactly the offline ones stored and queued, the online ones decided as such,
  nothing dropped, lost or rescued, every online recipient received its messages from
  simnet and peels the last ones to their payloads. A failed check is printed with the
  figures (:attr:`Mix.problems`) and fails the bench. Baseline: lnd's ceiling, as ingest.
* Its floor, simnet alone (same run, before the daemon starts): the same messages taken,
  peeled and forwarded by simnet and published to a subscriber that only counts them.
  When the mix gets near it, simnet, not the daemon, is the bound.
* The mix with a hot standby (``standby``): a second daemon (its own process, the same
  Redis and node) stands by and journals every message meanwhile; fresh messages for
  fresh recipients (``s-on..``/``s-off..``), the same checks, and the standby must have
  read every one.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import pstats
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import coincurve
from simnet import Personality

from bench.simnet_process import SimnetProcess, build_messages
from bench.standby import StandbyDaemon
from lndmailbox.config import Settings
from lndmailbox.daemon import run as run_daemon
from lndmailbox.lnd import IncomingOnionMessage, LndClient, Transport, transport_for_version
from lndmailbox.onion import peel
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.store import RedisServer, Store

LND_CEILING_KBPS = 5120
PACKET_SIZE = 1366
MESSAGE_SIZE = 33 + PACKET_SIZE
LND_CEILING_MSGS = LND_CEILING_KBPS * 1000 / 8 / PACKET_SIZE  # about 469 messages/s

INGEST_TARGET = 3.0
MIX_TARGET = 5.0
"""On lnd 0.21 (the native transport), with simnet's signer, on 2 cores."""
DRAIN_TARGET = 1.2
MEMORY_TARGET = 1.25

MIX_OFFLINE_EVERY = 10
"""One message in this many goes to an offline peer in the realistic mix."""
MIX_PEELED = 10
"""Messages each online recipient of the mix peels after it (the last it received)."""
DECIDED = ("stored", "left_to_lnd", "forwarded")
"""The counters that tell a decided message of the mix."""
_TROUBLE = ("dropped", "lost", "rescued", "duplicate", "evicted")


@dataclass(frozen=True)
class Config:
    personality: Personality = Personality.LND_0_21
    messages: int = 5000
    signer_calls: int = 3000
    floor_messages: int = 2000
    """How many of the ingest messages also time the floor (before the daemon starts)."""
    warmup: int = 300
    recipients: int = 100
    drain: int = 1000
    redis_url: str | None = None
    """An existing Redis to use (it must be empty for this node); none: start one."""
    reuse_paths: bool = False
    """Messages to one recipient share its blinded path (so the path key repeats)."""
    mix: bool = True
    """Measure the realistic mix (and its floor, simnet alone)."""
    mix_paths: int = 20
    """Blinded paths in the mix, one per recipient; one in ten of them (at least one) to an
    offline peer."""
    standby: bool = False
    """Measure the mix again with a hot standby journaling (needs ``mix``)."""
    race_window: float = Settings.race_window
    """The daemon's ``--race-window``; on the native transport the mix starts that long
    (and a little) after the daemon, so that lnd is known to have found its online peers
    there."""
    profile: bool = False
    """cProfile this process (the daemon) during the timed ingest, the drain and the mix,
    and simnet during the ingest, the mix's floor and the mix; stats in the result."""
    timeout: float = 120.0


@dataclass(frozen=True)
class Cpu:
    """CPU seconds spent by each process during a timed phase."""

    daemon: float
    simnet: float
    redis: float
    standby: float = 0.0


@dataclass(frozen=True)
class Ingest:
    messages: int
    seconds: float
    inject_seconds: float
    cpu: Cpu
    outcomes: dict[str, int]
    counters: dict[str, int]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def ratio(self) -> float:
        return self.rate / LND_CEILING_MSGS


@dataclass(frozen=True)
class Phase:
    """A timed part of the run: ``count`` messages (or calls) in ``seconds``, and its CPU.

    Two are measured before the daemon starts: the signer (DeriveSharedKey calls alone:
    what a peel asks of lnd) and the floor (read lnd's stream and peel through its signer:
    the part of ingest the design fixes)."""

    count: int
    seconds: float
    cpu: Cpu

    @property
    def rate(self) -> float:
        return self.count / self.seconds


@dataclass(frozen=True)
class Drain:
    messages: int
    seconds: float
    bare_before: float
    bare_after: float
    bare_cpu: float
    """CPU seconds this process spent on the first round of bare sends."""
    received: int
    peeled: int
    distinct: int
    daemon_cpu: float

    @property
    def bare(self) -> float:
        return (self.bare_before + self.bare_after) / 2

    @property
    def ratio(self) -> float:
        return self.seconds / self.bare


@dataclass(frozen=True)
class Memory:
    queues: int
    messages: int
    queue_bytes: int
    dedup_bytes: int

    @property
    def what(self) -> str:
        if self.queues == 1:
            return f"1 queue of {self.messages}"
        return f"{self.queues} queues of ~{round(self.messages / self.queues)}"

    @property
    def per_message(self) -> float:
        return (self.queue_bytes + self.dedup_bytes) / self.messages

    @property
    def ratio(self) -> float:
        return self.per_message / MESSAGE_SIZE


@dataclass(frozen=True)
class MixPlan:
    """Who gets each message of a mix set: ``sequence[i]`` is message i's recipient."""

    key: str
    online: tuple[str, ...]
    offline: tuple[str, ...]
    sequence: tuple[str, ...]

    def offline_in(self, start: int, stop: int) -> int:
        """Messages of ``[start:stop]`` that go to an offline peer."""
        offline = set(self.offline)
        return sum(1 for name in self.sequence[start:stop] if name in offline)

    @property
    def most_per_offline_peer(self) -> int:
        return max((self.sequence.count(name) for name in self.offline), default=0)


def mix_plan(key: str, tag: str, paths: int, count: int) -> MixPlan:
    """``count`` messages over ``paths`` recipients (one blinded path each): every
    :data:`MIX_OFFLINE_EVERY`-th to one of the offline ones, the rest to the online ones,
    round robin in each group. Recipients are named ``<tag>-on00``, ``<tag>-off00``..."""
    n_offline = max(1, paths // MIX_OFFLINE_EVERY)
    n_online = max(1, paths - n_offline)
    online = tuple(f"{tag}-on{i:02d}" for i in range(n_online))
    offline = tuple(f"{tag}-off{i:02d}" for i in range(n_offline))
    sequence = []
    for i in range(count):
        offline_index, rest = divmod(i, MIX_OFFLINE_EVERY)
        if rest == MIX_OFFLINE_EVERY - 1:
            sequence.append(offline[offline_index % n_offline])
        else:
            sequence.append(online[(i - offline_index) % n_online])
    return MixPlan(key, online, offline, tuple(sequence))


@dataclass(frozen=True)
class Mix:
    """The realistic mix with the daemon running: the timed part, decided and checked."""

    standby: bool
    paths: int
    messages: int
    online: int
    """Of them, to online peers (left to lnd on 0.21; sent by the daemon on 0.20)."""
    offline: int
    """Of them, to offline allowed peers (stored)."""
    seconds: float
    inject_seconds: float
    cpu: Cpu
    outcomes: dict[str, int]
    """What simnet did with the timed messages."""
    decided: dict[str, int]
    """The counters the timed part moved (stored, left_to_lnd or forwarded, received)."""
    received: int
    """Onion messages the online recipients received during the timed part."""
    queued: int
    """Messages in the offline recipients' queues afterwards (warm-up and timed part)."""
    peeled: int
    checked: int
    standby_read: int = 0
    """Messages the standby read from lnd's stream (journaled or skipped as decided)."""
    problems: tuple[str, ...] = ()
    """The checks that failed (the figures are printed all the same; the bench fails)."""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def ratio(self) -> float:
        return self.rate / LND_CEILING_MSGS


@dataclass(frozen=True)
class Figures:
    personality: Personality
    transport: Transport
    build_seconds: float
    signer: Phase
    floor: Phase
    ingest: Ingest
    drain: Drain
    memory: tuple[Memory, ...]
    alone: Phase | None = None
    """The mix's floor: simnet alone (take, peel, forward, publish to a bare reader)."""
    mixes: tuple[Mix, ...] = ()
    profile: str = ""


async def _wait_for(
    check: Callable[[], object], *, within: float, what: str, every: float = 0.02
) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def _redis(url: str | None, workdir: Path) -> AsyncIterator[tuple[str, RedisServer | None]]:
    if url is not None:
        yield url, None
        return
    server = RedisServer(
        workdir / "redis", persist=True, unix_socket=workdir / "redis" / "redis.sock"
    )
    await asyncio.to_thread(server.start)
    try:
        yield server.url, server
    finally:
        await asyncio.to_thread(server.stop)


async def _redis_cpu(store: Store) -> float:
    info = await store.redis.info("cpu")
    return float(info.get("used_cpu_user", 0.0)) + float(info.get("used_cpu_sys", 0.0))


async def _cpu(sim: SimnetProcess, store: Store) -> tuple[float, float, float]:
    return time.process_time(), await sim.cpu(), await _redis_cpu(store)


async def _stored(store: Store) -> int:
    return (await store.events.counters()).get("stored", 0)


def _decided(counters: dict[str, int]) -> int:
    return sum(counters.get(name, 0) for name in DECIDED)


async def run(config: Config, *, say: Callable[[str], None] = print) -> Figures:
    """Runs the mailbox figures for one personality; ``say`` gets progress lines."""
    with tempfile.TemporaryDirectory(prefix="lndmailbox-bench-") as tmp:
        workdir = Path(tmp)
        async with (
            _redis(config.redis_url, workdir) as (redis_url, _),
            SimnetProcess(config.personality) as sim,
        ):
            return await _run(config, sim, redis_url, workdir, say)


@dataclass(frozen=True)
class _Set:
    """Messages to build before anything is timed: ``recipients[i]`` gets message i."""

    key: str
    recipients: tuple[str, ...]
    reuse_paths: bool


async def _build(sim: SimnetProcess, keys: dict[str, bytes], sets: list[_Set]) -> None:
    """Builds every set, half of each in simnet's process and half in this one at once
    (labels ``<key>`` and ``<key>-2``: every payload differs), and keeps them in simnet."""

    async def there() -> None:
        for s in sets:
            half = len(s.recipients) // 2
            await sim.build(s.key, s.recipients[:half], half, reuse_paths=s.reuse_paths)

    def here() -> list[list[OnionMessage]]:
        out = []
        for s in sets:
            rest = s.recipients[len(s.recipients) // 2 :]
            pubkeys = [keys[name] for name in rest]
            out.append(
                build_messages(
                    sim.pubkey, pubkeys, len(rest), f"{s.key}-2", reuse_paths=s.reuse_paths
                )
            )
        return out

    building = asyncio.ensure_future(there())
    built_here = await asyncio.to_thread(here)
    await building
    for s, messages in zip(sets, built_here, strict=True):
        if await sim.load(s.key, messages, append=True) != len(s.recipients):
            raise RuntimeError(f"bench: the {s.key} set was not built")


async def _run(
    config: Config,
    sim: SimnetProcess,
    redis_url: str,
    workdir: Path,
    say: Callable[[str], None],
) -> Figures:
    transport = transport_for_version(sim.version)
    say(
        f"simnet lnd {config.personality.release} in process {sim.pid} "
        f"({transport.value} transport); Redis at {redis_url}"
    )
    recipients = [f"r{i:03d}" for i in range(config.recipients)]
    ingest_total = config.warmup + config.messages
    mixes = []
    if config.mix:
        mixes.append(mix_plan("mix", "m", config.mix_paths, ingest_total))
        if config.standby:
            mixes.append(mix_plan("mix-standby", "s", config.mix_paths, ingest_total))
    mix_peers = [name for plan in mixes for name in (*plan.online, *plan.offline)]
    keys = await sim.add_peers(["alice", "carol", "bob", *recipients, *mix_peers])
    # Online from the start: lnd finds them there long before any mix message comes.
    for name in ["alice", "carol", *(n for plan in mixes for n in plan.online)]:
        await sim.connect(name)

    # Every message is built before anything is timed.
    started = time.perf_counter()
    sets = [
        _Set(
            "ingest",
            tuple(recipients[i % len(recipients)] for i in range(ingest_total)),
            config.reuse_paths,
        ),
        _Set("drain", ("bob",) * config.drain, config.reuse_paths),
        *(_Set(plan.key, plan.sequence, True) for plan in mixes),
    ]
    await _build(sim, keys, sets)
    build_seconds = time.perf_counter() - started
    say(
        f"built {sum(len(s.recipients) for s in sets)} onion messages "
        f"in {build_seconds:.1f}s (not timed)"
    )

    signer = await _signer(config, sim, say)
    floor = await _floor(config, sim, transport, say)
    alone: Phase | None = None
    alone_profile = ""
    if mixes:
        alone, alone_profile = await _simnet_alone(config, sim, transport, mixes[0], say)

    per_peer = max(64, config.drain, *(plan.most_per_offline_peer for plan in mixes))
    settings = Settings(
        rpcserver=sim.target,
        tlscert=sim.tls_cert.decode(),
        macaroon=sim.macaroon.hex(),
        network="regtest",
        redis_url=redis_url,
        datadir=workdir / "mailbox",
        allow_channel_peers=True,
        max_messages_per_peer=per_peer,
        max_bytes_per_peer=max(256 * 1024, per_peer * MESSAGE_SIZE),
        race_window=config.race_window,
    )
    store = Store.from_url(redis_url, sim.pubkey)
    stop = asyncio.Event()
    daemon = asyncio.create_task(run_daemon(settings, stop=stop), name="daemon")
    try:
        streams = _streams(transport)
        await sim.wait_subscribers(streams, within=config.timeout)

        async def locked() -> bool:
            if daemon.done():
                daemon.result()
            return await store.control.lock_owner() is not None

        await _wait_for(locked, within=config.timeout, what="the daemon's lock")
        ready_at = time.monotonic()

        ingest, profile = await _ingest(config, sim, store, daemon, say)
        short = await _memory(store, [keys[r] for r in recipients])
        drain, long, drain_profile = await _drain(config, sim, store, transport, keys, daemon, say)
        profile += drain_profile + alone_profile
        mixed: list[Mix] = []
        if mixes:
            if transport is Transport.NATIVE and config.race_window > 0:
                # The daemon saw the mix's online peers come at its start: a message that
                # arrives within the race window of that is kept (rescued), not left to
                # lnd. The margin is for the reader's quiet mark, a fraction of a second
                # old when idle; 0.5 s once proved too little on a loaded machine.
                wait = ready_at + config.race_window + 1.5 - time.monotonic()
                await asyncio.sleep(max(0.0, wait))
            mix, mix_profile = await _mix(
                config, sim, store, transport, daemon, mixes[0], keys, None, say
            )
            mixed.append(mix)
            profile += mix_profile
        if len(mixes) > 1:
            standby = StandbyDaemon(
                rpcserver=sim.target,
                tls_cert=sim.tls_cert,
                macaroon=sim.macaroon,
                redis_url=redis_url,
                workdir=workdir / "standby",
                extra=("--race-window", f"{config.race_window}s"),
            )
            try:
                await standby.start(store, within=config.timeout)
                await sim.wait_subscribers(streams[1:], count=2, within=config.timeout)
                say(f"standby: a second daemon in process {standby.pid} stands by")
                mix, mix_profile = await _mix(
                    config, sim, store, transport, daemon, mixes[1], keys, standby, say
                )
            finally:
                code = await standby.stop()
            if code != 0:
                raise RuntimeError(f"bench: the standby exited {code}:\n{standby.log()[-4000:]}")
            mixed.append(mix)
            profile += mix_profile
        return Figures(
            personality=config.personality,
            transport=transport,
            build_seconds=build_seconds,
            signer=signer,
            floor=floor,
            ingest=ingest,
            drain=drain,
            memory=(short, long),
            alone=alone,
            mixes=tuple(mixed),
            profile=profile,
        )
    finally:
        stop.set()
        try:
            await asyncio.wait_for(daemon, 30)
        finally:
            await store.aclose()


def _streams(transport: Transport) -> list[str]:
    """simnet's streams the daemon follows: peer events, then onion messages."""
    if transport is Transport.NATIVE:
        return ["peer_events", "onion_messages"]
    return ["peer_events", "custom_messages"]


def _check_alive(daemon: asyncio.Task[None]) -> None:
    if daemon.done():
        daemon.result()
        raise RuntimeError("bench: the daemon stopped")


async def _until_stored(
    store: Store, daemon: asyncio.Task[None], count: int, *, within: float, what: str
) -> None:
    async def done() -> bool:
        _check_alive(daemon)
        return await _stored(store) >= count

    await _wait_for(done, within=within, what=what)


async def _signer(config: Config, sim: SimnetProcess, say: Callable[[str], None]) -> Phase:
    points = [coincurve.PrivateKey().public_key.format() for _ in range(config.signer_calls)]
    in_flight = asyncio.Semaphore(64)
    async with LndClient(sim.endpoint) as lnd:

        async def one(point: bytes) -> None:
            async with in_flight:
                await lnd.derive_shared_key(point)

        await asyncio.gather(*(one(p) for p in points[:200]))  # warm-up
        cpu0 = time.process_time(), await sim.cpu()
        started = time.perf_counter()
        await asyncio.gather(*(one(p) for p in points))
        seconds = time.perf_counter() - started
        cpu1 = time.process_time(), await sim.cpu()
    signer = Phase(len(points), seconds, Cpu(cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], 0.0))
    say(
        f"signer: {signer.count} DeriveSharedKey calls, 64 in flight, in {seconds:.2f}s = "
        f"{signer.rate:.0f}/s; CPU per call here {signer.cpu.daemon / signer.count * 1e6:.0f} us,"
        f" simnet {signer.cpu.simnet / signer.count * 1e6:.0f} us"
    )
    return signer


async def _floor(
    config: Config, sim: SimnetProcess, transport: Transport, say: Callable[[str], None]
) -> Phase:
    """Messages per second that only follow lnd's stream and peel through its signer.

    The daemon's own concurrency (64 messages in flight), no decision and no Redis: what
    is left of ingest with the mailbox taken out. Uses the ingest messages (simnet does not
    mind seeing them twice) before the daemon runs.
    """
    count = min(config.floor_messages, config.messages)
    warm = min(config.warmup, 100)
    peeled = 0
    wanted = asyncio.Event()
    target = warm
    async with LndClient(sim.endpoint) as lnd:
        node_key = lnd.node_key()
        stream = lnd.onion_messages(transport)
        await stream.wait_subscribed()
        queue: asyncio.Queue[IncomingOnionMessage] = asyncio.Queue(maxsize=256)

        async def read() -> None:
            async for item in stream:
                if isinstance(item, IncomingOnionMessage):
                    await queue.put(item)

        async def work() -> None:
            nonlocal peeled
            while True:
                message = await queue.get()
                await peel(message.path_key, message.onion, node_key)
                peeled += 1
                if peeled >= target:
                    wanted.set()

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(read()), *(group.create_task(work()) for _ in range(64))]
            try:
                async with asyncio.timeout(config.timeout):
                    await sim.inject("ingest", "alice", 0, warm)
                    await wanted.wait()
                    wanted.clear()
                    target = warm + count
                    cpu0 = time.process_time(), await sim.cpu()
                    started = time.perf_counter()
                    injecting = asyncio.ensure_future(
                        sim.inject("ingest", "alice", config.warmup, config.warmup + count)
                    )
                    await wanted.wait()
                    seconds = time.perf_counter() - started
                    await injecting
                    cpu1 = time.process_time(), await sim.cpu()
            finally:
                for task in tasks:
                    task.cancel()
        await stream.aclose()
    floor = Phase(count, seconds, Cpu(cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], 0.0))
    say(
        f"floor: {count} messages read from the stream and peeled through simnet's signer "
        f"(nothing else) in {seconds:.2f}s = {floor.rate:.0f}/s; CPU here "
        f"{floor.cpu.daemon:.2f}s, simnet {floor.cpu.simnet:.2f}s"
    )
    return floor


async def _ingest(
    config: Config,
    sim: SimnetProcess,
    store: Store,
    daemon: asyncio.Task[None],
    say: Callable[[str], None],
) -> tuple[Ingest, str]:
    # Warm-up (connections, Redis script cache, channel map, interpreter caches) with the
    # first messages of the set, then the timed part with the rest.
    if config.warmup:
        await sim.inject("ingest", "alice", 0, config.warmup)
    await _until_stored(store, daemon, config.warmup, within=config.timeout, what="the warm-up")
    before = await _stored(store)

    profiler = cProfile.Profile() if config.profile else None
    if profiler is not None:
        await sim.profile_start()
    cpu0 = await _cpu(sim, store)
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    injecting = asyncio.ensure_future(
        sim.inject("ingest", "alice", config.warmup, config.warmup + config.messages)
    )
    try:
        await _until_stored(
            store,
            daemon,
            before + config.messages,
            within=config.timeout,
            what=f"{config.messages} messages to be stored",
        )
        seconds = time.perf_counter() - started
    finally:
        if profiler is not None:
            profiler.disable()
        injected = await injecting
    cpu1 = await _cpu(sim, store)
    ingest = Ingest(
        messages=config.messages,
        seconds=seconds,
        inject_seconds=injected.seconds,
        cpu=Cpu(cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], cpu1[2] - cpu0[2]),
        outcomes=injected.outcomes,
        counters=await store.events.counters(),
    )
    say(
        f"ingest: {ingest.messages} messages stored in {seconds:.2f}s = {ingest.rate:.0f}/s "
        f"(simnet took them in {ingest.inject_seconds:.2f}s); CPU during it: daemon "
        f"{ingest.cpu.daemon:.2f}s, simnet {ingest.cpu.simnet:.2f}s, Redis {ingest.cpu.redis:.2f}s"
    )
    profile = ""
    if profiler is not None:
        profile = _profile_text(profiler, "daemon process, during ingest")
        profile += f"simnet process, during ingest:\n{await sim.profile_stop(40)}\n"
    return ingest, profile


def _profile_text(profiler: cProfile.Profile, title: str) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    return f"{title}:\n{out.getvalue()}\n"


async def _memory(store: Store, peers: list[bytes]) -> Memory:
    """MEMORY USAGE (all elements sampled) of the peers' queue and dedup keys."""
    messages = queue_bytes = dedup_bytes = 0
    for peer in peers:
        messages += int(await store.redis.llen(store.keys.queue_key(peer)))
        queue_bytes += int(
            await store.redis.memory_usage(store.keys.queue_key(peer), samples=0) or 0
        )
        dedup_bytes += int(
            await store.redis.memory_usage(store.keys.dedup_key(peer), samples=0) or 0
        )
    return Memory(len(peers), messages, queue_bytes, dedup_bytes)


async def _bare_sends(
    lnd: LndClient, transport: Transport, peer: bytes, messages: list[OnionMessage]
) -> float:
    """Seconds for ``messages`` sent one after another to ``peer``, as the deliverer does."""
    started = time.perf_counter()
    for message in messages:
        await lnd.send_onion_message(transport, peer, message.path_key, message.onion)
    return time.perf_counter() - started


async def _drain(
    config: Config,
    sim: SimnetProcess,
    store: Store,
    transport: Transport,
    keys: dict[str, bytes],
    daemon: asyncio.Task[None],
    say: Callable[[str], None],
) -> tuple[Drain, Memory, str]:
    bob, carol = keys["bob"], keys["carol"]
    before = await _stored(store)
    await sim.inject("drain", "alice")
    await _until_stored(
        store,
        daemon,
        before + config.drain,
        within=config.timeout,
        what=f"{config.drain} messages queued for bob",
    )
    memory = await _memory(store, [bob])
    # The bare sends carry exactly what the deliverer will send bob: the queued messages.
    queued = [OnionMessage(m.path_key, m.onion) for m in await store.queues.messages(bob)]
    if len(queued) != config.drain:
        raise RuntimeError(f"bench: {len(queued)} messages queued for bob, not {config.drain}")

    async def bob_emptied() -> bool:
        _check_alive(daemon)
        return int(await store.redis.llen(store.keys.queue_key(bob))) == 0

    async with LndClient(sim.endpoint) as lnd:
        await _bare_sends(lnd, transport, carol, queued[:50])  # warm-up
        cpu_before = time.process_time()
        bare_before = await _bare_sends(lnd, transport, carol, queued)
        bare_cpu = time.process_time() - cpu_before
        profiler = cProfile.Profile() if config.profile else None
        cpu_before = time.process_time()
        if profiler is not None:
            profiler.enable()
        try:
            seconds, _ = await sim.wait_received(
                "bob", config.drain, within=config.timeout, connect=True
            )
        finally:
            if profiler is not None:
                profiler.disable()
        daemon_cpu = time.process_time() - cpu_before
        await _wait_for(bob_emptied, within=config.timeout, what="bob's queue to empty")
        bare_after = await _bare_sends(lnd, transport, carol, queued)
    received, peeled, distinct = await sim.peel_check("bob")
    drain = Drain(
        messages=config.drain,
        seconds=seconds,
        bare_before=bare_before,
        bare_after=bare_after,
        bare_cpu=bare_cpu,
        received=received,
        peeled=peeled,
        distinct=distinct,
        daemon_cpu=daemon_cpu,
    )
    say(
        f"drain: {drain.messages} messages to bob in {drain.seconds:.3f}s; bare sends "
        f"{drain.bare_before:.3f}s before and {drain.bare_after:.3f}s after; bob peeled "
        f"{peeled} of {received} to their payloads ({distinct} distinct)"
    )
    profile = (
        "" if profiler is None else _profile_text(profiler, "daemon process, during the drain")
    )
    return drain, memory, profile


async def _simnet_alone(
    config: Config,
    sim: SimnetProcess,
    transport: Transport,
    plan: MixPlan,
    say: Callable[[str], None],
) -> tuple[Phase, str]:
    """The mix's floor: simnet takes the mix (on 0.21: peels, forwards to the online
    peers, publishes) while a subscriber here only counts what it publishes.

    Before the daemon starts; the recipients receive these copies too (the mix counts
    from what they hold when it starts)."""
    count, warm = config.messages, config.warmup
    seen = 0
    wanted = asyncio.Event()
    target = warm
    profile = ""
    async with LndClient(sim.endpoint) as lnd:
        stream = lnd.onion_messages(transport)
        await stream.wait_subscribed()

        async def read() -> None:
            nonlocal seen
            async for item in stream:
                if isinstance(item, IncomingOnionMessage):
                    seen += 1
                    if seen >= target:
                        wanted.set()

        reader = asyncio.create_task(read())
        try:
            async with asyncio.timeout(config.timeout):
                if warm:
                    await sim.inject(plan.key, "alice", 0, warm)
                    await wanted.wait()
                wanted.clear()
                target = warm + count
                if config.profile:
                    await sim.profile_start()
                cpu0 = time.process_time(), await sim.cpu()
                started = time.perf_counter()
                injecting = asyncio.ensure_future(sim.inject(plan.key, "alice", warm, warm + count))
                await wanted.wait()
                seconds = time.perf_counter() - started
                await injecting
                cpu1 = time.process_time(), await sim.cpu()
                if config.profile:
                    profile = f"simnet process, alone with the mix:\n{await sim.profile_stop(40)}\n"
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await stream.aclose()
    alone = Phase(count, seconds, Cpu(cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], 0.0))
    say(
        f"simnet alone: {count} mix messages taken and published to a bare reader in "
        f"{seconds:.2f}s = {alone.rate:.0f}/s; CPU here {alone.cpu.daemon:.2f}s, simnet "
        f"{alone.cpu.simnet:.2f}s"
    )
    return alone, profile


async def _mix(
    config: Config,
    sim: SimnetProcess,
    store: Store,
    transport: Transport,
    daemon: asyncio.Task[None],
    plan: MixPlan,
    keys: dict[str, bytes],
    standby: StandbyDaemon | None,
    say: Callable[[str], None],
) -> tuple[Mix, str]:
    """The realistic mix through the daemon: warm-up, then the timed part until every
    message is decided; then the checks (see the module docstring), whose failures go in
    :attr:`Mix.problems`."""
    warm, count = config.warmup, config.messages
    what = "the mix with a standby" if standby is not None else "the mix"

    def alive() -> None:
        _check_alive(daemon)
        if standby is not None:
            standby.check_alive()

    async def until_decided(count: int, since: dict[str, int]) -> None:
        async def done() -> bool:
            alive()
            return _decided(await store.events.counters()) - _decided(since) >= count

        await _wait_for(done, within=config.timeout, what=f"{count} messages of {what} decided")

    start_counters = await store.events.counters()
    if warm:
        await sim.inject(plan.key, "alice", 0, warm)
        await until_decided(warm, start_counters)
    before = await store.events.counters()
    received_before = await sim.received_counts(plan.online)

    def standby_cpu() -> float:
        return standby.cpu() if standby is not None else 0.0

    profiler = cProfile.Profile() if config.profile else None
    if profiler is not None:
        await sim.profile_start()
    cpu0, standby0 = await _cpu(sim, store), standby_cpu()
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    injecting = asyncio.ensure_future(sim.inject(plan.key, "alice", warm, warm + count))
    try:
        await until_decided(count, before)
        seconds = time.perf_counter() - started
    finally:
        if profiler is not None:
            profiler.disable()
        injected = await injecting
    cpu1, standby1 = await _cpu(sim, store), standby_cpu()
    after = await store.events.counters()

    # The checks, none timed.
    offline = plan.offline_in(warm, warm + count)
    online = count - offline
    decided = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    decided = {k: v for k, v in decided.items() if v}
    problems = []
    if decided.get("stored", 0) != offline:
        problems.append(f"{decided.get('stored', 0)} stored, not {offline}")
    to_online = decided.get("left_to_lnd", 0) + decided.get("forwarded", 0)
    if to_online != online:
        problems.append(f"{to_online} left to lnd or forwarded, not {online}")
    trouble = {k: v for k, v in decided.items() if k.startswith(_TROUBLE)}
    if trouble:
        problems.append(f"unexpected outcomes {trouble}")
    if transport is Transport.NATIVE:
        expected = {"ok": online, "next_hop_offline": offline}
        if injected.outcomes != {k: v for k, v in expected.items() if v}:
            problems.append(f"simnet's outcomes {injected.outcomes}, not {expected}")

    async def received_since() -> dict[str, int]:
        now = await sim.received_counts(plan.online)
        return {name: now[name] - received_before[name] for name in plan.online}

    async def all_received() -> bool:
        return sum((await received_since()).values()) >= online

    with contextlib.suppress(TimeoutError):
        await _wait_for(all_received, within=5.0, what="the online recipients' messages")
    received_by = await received_since()
    received = sum(received_by.values())
    if received != online:
        problems.append(f"the online recipients received {received}, not {online}")
    queued = 0
    for name in plan.offline:
        queued += int(await store.redis.llen(store.keys.queue_key(keys[name])))
    if queued != (kept := plan.offline_in(0, warm + count)):
        problems.append(f"{queued} queued for the offline peers, not {kept}")
    peeled = checked = 0
    for name in plan.online:
        # Only what came during the timed part (simnet alone forwarded the same before).
        check = await sim.peel_last(name, min(MIX_PEELED, received_by[name]))
        checked += check.checked
        peeled += min(check.peeled, check.distinct)
    if peeled != checked:
        problems.append(f"online recipients peeled {peeled} of {checked} to distinct payloads")
    standby_read = 0
    if standby is not None:
        standby_read = await standby.journaled()
        # It started after the first mix: its stream saw this whole set, warm-up and all.
        if standby_read < warm + count:
            problems.append(f"the standby read {standby_read} messages, not {warm + count}")
    for problem in problems:
        say(f"{what}: CHECK FAILED: {problem}")

    mix = Mix(
        standby=standby is not None,
        paths=len(plan.online) + len(plan.offline),
        messages=count,
        online=online,
        offline=offline,
        seconds=seconds,
        inject_seconds=injected.seconds,
        cpu=Cpu(cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], cpu1[2] - cpu0[2], standby1 - standby0),
        outcomes=injected.outcomes,
        decided=decided,
        received=received,
        queued=queued,
        peeled=peeled,
        checked=checked,
        standby_read=standby_read,
        problems=tuple(problems),
    )
    standby_part = f", standby {mix.cpu.standby:.2f}s" if standby is not None else ""
    say(
        f"{what}: {count} messages decided in {seconds:.2f}s = {mix.rate:.0f}/s "
        f"({offline} stored, {online} to online peers; simnet took them in "
        f"{mix.inject_seconds:.2f}s); CPU during it: daemon {mix.cpu.daemon:.2f}s, simnet "
        f"{mix.cpu.simnet:.2f}s, Redis {mix.cpu.redis:.2f}s{standby_part}"
    )
    profile = ""
    if profiler is not None:
        profile = _profile_text(profiler, f"daemon process, during {what}")
        profile += f"simnet process, during {what}:\n{await sim.profile_stop(40)}\n"
    return mix, profile
