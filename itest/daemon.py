"""The mailbox daemon under test: its real entry point, as a subprocess, against the LSP's lnd.

It gets exactly what an operator would give it: lnd's RPC address, tls.cert and a
least-privilege macaroon baked with the LSP's own lncli (:data:`MAILBOX_PERMISSIONS`), a
Redis URL, and ``--transport auto`` so it picks the transport from lnd's version itself.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from itest.network import Network
from itest.process import Process, ProcessError, wait_for

# docs/lnd.md: GetInfo (info:read), ListPeers + SubscribePeerEvents (peers:read),
# ListChannels + ListAliases + Subscribe{Custom,Onion}Messages (offchain:read),
# Send{Custom,Onion}Message (offchain:write), Signer.DeriveSharedKey (signer:generate),
# SignMessage (message:write, LSPS5's notifications).
MAILBOX_PERMISSIONS = (
    "info:read",
    "peers:read",
    "offchain:read",
    "offchain:write",
    "signer:generate",
    "message:write",
)

READY = re.compile(r"serving lnd .* transport")
STANDING_BY = re.compile(r"standing by: journaling")
"""What a daemon that found the node's lock held logs once it is on lnd's stream."""


def entry_point(script: str = "lndmailbox", module: str = "lndmailbox") -> list[str]:
    """A console script of this environment (``python -m MODULE`` if absent)."""
    beside = Path(sys.executable).parent / script
    if beside.exists():
        return [str(beside)]
    found = shutil.which(script)
    if found:
        return [found]
    return [sys.executable, "-m", module]


def mailboxctl_entry_point() -> list[str]:
    return entry_point("mailboxctl", "lndmailbox.cli")


class MailboxDaemon:
    def __init__(
        self, network: Network, redis_url: str, workdir: Path, extra: Sequence[str] = ()
    ) -> None:
        self.network = network
        self.workdir = workdir
        self.macaroon_path = workdir / "mailbox.macaroon"
        self.redis_url = redis_url
        self.extra = list(extra)
        self.process = Process("lndmailbox", [], workdir / "lndmailbox.log")

    def argv(self) -> list[str]:
        lsp = self.network.lsp
        return [
            *entry_point(),
            "--rpcserver", lsp.rpcserver,
            "--tlscertpath", str(lsp.tls_cert_path),
            "--macaroonpath", str(self.macaroon_path),
            "--network", "regtest",
            "--redis-url", self.redis_url,
            "--transport", "auto",
            "--datadir", str(self.workdir / "data"),
            "--allow-channel-peers",
            "--log-level", "debug",
            *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = 60.0, ready: re.Pattern[str] = READY) -> None:
        """Starts it and waits for ``ready`` in its log (a leader's by default)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.macaroon_path.exists():
            self.network.lsp.bake_macaroon(MAILBOX_PERMISSIONS, self.macaroon_path)
        self.process.argv = self.argv()
        self.process.start()
        wait_for(
            f"the mailbox daemon's log to say {ready.pattern!r}",
            lambda: ready.search(self.log()) is not None,
            timeout=timeout,
            alive=[self.process],
        )
        # The streams are opened right after that line; give them a moment to be in place.
        time.sleep(1.0)

    def log(self) -> str:
        try:
            return self.process.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def check_alive(self) -> None:
        self.process.check_alive()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing released (``stop`` after it is a no-op)."""
        self.process.kill()

    def stop(self) -> int | None:
        """SIGTERM, as an operator's service manager would; the daemon must exit 0."""
        if not self.process.running:
            return self.process.returncode
        code = self.process.stop(timeout=30)
        if code != 0:
            raise ProcessError(
                f"lndmailbox exited with {code} after SIGTERM; log {self.process.log_path}:\n"
                f"{self.process.log_tail()}"
            )
        return code
