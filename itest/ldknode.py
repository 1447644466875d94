"""One real LDK wallet (rust-lightning), played by ``lndmailbox-ldk`` (itest/ldk/) in its own process.

The program speaks JSON lines: commands ``{"id": N, "cmd": NAME, ...}`` on its stdin, each
answered ``{"id": N, "ok": true, ...}`` or ``{"id": N, "ok": false, "error": ...}`` on its
stdout, where events ``{"event": KIND, ...}`` arrive too, as they happen. A reader thread
sorts the lines into answers and events; LDK's log (stderr) goes to ``ldk-NAME.log`` and
every line both ways to ``ldk-NAME.stdio.log`` in the log directory.

The LSPS5 commands (itest/ldk/src/lsps5.rs) drive lightning-liquidity's LSPS5 client, the
node's custom message handler: ``lsps5_set_webhook``, ``lsps5_list_webhooks`` and
``lsps5_remove_webhook`` wait for the LSP's answer; ``lsps5_validate`` checks a received
notification with lightning-liquidity's ``LSPS5Validator``.

The node keeps everything in memory: a stopped node is gone, channels and all.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from itest.lndnode import LndNode
from itest.process import log_tail, register, unregister

EventPredicate = Callable[[dict[str, Any]], bool]

# The program's connect waits up to 10 s for TCP (lightning-net-tokio) and then up to 20 s
# for init (commands.rs PEER_TIMEOUT), disconnect up to 20 s: the driver waits clearly
# longer, so the program's own error answer arrives first.
PEER_REQUEST_TIMEOUT = 60.0


@dataclass(frozen=True)
class HeldHtlcSent:
    """The answer to ``send_held_htlc_available``."""

    payment_id: str
    reply_paths: list[dict[str, Any]]
    """The payer's reply paths, described like :meth:`LdkNode.held_htlc_paths`' paths."""
    sent: list[str]
    """One outcome per message (one per path and reply path pair): "buffered" when the first
    hop is a connected peer, "buffered_awaiting_connection NODE" when it is not."""


class LdkError(Exception):
    """The LDK program answered a command with an error, did not answer, or exited.
    ``code``: the error's code when it has one (an LSPS error's)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class LdkNode:
    """``lndmailbox-ldk --name NAME``: started with :meth:`start`, stopped with :meth:`stop`."""

    def __init__(
        self,
        name: str,
        binary: Path,
        workdir: Path,
        log_dir: Path,
        *,
        seed: bytes | None = None,
        log_level: str = "debug",
    ) -> None:
        self.name = name
        self.binary = binary
        self.workdir = workdir
        self.log_path = log_dir / f"ldk-{name}.log"
        self.stdio_log_path = log_dir / f"ldk-{name}.stdio.log"
        self.seed = seed
        self.log_level = log_level
        self.node_id = ""
        self._popen: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._stdio_log: IO[str] | None = None
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._answers: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._closed = False

    @property
    def pubkey(self) -> bytes:
        return bytes.fromhex(self.node_id)

    def log_files(self) -> list[Path]:
        return [self.log_path, self.stdio_log_path]

    # Life cycle ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self, best_block: str, timeout: float = 30.0) -> None:
        """Starts the node at ``best_block`` (``HASH:HEIGHT``) and waits for its ``ready``."""
        if self.running:
            raise LdkError(f"LDK node {self.name} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.binary),
            "--name",
            self.name,
            "--best-block",
            best_block,
            "--log-level",
            self.log_level,
        ]
        if self.seed is not None:
            argv += ["--seed", self.seed.hex()]
        with self._cond:
            self._answers.clear()
            self._events.clear()
            self._closed = False
        self._stdio_log = self.stdio_log_path.open("a", buffering=1)
        self._stdio_log.write(f"==== {time.strftime('%H:%M:%S')} start: {' '.join(argv)}\n")
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=self.workdir,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
        register(self._popen.pid, self)
        self._reader = threading.Thread(
            target=self._read, args=(self._popen.stdout,), name=f"ldk-{self.name}", daemon=True
        )
        self._reader.start()
        ready = self.wait_event("ready", timeout=timeout)
        self.node_id = str(ready["node_id"])

    def stop(self, timeout: float = 10.0) -> int | None:
        """Asks the node to stop, SIGKILLs it after ``timeout``; returns its exit code."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            with contextlib.suppress(LdkError, OSError):
                self.request("stop", timeout=timeout)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._finish()
        return popen.returncode

    def kill(self) -> None:
        """SIGKILL to the node's process group: a crash, nothing said to its peers."""
        popen = self._popen
        if popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        self._finish()

    def freeze(self) -> None:
        """SIGSTOP to the node's process group: its TCP connections stay open and nothing
        answers on them (the kernel still acknowledges segments), a silently broken
        connection as a phone that vanished from the network leaves behind."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: the frozen node runs again (a no-op on a node that is not frozen)."""
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        popen = self._popen
        if popen is not None and popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, sig)

    def _finish(self) -> None:
        popen = self._popen
        if popen is None:
            return
        if popen.stdin is not None:
            with contextlib.suppress(OSError):
                popen.stdin.close()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if popen.stdout is not None:
            popen.stdout.close()
        if self._stdio_log is not None:
            self._stdio_log.write(f"==== {time.strftime('%H:%M:%S')} exit {popen.returncode}\n")
            self._stdio_log.close()
            self._stdio_log = None
        unregister(popen.pid)

    def _read(self, stdout: IO[str] | None) -> None:
        assert stdout is not None
        for line in stdout:
            self._log_line("<", line)
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue  # stdout is JSON only; anything else is logged above and ignored
            if not isinstance(message, dict):
                continue
            with self._cond:
                if "event" in message:
                    self._events.append(message)
                elif isinstance(message.get("id"), int):
                    self._answers[message["id"]] = message
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _log_line(self, direction: str, line: str) -> None:
        log = self._stdio_log
        if log is not None:
            with contextlib.suppress(ValueError):  # closed by stop() meanwhile
                log.write(f"{time.strftime('%H:%M:%S')} {direction} {line.rstrip()}\n")

    def _gone(self) -> LdkError:
        code = self._popen.poll() if self._popen is not None else None
        return LdkError(
            f"LDK node {self.name} exited (code {code}); log {self.log_path}:\n{log_tail(self.log_path, 30)}"
        )

    # Commands and events ---------------------------------------------------------------------

    def request(self, cmd: str, *, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Sends one command and returns its answer; raises :class:`LdkError` on an error answer."""
        popen = self._popen
        if popen is None or popen.stdin is None or not self.running:
            raise LdkError(f"LDK node {self.name} is not running")
        request_id = next(self._ids)
        line = json.dumps({"id": request_id, "cmd": cmd, **params})
        self._log_line(">", line)
        try:
            popen.stdin.write(line + "\n")
            popen.stdin.flush()
        except OSError as e:
            raise self._gone() from e
        deadline = time.monotonic() + timeout
        with self._cond:
            while request_id not in self._answers:
                if self._closed:
                    raise self._gone()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LdkError(f"LDK node {self.name}: no answer to {cmd} after {timeout}s")
                self._cond.wait(left)
            answer = self._answers.pop(request_id)
        if not answer.get("ok"):
            raise LdkError(
                f"LDK node {self.name}: {cmd} failed: {answer.get('error')}", answer.get("code")
            )
        return answer

    def mark(self) -> int:
        """The number of events so far: pass it as ``since`` to wait only for later ones."""
        with self._cond:
            return len(self._events)

    def events(self, kind: str | None = None, *, since: int = 0) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self._events[since:] if kind is None or e["event"] == kind]

    def wait_event(
        self,
        kind: str,
        predicate: EventPredicate | None = None,
        *,
        timeout: float = 30.0,
        since: int = 0,
    ) -> dict[str, Any]:
        """The first event of ``kind`` (from event number ``since`` on) that ``predicate`` accepts."""
        deadline = time.monotonic() + timeout
        seen = since
        with self._cond:
            while True:
                for event in self._events[seen:]:
                    if event["event"] == kind and (predicate is None or predicate(event)):
                        return event
                seen = max(seen, len(self._events))
                if self._closed:
                    raise self._gone()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LdkError(f"LDK node {self.name}: no {kind} event after {timeout}s")
                self._cond.wait(left)

    # The protocol's commands -----------------------------------------------------------------

    def connect(self, lnd: LndNode, addr: str | None = None) -> None:
        """Dials ``lnd`` (at ``addr``, its IPv4 address unless given) over BOLT 8; returns once
        both sides exchanged init."""
        self.request(
            "connect",
            node_id=lnd.pubkey_hex,
            addr=addr or lnd.p2p_address,
            timeout=PEER_REQUEST_TIMEOUT,
        )

    def disconnect(self, lnd: LndNode) -> None:
        """Drops the connection to ``lnd``; returns once LDK has no such peer any more."""
        self.request("disconnect", node_id=lnd.pubkey_hex, timeout=PEER_REQUEST_TIMEOUT)

    def peers(self) -> list[str]:
        return [str(p) for p in self.request("peers")["peers"]]

    def channels(self) -> list[dict[str, Any]]:
        channels: list[dict[str, Any]] = self.request("channels")["channels"]
        return channels

    def held_htlc_paths(
        self, expiry_secs: int, *, by_node_id: bool = False
    ) -> list[dict[str, Any]]:
        """Blinded paths for ``held_htlc_available``, built as LDK builds a static invoice's.

        ``by_node_id=True`` is a debug comparison, not what LDK does: the LSP's hop then names
        the next hop by node id instead of by the channel's SCID alias.
        """
        answer = self.request("held_htlc_paths", expiry_secs=expiry_secs, by_node_id=by_node_id)
        paths: list[dict[str, Any]] = answer["paths"]
        return paths

    def send_held_htlc_available(self, path_hex: str) -> HeldHtlcSent:
        """Sends ``held_htlc_available`` over a path as a payer's ChannelManager does: with
        compact reply paths to us (context OutboundPayment, a fresh payment id)."""
        answer = self.request("send_held_htlc_available", path=path_hex)
        return HeldHtlcSent(
            payment_id=str(answer["payment_id"]),
            reply_paths=list(answer["reply_paths"]),
            sent=[str(s) for s in answer["sent"]],
        )

    # LSPS5 -------------------------------------------------------------------------------------

    def lsps5_set_webhook(self, lsp: LndNode, app_name: str, url: str) -> dict[str, Any]:
        """``{num_webhooks, max_webhooks, no_change}``; LdkError with the LSP's code if refused."""
        return self.request("lsps5_set_webhook", lsp=lsp.pubkey_hex, app_name=app_name, url=url)

    def lsps5_list_webhooks(self, lsp: LndNode) -> dict[str, Any]:
        return self.request("lsps5_list_webhooks", lsp=lsp.pubkey_hex)

    def lsps5_remove_webhook(self, lsp: LndNode, app_name: str) -> None:
        self.request("lsps5_remove_webhook", lsp=lsp.pubkey_hex, app_name=app_name)

    def lsps5_validate(
        self, lsp: LndNode, timestamp: str, signature: str, body: bytes, *, fresh: bool = False
    ) -> dict[str, Any]:
        """``{method, rendered_timestamp}`` of a notification ``LSPS5Validator`` accepts from
        ``lsp``; LdkError (with the validator's code) when it refuses it.

        The node keeps one validator, which refuses a signature it accepted recently (a
        replay); ``fresh=True`` checks with a new one. ``rendered_timestamp`` is the text
        the validator checked the signature over: it parses the header and renders it
        again (chrono's ``to_rfc3339()``), it does not use the header's text.
        """
        return self.request(
            "lsps5_validate",
            lsp=lsp.pubkey_hex,
            timestamp=timestamp,
            signature=signature,
            body=body.decode(),
            fresh=fresh,
        )
