"""simnet in a process of its own, driven by the benchmark over a line protocol.

The mailbox benchmarks measure the daemon, so the stand-in lnd must not eat the daemon's
CPU: :class:`SimnetProcess` starts ``python -m bench.simnet_process`` as a child, which
runs a :class:`~simnet.SimNode` (gRPC over TLS, macaroons, the Signer's ECDH)
with simnet's own onion-message rate limits off by default: the point is the mailbox's
rate, which the benchmark compares with lnd's default limits separately.

Protocol: one JSON object per line. The child first writes ``{"ready": true, ...}`` with
its RPC target, TLS certificate (PEM), admin macaroon (hex), node pubkey and lnd
version; then it answers each request line, in order, with ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. Requests (``cmd`` and its arguments):

* ``add_peers names`` -> ``pubkeys`` (name -> hex): new peers, each with a channel, offline;
* ``connect name`` / ``disconnect name``;
* ``build key recipients count reuse_paths`` -> ``seconds``: builds ``count`` onion
  messages through the node to ``recipients`` (round robin; payload record 65 holds
  ``bench <key> <i>``; see :func:`build_messages`) and keeps them under ``key``, so that
  building is never timed;
* ``load key messages append`` (hex of ``OnionMessage.encode()``): keeps messages built
  elsewhere under ``key`` (after those already there with ``append``);
* ``inject key sender start stop`` -> ``sent``, ``published``, ``seconds``, ``outcomes``:
  ``sender`` sends the messages kept under ``key`` (``[start:stop]``, default all) as fast
  as the node takes them;
* ``wait_received name count within connect`` -> ``seconds``, ``received``: optionally
  connects ``name``, then waits until it holds ``count`` onion messages; ``seconds`` runs
  from the connection (or the request) to the last one arriving;
* ``received_counts names`` -> ``counts`` (name -> how many onion messages it holds);
* ``peel_check name payload_type last`` -> ``received``, ``checked``, ``peeled``,
  ``distinct``: ``name`` peels what it received (the ``last`` ones only, if given) with
  its own key;
* ``wait_subscribers streams count within``: until each stream has ``count`` subscribers;
* ``cpu`` -> ``seconds``: the child's CPU time so far;
* ``profile_start`` / ``profile_stop`` -> ``stats``: cProfile of the child in between;
* ``stop``: stops the node and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import hashlib
import io
import json
import os
import pstats
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simnet import OnionRateLimits, Personality, SimNode

from lndmailbox.errors import OnionError
from lndmailbox.lnd import LndEndpoint
from lndmailbox.onion import Receive, message_via
from lndmailbox.onion.tlv import scid
from lndmailbox.onion.wire import OnionMessage

PAYLOAD_TYPE = 65
_REPO = Path(__file__).resolve().parent.parent
_LINE_LIMIT = 64 * 1024 * 1024


def build_messages(
    node: bytes,
    recipients: Sequence[bytes],
    count: int,
    label: str,
    *,
    reuse_paths: bool = False,
) -> list[OnionMessage]:
    """``count`` messages to ``node`` for forwarding to ``recipients`` (round robin).

    Each message gets a blinded path of its own, unless ``reuse_paths``: then all messages
    to one recipient use that recipient's one blinded path (as senders do with the paths of
    an offer or a static invoice), so they reach ``node`` with the same path key.
    """
    out = []
    for i in range(count):
        recipient = recipients[i % len(recipients)]
        path_secret = (
            hashlib.sha256(b"bench blinded path" + node + recipient).digest()
            if reuse_paths
            else None
        )
        first, message = message_via(
            [node, recipient],
            {PAYLOAD_TYPE: f"bench {label} {i}".encode()},
            path_session_key=path_secret,
        )
        assert first == node
        out.append(message)
    return out


# --------------------------------------------------------------------------- the child


class _Child:
    def __init__(self, node: SimNode) -> None:
        self.node = node
        self.messages: dict[str, list[OnionMessage]] = {}
        self.profiler: cProfile.Profile | None = None
        self._next_block = 700_000

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request["cmd"]
        if cmd == "add_peers":
            pubkeys = {}
            for name in request["names"]:
                peer = self.node.add_peer(name)
                self._next_block += 1
                self.node.open_channel(peer, scid(self._next_block, 1, 0))
                pubkeys[name] = peer.pubkey.hex()
            return {"pubkeys": pubkeys}
        if cmd == "connect":
            self.node.peer(request["name"]).connect()
            return {}
        if cmd == "disconnect":
            self.node.peer(request["name"]).disconnect()
            return {}
        if cmd == "build":
            started = time.perf_counter()
            recipients = [self.node.peer(name).pubkey for name in request["recipients"]]
            self.messages[request["key"]] = build_messages(
                self.node.pubkey,
                recipients,
                request["count"],
                request["key"],
                reuse_paths=request.get("reuse_paths", False),
            )
            return {"seconds": time.perf_counter() - started}
        if cmd == "load":
            loaded = [OnionMessage.decode(bytes.fromhex(m)) for m in request["messages"]]
            if not request.get("append"):
                self.messages[request["key"]] = []
            self.messages.setdefault(request["key"], []).extend(loaded)
            return {"count": len(self.messages[request["key"]])}
        if cmd == "inject":
            return await self._inject(
                request["key"], request["sender"], request.get("start"), request.get("stop")
            )
        if cmd == "wait_received":
            return await self._wait_received(
                request["name"], request["count"], request["within"], request["connect"]
            )
        if cmd == "received_counts":
            return {"counts": {n: len(self.node.peer(n).received) for n in request["names"]}}
        if cmd == "peel_check":
            return await self._peel_check(
                request["name"], request["payload_type"], request.get("last")
            )
        if cmd == "wait_subscribers":
            async with asyncio.timeout(request["within"]):
                for stream in request["streams"]:
                    await self.node.wait_for_subscribers(stream, request["count"])
            return {}
        if cmd == "cpu":
            return {"seconds": time.process_time()}
        if cmd == "profile_start":
            self.profiler = cProfile.Profile()
            self.profiler.enable()
            return {}
        if cmd == "profile_stop":
            if self.profiler is None:
                return {"stats": ""}
            self.profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(self.profiler, stream=out)
            stats.sort_stats("tottime").print_stats(request.get("lines", 25))
            stats.sort_stats("cumulative").print_stats(request.get("lines", 25))
            self.profiler = None
            return {"stats": out.getvalue()}
        if cmd == "stop":
            return {}
        raise ValueError(f"unknown command {cmd!r}")

    async def _inject(
        self, key: str, sender_name: str, start: int | None, stop: int | None
    ) -> dict[str, Any]:
        sender = self.node.peer(sender_name)
        outcomes: Counter[str] = Counter()
        published = 0
        messages = self.messages[key][start:stop]
        started = time.perf_counter()
        for message in messages:
            result = await sender.send_onion_message(message)
            published += result.published
            outcomes[result.drop_reason or "ok"] += 1
            # Let the gRPC server stream what was published meanwhile.
            await asyncio.sleep(0)
        return {
            "sent": len(messages),
            "published": published,
            "seconds": time.perf_counter() - started,
            "outcomes": dict(outcomes),
        }

    async def _wait_received(
        self, name: str, count: int, within: float, connect: bool
    ) -> dict[str, Any]:
        peer = self.node.peer(name)
        started = time.perf_counter()
        if connect:
            peer.connect()
        async with asyncio.timeout(within):
            await peer.wait_received(count)
        return {"seconds": time.perf_counter() - started, "received": len(peer.received)}

    async def _peel_check(self, name: str, payload_type: int, last: int | None) -> dict[str, Any]:
        peer = self.node.peer(name)
        peeled = 0
        payloads = set()
        checked = peer.received if last is None else peer.received[-last:] if last else []
        for message in checked:
            try:
                result = await peer.peel(message)
            except OnionError:
                continue
            if isinstance(result, Receive) and payload_type in result.payload:
                peeled += 1
                payloads.add(result.payload[payload_type])
        return {
            "received": len(peer.received),
            "checked": len(checked),
            "peeled": peeled,
            "distinct": len(payloads),
        }


def _write(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _serve(personality: Personality, rate_limits: bool) -> int:
    node = SimNode(
        personality,
        alias="bench",
        onion_rate_limits=OnionRateLimits() if rate_limits else None,
    )
    await node.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    child = _Child(node)
    _write(
        {
            "ready": True,
            "target": node.target,
            "cert": node.tls.cert_pem.decode(),
            "macaroon": node.admin_macaroon.hex(),
            "pubkey": node.pubkey.hex(),
            "version": node.personality.version,
            "pid": os.getpid(),
        }
    )
    try:
        while line := await reader.readline():
            request = json.loads(line)
            try:
                reply = {"ok": True, **await child.handle(request)}
            except Exception as e:  # any failure goes back to the benchmark, which stops
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            _write(reply)
            if request.get("cmd") == "stop":
                break
    finally:
        await node.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simnet_process")
    parser.add_argument("--personality", choices=[p.value for p in Personality], default="0.21")
    parser.add_argument(
        "--rate-limits", action="store_true", help="keep lnd 0.21's onion token buckets on"
    )
    args = parser.parse_args(argv)
    return asyncio.run(_serve(Personality(args.personality), args.rate_limits))


# --------------------------------------------------------------------------- the parent


class SimnetProcessError(Exception):
    """The child failed a request or went away."""


@dataclass(frozen=True)
class InjectReport:
    sent: int
    published: int
    seconds: float
    outcomes: dict[str, int]


@dataclass(frozen=True)
class PeelCheck:
    """A peer peeled ``checked`` of the ``received`` messages it holds: ``peeled`` reached a
    bench payload, ``distinct`` different ones."""

    received: int
    checked: int
    peeled: int
    distinct: int


class SimnetProcess:
    """The parent's handle on the child: ``async with SimnetProcess(personality) as sim``."""

    def __init__(self, personality: Personality, *, rate_limits: bool = False) -> None:
        self.personality = personality
        self.rate_limits = rate_limits
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.target = ""
        self.tls_cert = b""
        self.macaroon = b""
        self.pubkey = b""
        self.version = ""
        self.pid = 0

    @property
    def endpoint(self) -> LndEndpoint:
        return LndEndpoint(target=self.target, tls_cert=self.tls_cert, macaroon=self.macaroon)

    async def start(self, within: float = 30.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH")) if p)
        args = ["-m", "bench.simnet_process", "--personality", self.personality.value]
        if self.rate_limits:
            args.append("--rate-limits")
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=_LINE_LIMIT,
        )
        async with asyncio.timeout(within):
            ready = await self._read()
        self.target = ready["target"]
        self.tls_cert = ready["cert"].encode()
        self.macaroon = bytes.fromhex(ready["macaroon"])
        self.pubkey = bytes.fromhex(ready["pubkey"])
        self.version = ready["version"]
        self.pid = ready["pid"]

    async def _read(self) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise SimnetProcessError("the simnet process is not running")
        line = await proc.stdout.readline()
        if not line:
            code = await proc.wait()
            raise SimnetProcessError(f"the simnet process exited ({code})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Sends one request and returns the child's reply (raises if it failed)."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise SimnetProcessError("the simnet process is not running")
        async with self._lock:
            proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
            await proc.stdin.drain()
            reply = await self._read()
        if not reply.get("ok"):
            raise SimnetProcessError(f"{cmd}: {reply.get('error')}")
        return reply

    # Typed helpers.

    async def add_peers(self, names: Sequence[str]) -> dict[str, bytes]:
        reply = await self.call("add_peers", names=list(names))
        return {name: bytes.fromhex(key) for name, key in reply["pubkeys"].items()}

    async def connect(self, name: str) -> None:
        await self.call("connect", name=name)

    async def disconnect(self, name: str) -> None:
        await self.call("disconnect", name=name)

    async def build(
        self, key: str, recipients: Sequence[str], count: int, *, reuse_paths: bool = False
    ) -> float:
        reply = await self.call(
            "build", key=key, recipients=list(recipients), count=count, reuse_paths=reuse_paths
        )
        return float(reply["seconds"])

    async def load(
        self, key: str, messages: Sequence[OnionMessage], *, append: bool = False
    ) -> int:
        reply = await self.call(
            "load", key=key, messages=[m.encode().hex() for m in messages], append=append
        )
        return int(reply["count"])

    async def inject(
        self, key: str, sender: str, start: int | None = None, stop: int | None = None
    ) -> InjectReport:
        reply = await self.call("inject", key=key, sender=sender, start=start, stop=stop)
        return InjectReport(
            sent=int(reply["sent"]),
            published=int(reply["published"]),
            seconds=float(reply["seconds"]),
            outcomes={str(k): int(v) for k, v in reply["outcomes"].items()},
        )

    async def wait_received(
        self, name: str, count: int, *, within: float, connect: bool = False
    ) -> tuple[float, int]:
        reply = await self.call(
            "wait_received", name=name, count=count, within=within, connect=connect
        )
        return float(reply["seconds"]), int(reply["received"])

    async def peel_check(self, name: str) -> tuple[int, int, int]:
        """(received, peeled to a payload, distinct payloads) for ``name``."""
        check = await self.peel_last(name, None)
        return check.received, check.peeled, check.distinct

    async def peel_last(self, name: str, last: int | None) -> PeelCheck:
        """``name`` peels the ``last`` messages it received (None: all) to their payloads."""
        reply = await self.call("peel_check", name=name, payload_type=PAYLOAD_TYPE, last=last)
        return PeelCheck(
            int(reply["received"]),
            int(reply["checked"]),
            int(reply["peeled"]),
            int(reply["distinct"]),
        )

    async def received_counts(self, names: Sequence[str]) -> dict[str, int]:
        """How many onion messages each of ``names`` holds."""
        reply = await self.call("received_counts", names=list(names))
        return {str(k): int(v) for k, v in reply["counts"].items()}

    async def wait_subscribers(
        self, streams: Sequence[str], *, count: int = 1, within: float = 30.0
    ) -> None:
        """Until each of ``streams`` has at least ``count`` subscribers."""
        await self.call("wait_subscribers", streams=list(streams), count=count, within=within)

    async def profile_start(self) -> None:
        await self.call("profile_start")

    async def profile_stop(self, lines: int = 25) -> str:
        return str((await self.call("profile_stop", lines=lines))["stats"])

    async def cpu(self) -> float:
        return float((await self.call("cpu"))["seconds"])

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(SimnetProcessError, ConnectionError, TimeoutError):
                self._proc = proc
                async with asyncio.timeout(10):
                    await self.call("stop")
            self._proc = None
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def __aenter__(self) -> SimnetProcess:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


if __name__ == "__main__":
    sys.exit(main())
