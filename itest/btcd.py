"""A btcd regtest chain backend on loopback ports, driven over its JSON-RPC interface."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

from itest.build import BtcdBinaries
from itest.process import Process, wait_for
from lndmailbox.store import free_port


class BtcdError(Exception):
    """btcd answered a JSON-RPC call with an error."""


class Btcd:
    """btcd with ``--regtest --txindex``, RPC over TLS with a user and password.

    btcd can only mine to the addresses it was started with (``--miningaddr``), and lnd needs a
    running btcd to create its wallet: so the network starts btcd without one, asks an lnd for
    an address, and calls :meth:`restart` with it.
    """

    user = "itest"
    password = "itest-password"

    def __init__(self, binaries: BtcdBinaries, workdir: Path, log_dir: Path) -> None:
        self.binaries = binaries
        self.workdir = workdir
        self.rpc_port = free_port()
        self.p2p_port = free_port()
        self.rpc_cert = workdir / "rpc.cert"
        self.rpc_key = workdir / "rpc.key"
        self.mining_addr: str | None = None
        self.process = Process("btcd", [], log_dir / "btcd.log")
        self._ssl: ssl.SSLContext | None = None

    @property
    def rpc_host(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    def _argv(self) -> list[str]:
        argv = [
            str(self.binaries.btcd),
            "--regtest",
            "--txindex",
            f"--datadir={self.workdir / 'data'}",
            f"--logdir={self.workdir / 'logs'}",
            f"--rpcuser={self.user}",
            f"--rpcpass={self.password}",
            f"--rpclisten={self.rpc_host}",
            f"--listen=127.0.0.1:{self.p2p_port}",
            f"--rpccert={self.rpc_cert}",
            f"--rpckey={self.rpc_key}",
            "--nodnsseed",
            "--nobanning",
            "--debuglevel=info",
        ]
        if self.mining_addr:
            argv.append(f"--miningaddr={self.mining_addr}")
        return argv

    def start(self, mining_addr: str | None = None) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mining_addr = mining_addr
        self.process.argv = self._argv()
        self.process.start()
        wait_for(
            "btcd RPC",
            lambda: self.call("getblockcount") is not None,
            timeout=60,
            alive=[self.process],
        )

    def stop(self) -> None:
        self.process.stop()

    def restart(self, mining_addr: str | None) -> None:
        self.stop()
        self.start(mining_addr)

    def call(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call; returns ``result`` or raises :class:`BtcdError`."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.rpc_cert))
            self._ssl.check_hostname = False
        body = json.dumps({"jsonrpc": "1.0", "id": 1, "method": method, "params": list(params)})
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request = urllib.request.Request(
            f"https://{self.rpc_host}/",
            data=body.encode(),
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60, context=self._ssl) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as e:
            answer = json.loads(e.read() or b"{}")
            if not answer.get("error"):
                raise BtcdError(f"btcd {method}: HTTP {e.code}") from e
        if answer.get("error"):
            raise BtcdError(f"btcd {method}: {answer['error']}")
        return answer["result"]

    def generate(self, blocks: int) -> list[str]:
        hashes: list[str] = self.call("generate", blocks)
        return hashes

    def height(self) -> int:
        count: int = self.call("getblockcount")
        return count
