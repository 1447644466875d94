"""The mailbox at size: 100,000 messages queued over 10,000 peers, against an empty store.

Two real Redis-protocol servers run side by side, both as the daemon's embedded mode runs
them (unix socket, append-only file): one stays empty, the other is filled through the
store's own API (:meth:`Queues.put_many`, 64 messages of 1,399 bytes a call, a few calls in
flight) with ``peers`` peers of ``messages / peers`` messages each. Every fifth peer has two
messages lnd took (unconfirmed), and every tenth peer's mail lives 10 minutes (due at the
sweep below); the rest lives the default 24 hours.

* Store and deliver: a fixed workload on ``workload_peers`` fresh peers, the same on both
  servers, in alternating rounds (so the machine's noise falls on both): every message put
  alone (one ``put_many`` each, as the daemon writes a lone message), then each peer drained
  as the deliverer drains (``peek`` 16, ``move_delivered`` those 16) and confirmed. The
  figure is the wall time per message, full over empty, the median of the rounds; a delivery
  batch is one ``peek`` + ``move_delivered`` of 16, its median wall time the bound below.
* At size, on the full server: ``mailboxctl peers`` and ``mailboxctl status`` (the real
  command in its own process, lnd unreachable, ``--node`` given), the real daemon's
  start-up (``python -m lndmailbox`` on simnet, timed from the spawn until it leads and
  until it has put every unconfirmed message back in its queue, then stopped), and the
  sweep of the due peers (:meth:`Queues.sweep_expired`, as the sweeper calls it). Each is
  timed against the same on the empty server, and Redis's SLOWLOG
  (``slowlog-log-slower-than 0``; a script's own commands are logged too) gives every call
  it made: the heaviest kind of call (the largest median) must stay below a delivery
  batch, and a call that reads the whole mail index or every peer's usage (``ZRANGE 0
  -1``, ``ZRANGEBYSCORE`` without ``LIMIT``, ``HGETALL`` of ``usage``) or names more keys
  than a page of peers does is reported as a whole read and fails the check. The longest
  single run is printed too: on a shared machine one run may be descheduled mid-call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import coincurve
from simnet import Personality, generate_tls_pair

from bench.simnet_process import SimnetProcess
from lndmailbox.store import NewMessage, RedisServer, Store, free_port, lua

SIZE_TARGET = 1.2
PACKET_SIZE = 1366
BATCH = 16
"""Messages the deliverer moves in one call (lndmailbox/daemon/deliverer.py)."""
FILL_BATCH = 64
"""Messages one put carries when the daemon is busy (its store writer's largest batch)."""
SHORT_TTL = 600.0
BASE = 1_800_000_000.0
"""The fill's clock (Unix seconds): the store takes ``now`` from its caller."""


@dataclass(frozen=True)
class Config:
    messages: int = 100_000
    peers: int = 10_000
    workload_peers: int = 10
    workload_messages: int = 1_000
    rounds: int = 15
    seed: int | None = None


@dataclass(frozen=True)
class Call:
    """One Redis call from SLOWLOG: how long it ran in Redis (us) and what it was."""

    micros: int
    command: str
    args: int


@dataclass(frozen=True)
class Phase:
    """One operation at size: wall seconds, the Redis calls it made, the longest of them,
    and its heaviest kind of call (the median of each kind's runs, the largest: a single
    run on a shared machine may be descheduled mid-call, which says nothing of the call)."""

    what: str
    seconds: float
    calls: int
    longest: Call
    heaviest: Call
    whole_reads: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class Figures:
    config: Config
    seed: int
    fill_seconds: float
    empty_per_message: list[float]
    full_per_message: list[float]
    batch_seconds: float
    """A delivery batch's median wall time (peek + move_delivered of 16), full store."""

    batch_redis: Call
    """The longest ``delivered`` script of 16 on the full store, as SLOWLOG saw it."""
    phases: list[Phase]
    problems: tuple[str, ...] = field(default=())

    @property
    def ratio(self) -> float:
        return statistics.median(self.full_per_message) / statistics.median(self.empty_per_message)


_NONE = Call(0, "-", 0)


def _sha(name: lua.Script) -> str:
    return hashlib.sha1(lua.program(name).encode()).hexdigest()


_SCRIPT_NAMES = {_sha(name): name for name in lua.SCRIPTS}


def _calls(raw: Sequence[object]) -> list[Call]:
    out = []
    for entry in raw:
        assert isinstance(entry, list)
        micros, words = int(entry[2]), [bytes(w) for w in entry[3]]
        args = len(words)
        if words and words[-1].startswith(b"... ("):
            args += int(words[-1].split()[1].lstrip(b"(")) - 1
        text = [w.decode(errors="replace") for w in words[:4]]
        if text and text[0].upper() == "EVALSHA" and len(text) > 1:
            text[1] = _SCRIPT_NAMES.get(text[1], text[1][:8])
        out.append(Call(micros, " ".join(" ".join(text).split()), args))
    return out


class _Slowlog:
    """Every call the server ran between :meth:`reset` and :meth:`read`."""

    def __init__(self, store: Store) -> None:
        self.redis = store.redis
        self.mail_key = store.keys.mail_key
        self.mark = -1
        # Raw replies, not slowlog_get(): that joins each call's arguments with spaces,
        # and the records' bytes hold spaces too, so the arguments could not be counted.
        self.command: Any = self.redis.execute_command

    async def setup(self) -> None:
        await self.redis.config_set("slowlog-log-slower-than", 0)
        await self.redis.config_set("slowlog-max-len", 1_000_000)

    async def reset(self) -> None:
        await self.redis.slowlog_reset()
        # The first call after the reset of a long log runs for milliseconds (measured
        # here: 4 to 9 ms after 20,000 entries, 50 to 90 ms after 70,000), whatever the
        # call: the log's cost, not the call's. A read of our own takes it, left out.
        await self.redis.zrangebyscore(self.mail_key, "-inf", "+inf", start=0, num=1)
        (newest, *_), *_ = await self.command("SLOWLOG", "GET", "1")
        self.mark = int(newest)

    async def read(self) -> list[Call]:
        raw = await self.command("SLOWLOG", "GET", "-1")
        calls = _calls([e for e in raw if int(e[0]) > self.mark])
        return [c for c in calls if c.command.split()[0].upper() != "SLOWLOG"]


def _kind(call: Call) -> str:
    """What a call does, without which peer (or cursor) it does it for: the command (and
    the script's name, or the subcommand), and the key when it is one of the node's own."""
    words = call.command.split()
    if words and words[0].upper() in ("EVALSHA", "MEMORY", "SCRIPT", "CONFIG", "CLIENT"):
        words = [" ".join(words[:2]), *words[2:]]
    if not words:
        return "?"
    key = words[1] if len(words) > 1 else ""
    if not key.startswith("lndmailbox:"):
        return words[0]
    return f"{words[0]} {'(a peer key)' if ':peer:' in key else key}"


def heaviest(calls: Sequence[Call]) -> Call:
    """The kind of call with the largest median run, as a call lasting that median.
    SCRIPT LOAD is left out: redis-py loads a script the first time it runs on a server
    (0.5 to 2 ms for the larger ones), once in the server's life, not once a sweep."""
    kinds: dict[str, list[Call]] = {}
    for c in calls:
        if not c.command.upper().startswith("SCRIPT LOAD"):
            kinds.setdefault(_kind(c), []).append(c)
    if not kinds:
        return _NONE
    kind, runs = max(kinds.items(), key=lambda kv: statistics.median(c.micros for c in kv[1]))
    return Call(int(statistics.median(c.micros for c in runs)), kind, max(c.args for c in runs))


def _whole_reads(calls: Sequence[Call], store: Store, page: int) -> tuple[str, ...]:
    mail, usage = store.keys.mail_key, store.keys.usage_key
    bad = []
    for c in calls:
        words = c.command.split()
        name = words[0].upper() if words else ""
        key = words[1] if len(words) > 1 else ""
        whole = (
            (name in ("ZRANGE", "ZREVRANGE") and key == mail and words[2:4] == ["0", "-1"])
            or (name == "ZRANGEBYSCORE" and key == mail and c.args < 6)
            or (name in ("HGETALL", "HKEYS", "HVALS") and key == usage)
            or name == "KEYS"
            or c.args > 3 * page + 16
        )
        if whole:
            bad.append(f"{c.command} ({c.args} arguments)")
    return tuple(bad)


def _pubkey(rng: random.Random) -> bytes:
    return coincurve.PrivateKey(rng.randbytes(32)).public_key.format()


def _message(rng: random.Random, peer: bytes, now: float) -> NewMessage:
    return NewMessage(peer, _pubkey(rng), _pubkey(rng), rng.randbytes(PACKET_SIZE), now)


async def _fill(store: Store, config: Config, rng: random.Random) -> int:
    """The big store; returns how many messages the sweep will find due."""
    peers = [_pubkey(rng) for _ in range(config.peers)]
    each = config.messages // config.peers
    short: list[NewMessage] = []
    long: list[NewMessage] = []
    for round_ in range(each):
        for i, peer in enumerate(peers):
            now = BASE + (round_ * config.peers + i) / 1000
            (short if i % 10 == 0 else long).append(_message(rng, peer, now))
    work: list[tuple[list[NewMessage], float | None]] = [
        (short[i : i + FILL_BATCH], SHORT_TTL) for i in range(0, len(short), FILL_BATCH)
    ]
    work += [(long[i : i + FILL_BATCH], None) for i in range(0, len(long), FILL_BATCH)]
    gate = asyncio.Semaphore(4)

    async def put(batch: list[NewMessage], ttl: float | None) -> None:
        async with gate:
            for result in await store.queues.put_many(batch, ttl=ttl):
                assert result.message is not None, result

    await asyncio.gather(*(put(b, t) for b, t in work))

    async def take(peer: bytes) -> None:
        async with gate:
            ready, _ = await store.queues.peek(peer, BASE, limit=2)
            await store.queues.move_delivered(ready, int(BASE * 1000))

    await asyncio.gather(*(take(p) for p in peers[::5]))
    return len(short)


async def _workload(
    store: Store, config: Config, rng: random.Random, now: float
) -> tuple[float, list[float]]:
    """Seconds per message of store + deliver + confirm on fresh peers; the batches' times."""
    peers = [_pubkey(rng) for _ in range(config.workload_peers)]
    messages = [
        _message(rng, peers[i % len(peers)], now + i / 1e6) for i in range(config.workload_messages)
    ]
    batches: list[float] = []
    start = time.perf_counter()
    for m in messages:
        await store.queues.put_many([m])
    for peer in peers:
        while True:
            t0 = time.perf_counter()
            ready, _ = await store.queues.peek(peer, now, limit=BATCH)
            if not ready:
                break
            sent_ms = int(now * 1000)
            await store.queues.move_delivered(ready, sent_ms)
            batches.append(time.perf_counter() - t0)
            await store.queues.confirm(peer, [(m.id, sent_ms) for m in ready])
    seconds = time.perf_counter() - start
    return seconds / len(messages), batches


def _mailboxctl(url: str, node: bytes, lnd: list[str], *command: str) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LNDMAILBOX_")}
    argv = [sys.executable, "-m", "lndmailbox.cli", "--redis-url", url, "--node", node.hex()]
    start = time.perf_counter()
    done = subprocess.run(
        [*argv, *lnd, *command], capture_output=True, env=env, timeout=600, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"mailboxctl {' '.join(command)}: {done.stderr.decode()}")
    return seconds, done.stdout.decode()


@dataclass(frozen=True)
class _Lnd:
    """simnet in its own process (the node whose mailbox is filled), as the daemon sees it."""

    rpcserver: str
    cert: Path
    macaroon: Path


async def _daemon_start(lnd: _Lnd, url: str, store: Store, workdir: Path, requeued: int) -> str:
    """Starts the real daemon (``python -m lndmailbox``) on ``url`` and stops it once it
    leads (``/health/leader``) and has put back all ``requeued`` unconfirmed messages (its
    ``redelivered`` counter); how long each took from the spawn."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "lndmailbox",
        "--rpcserver",
        lnd.rpcserver,
        "--tlscertpath",
        str(lnd.cert),
        "--macaroonpath",
        str(lnd.macaroon),
        "--network",
        "regtest",
        "--redis-url",
        url,
        "--datadir",
        str(workdir / "datadir"),
        "--metrics-addr",
        f"127.0.0.1:{port}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LNDMAILBOX_")}
    log_path = workdir / "daemon.log"
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    before = int((await store.events.counters()).get("redelivered", 0))
    start = time.perf_counter()
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env
        )
    leads = done = None
    try:
        async with asyncio.timeout(300):
            while leads is None or done is None:
                if process.returncode is not None:
                    raise RuntimeError(f"the daemon exited:\n{log_path.read_text()[-4000:]}")
                if leads is None and await asyncio.to_thread(_leads, port):
                    leads = time.perf_counter() - start
                counters = await store.events.counters()
                if done is None and counters.get("redelivered", 0) - before >= requeued:
                    done = time.perf_counter() - start
                await asyncio.sleep(0.02)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await process.wait()
    return f"leads after {leads:.2f}s, {requeued} unconfirmed put back after {done:.2f}s"


def _leads(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/leader", timeout=2):
            return True
    except OSError:
        return False


@contextlib.asynccontextmanager
async def _server(workdir: Path, name: str) -> AsyncIterator[RedisServer]:
    server = RedisServer(workdir / name, persist=True, unix_socket=workdir / name / "redis.sock")
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def run(config: Config, *, say: Callable[[str], None] = print) -> Figures:
    seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "big")
    say(f"scale: seed {seed}")
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="lndmailbox-scale-") as tmp:
        workdir = Path(tmp)
        cert = workdir / "tls.cert"
        cert.write_bytes(generate_tls_pair().cert_pem)
        closed_lnd = [
            "--rpcserver",
            f"127.0.0.1:{free_port()}",
            "--tlscertpath",
            str(cert),
            "--macaroon",
            "00ff",
        ]
        async with (
            SimnetProcess(Personality.LND_0_21) as sim,
            _server(workdir, "empty") as empty_server,
            _server(workdir, "full") as full_server,
        ):
            lnd = _Lnd(sim.target, workdir / "lnd.cert", workdir / "admin.macaroon")
            lnd.cert.write_bytes(sim.tls_cert)
            lnd.macaroon.write_bytes(sim.macaroon)
            empty = Store.from_url(empty_server.url, sim.pubkey)
            full = Store.from_url(full_server.url, sim.pubkey)
            try:
                urls = (empty_server.url, full_server.url)
                return await _measure(
                    config, seed, rng, (empty, full), urls, (closed_lnd, lnd), workdir, say
                )
            finally:
                await empty.aclose()
                await full.aclose()


async def _measure(
    config: Config,
    seed: int,
    rng: random.Random,
    stores: tuple[Store, Store],
    urls: tuple[str, str],
    lnds: tuple[list[str], _Lnd],
    workdir: Path,
    say: Callable[[str], None],
) -> Figures:
    closed_lnd, lnd = lnds
    (empty, full), (empty_url, full_url) = stores, urls
    say(f"scale: filling {config.messages} messages over {config.peers} peers")
    start = time.perf_counter()
    due = await _fill(full, config, rng)
    fill_seconds = time.perf_counter() - start
    say(f"scale: filled in {fill_seconds:.1f}s")
    slowlog = _Slowlog(full)
    await slowlog.setup()
    now = BASE + 1.0
    empty_runs: list[float] = []
    full_runs: list[float] = []
    batches: list[float] = []
    delivered: list[Call] = []
    for _ in range(config.rounds):
        per, _ = await _workload(empty, config, rng, now)
        empty_runs.append(per)
        await slowlog.reset()
        per, times = await _workload(full, config, rng, now)
        full_runs.append(per)
        batches += times
        delivered += [c for c in await slowlog.read() if c.command.startswith("EVALSHA delivered")]
    batch_seconds = statistics.median(batches)
    phases = []
    page = full.queues.page

    async def phase(what: str, work: Callable[[], object]) -> None:
        await slowlog.reset()
        t0 = time.perf_counter()
        result = work()
        note = await result if asyncio.iscoroutine(result) else result
        seconds = time.perf_counter() - t0
        calls = await slowlog.read()
        longest = max(calls, key=lambda c: c.micros)
        phases.append(
            Phase(
                what,
                seconds,
                len(calls),
                longest,
                heaviest(calls),
                _whole_reads(calls, full, page),
                str(note),
            )
        )

    def ctl(*command: str) -> Callable[[], object]:
        async def go() -> str:
            _, out = await asyncio.to_thread(_mailboxctl, full_url, full.node, closed_lnd, *command)
            return f"{len(out.splitlines())} lines of output"

        return go

    await phase("mailboxctl peers", ctl("peers"))
    await phase("mailboxctl status", ctl("status"))
    requeued = 2 * len(range(0, config.peers, 5))
    await phase(
        "daemon start-up",
        lambda: _daemon_start(lnd, full_url, full, workdir / "daemon-full", requeued),
    )

    async def sweep() -> str:
        swept = await full.queues.sweep_expired(BASE + SHORT_TTL + config.messages / 1000 + 1)
        return f"{len(swept)} expired messages removed (of {due} due)"

    await phase("sweep", sweep)
    await slowlog.reset()
    start = time.perf_counter()
    note = await _daemon_start(lnd, empty_url, empty, workdir / "daemon-empty", 0)
    phases.append(
        Phase(
            "daemon start-up, empty store", time.perf_counter() - start, 0, _NONE, _NONE, (), note
        )
    )
    for command in ("peers", "status"):
        seconds, _ = await asyncio.to_thread(
            _mailboxctl, empty_url, empty.node, closed_lnd, command
        )
        phases.append(Phase(f"mailboxctl {command}, empty store", seconds, 0, _NONE, _NONE, ()))
    problems = []
    sweep_phase = phases[3]
    if f"{due} expired" not in sweep_phase.note:
        problems.append(f"the sweep removed other than the {due} due: {sweep_phase.note}")
    for p in phases[:4]:
        if p.heaviest.micros / 1e6 > batch_seconds:
            problems.append(
                f"{p.what}: its heaviest call ({p.heaviest.command}, median "
                f"{p.heaviest.micros} us) is longer than a delivery batch "
                f"({batch_seconds * 1e6:.0f} us)"
            )
        problems += [f"{p.what} read everything in one call: {w}" for w in p.whole_reads]
    return Figures(
        config=config,
        seed=seed,
        fill_seconds=fill_seconds,
        empty_per_message=empty_runs,
        full_per_message=full_runs,
        batch_seconds=batch_seconds,
        batch_redis=max(delivered, key=lambda c: c.micros),
        phases=phases,
        problems=tuple(problems),
    )
