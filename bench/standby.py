"""A hot standby for the bench: a second ``lndmailbox`` process on the same Redis and node.

It is the real daemon (``python -m lndmailbox``), started after the bench's own daemon
holds the node's lock, so it stays a standby: it reads lnd's onion stream and journals
every message, as a standby beside a leader does in production. Its own process, so its
CPU is its own (read from ``/proc``) and it does not share the leader's interpreter.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path

from lndmailbox.store import Store, free_port

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class StandbyError(Exception):
    """The standby did not start, or stopped on its own."""


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far; 0.0 without ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) is in parentheses and may hold spaces: count after it.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class StandbyDaemon:
    """``async with StandbyDaemon(...) as standby``: started and standing by, or raises."""

    def __init__(
        self,
        *,
        rpcserver: str,
        tls_cert: bytes,
        macaroon: bytes,
        redis_url: str,
        workdir: Path,
        extra: tuple[str, ...] = (),
    ) -> None:
        self._rpcserver = rpcserver
        self._tls_cert = tls_cert
        self._macaroon = macaroon
        self._redis_url = redis_url
        self._workdir = workdir
        self._extra = extra
        self.log_path = workdir / "standby.log"
        self._metrics_port = free_port()
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise StandbyError("the standby is not running")
        return self._process.pid

    def cpu(self) -> float:
        return process_cpu(self.pid)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def check_alive(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            code = None if process is None else process.returncode
            raise StandbyError(f"the standby exited ({code}):\n{self.log()[-4000:]}")

    async def start(self, store: Store, *, within: float) -> None:
        """Starts the process; returns once its heartbeat says it stands by."""
        self._workdir.mkdir(parents=True, exist_ok=True)
        cert = self._workdir / "tls.cert"
        macaroon = self._workdir / "admin.macaroon"
        cert.write_bytes(self._tls_cert)
        macaroon.write_bytes(self._macaroon)
        macaroon.chmod(0o600)
        argv = [
            sys.executable,
            "-m",
            "lndmailbox",
            "--rpcserver",
            self._rpcserver,
            "--tlscertpath",
            str(cert),
            "--macaroonpath",
            str(macaroon),
            "--network",
            "regtest",
            "--redis-url",
            self._redis_url,
            "--datadir",
            str(self._workdir / "datadir"),
            "--metrics-addr",
            f"127.0.0.1:{self._metrics_port}",
            *self._extra,
        ]
        with self.log_path.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + within
        while not await self._standing_by(store):
            self.check_alive()
            if time.monotonic() > deadline:
                raise StandbyError(f"no standby heartbeat within {within:.0f}s:\n{self.log()}")
            await asyncio.sleep(0.05)

    async def _standing_by(self, store: Store) -> bool:
        beats = await store.control.read_daemons()
        return any(b.get("pid") == self.pid and b.get("role") == "standby" for b in beats.values())

    async def journaled(self) -> int:
        """Messages it has read from lnd's stream while standing by: those it journaled and
        those it skipped because the leader had decided them already (its metrics)."""

        def scrape() -> str:
            url = f"http://127.0.0.1:{self._metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as reply:
                return str(reply.read().decode())

        text = await asyncio.to_thread(scrape)
        total = 0.0
        for name in ("standby_journaled", "journal_skipped"):
            match = re.search(rf"^lndmailbox_{name}_total (\S+)$", text, re.MULTILINE)
            if match is None:
                raise StandbyError(f"the standby's metrics have no {name}")
            total += float(match.group(1))
        return round(total)

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 30 s; the exit code (None if it never ran)."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        return process.returncode
