"""One real lnd on regtest, on loopback ports in its own directory, driven with its own lncli."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from itest.btcd import Btcd
from itest.build import Generation, LndBinaries
from itest.process import Process, ProcessError, wait_for
from itest.rpc import NodeRpc
from lndmailbox.store import free_port

# What every node of the custom generation needs for onion messages to reach
# SubscribeCustomMessages and for the node to advertise option_onion_messages (bit 39).
CUSTOM_PROTOCOL_ARGS = (
    "--protocol.custom-message=513",
    "--protocol.custom-init=39",
    "--protocol.custom-nodeann=39",
)
# LSPS0's feature bit (bLIP-50), in init and the node announcement, on every generation:
# the LSP serves LSPS0 and LSPS5 through the mailbox (docs/lnd.md).
LSPS0_PROTOCOL_ARGS = ("--protocol.custom-init=729", "--protocol.custom-nodeann=729")


class LncliError(Exception):
    """lncli exited non-zero; ``stderr`` holds lnd's answer (``[lncli] rpc error: ...``)."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


class LndNode:
    """lnd with ``--noseedbackup`` against a :class:`Btcd`, gRPC on a free loopback port.

    ``listen=False`` runs it like a phone wallet: no inbound connections, so it is online to
    the LSP exactly while it keeps an outbound connection (``lncli connect``) open.
    """

    def __init__(
        self,
        name: str,
        binaries: LndBinaries,
        generation: Generation,
        btcd: Btcd,
        workdir: Path,
        log_dir: Path,
        *,
        listen: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.binaries = binaries
        self.generation = generation
        self.btcd = btcd
        self.lnddir = workdir
        self.listen = listen
        self.extra_args = tuple(extra_args)
        self.p2p_port = free_port()
        self.rpc_port = free_port()
        self.process = Process(f"lnd-{name}", [], log_dir / f"lnd-{name}.stdout.log")
        self.pubkey_hex = ""

    # Paths and addresses ---------------------------------------------------------------------

    @property
    def rpcserver(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    @property
    def p2p_address(self) -> str:
        return f"127.0.0.1:{self.p2p_port}"

    @property
    def p2p_address_ipv6(self) -> str:
        """The same port on IPv6 loopback. lnd takes a peer whose address contains
        "127.0.0.1" for one that came through a local Tor proxy and triples its ping interval
        and pong timeout (peer/brontide.go, isTorConnection); over ``[::1]`` a peer gets the
        timeouts of a clearnet one."""
        return f"[::1]:{self.p2p_port}"

    @property
    def tls_cert_path(self) -> Path:
        return self.lnddir / "tls.cert"

    @property
    def macaroon_dir(self) -> Path:
        return self.lnddir / "data" / "chain" / "bitcoin" / "regtest"

    @property
    def admin_macaroon_path(self) -> Path:
        return self.macaroon_dir / "admin.macaroon"

    @property
    def log_file(self) -> Path:
        """lnd's own log (more detail than its stdout)."""
        return self.lnddir / "logs" / "bitcoin" / "regtest" / "lnd.log"

    @property
    def pubkey(self) -> bytes:
        return bytes.fromhex(self.pubkey_hex)

    @property
    def uri(self) -> str:
        return f"{self.pubkey_hex}@{self.p2p_address}"

    # Life cycle ------------------------------------------------------------------------------

    def _argv(self) -> list[str]:
        argv = [
            str(self.binaries.lnd),
            f"--lnddir={self.lnddir}",
            f"--alias={self.name}",
            "--noseedbackup",
            "--bitcoin.regtest",
            "--bitcoin.node=btcd",
            f"--btcd.rpchost={self.btcd.rpc_host}",
            f"--btcd.rpcuser={self.btcd.user}",
            f"--btcd.rpcpass={self.btcd.password}",
            f"--btcd.rpccert={self.btcd.rpc_cert}",
            f"--rpclisten={self.rpcserver}",
            "--norest",
            "--debuglevel=debug",
            # A channel is open after one confirmation, gossip and reconnects are quick.
            "--bitcoin.defaultchanconfs=1",
            "--trickledelay=50",
            "--minbackoff=200ms",
            "--maxbackoff=2s",
            # Negotiated by both ends, it gives every private channel an SCID alias, as LSPs'
            # users' channels have: a phone wallet names the channel by it in its paths.
            "--protocol.option-scid-alias",
            # Lets the LSP open channels to phones that they can use before any confirmation,
            # as LSPs do; an lnd that accepts one still needs a ChannelAcceptor to agree.
            "--protocol.zero-conf",
        ]
        if self.listen:
            argv += [f"--listen={self.p2p_address}", f"--listen={self.p2p_address_ipv6}"]
        else:
            argv.append("--nolisten")
        if self.generation is Generation.CUSTOM:
            argv.extend(CUSTOM_PROTOCOL_ARGS)
        argv.extend(LSPS0_PROTOCOL_ARGS)
        argv.extend(self.extra_args)
        return argv

    def start(self, timeout: float = 90.0) -> None:
        self.lnddir.mkdir(parents=True, exist_ok=True)
        self.process.argv = self._argv()
        self.process.start()
        wait_for(
            f"lnd {self.name} to answer GetInfo",
            self._answers,
            timeout=timeout,
            interval=0.3,
            alive=[self.process],
        )

    def _answers(self) -> bool:
        if not self.admin_macaroon_path.exists():
            return False
        info = self.lncli("getinfo")
        self.pubkey_hex = str(info["identity_pubkey"])
        return True

    def stop(self) -> None:
        self.process.stop(timeout=60)

    def restart(self) -> None:
        self.stop()
        self.start()

    def rpc(self, macaroon: Path | None = None) -> NodeRpc:
        """gRPC stubs on a new channel (admin macaroon unless one is given); close it after."""
        return NodeRpc(self.rpcserver, self.tls_cert_path, macaroon or self.admin_macaroon_path)

    # lncli -----------------------------------------------------------------------------------

    def lncli_argv(self, *args: str) -> list[str]:
        return [
            str(self.binaries.lncli),
            f"--lnddir={self.lnddir}",
            f"--rpcserver={self.rpcserver}",
            "--network=regtest",
            *args,
        ]

    def lncli(self, *args: str, timeout: float = 60.0) -> Any:
        """Runs one lncli command and returns its JSON answer (``{}`` when it printed none)."""
        out = self.lncli_text(*args, timeout=timeout).strip()
        return json.loads(out) if out else {}

    def lncli_text(self, *args: str, timeout: float = 60.0) -> str:
        """Runs one lncli command and returns what it printed."""
        result = subprocess.run(
            self.lncli_argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise LncliError(
                f"lncli {' '.join(args)} on {self.name} failed: {result.stderr.strip()}",
                result.stderr,
            )
        return result.stdout

    def getinfo(self) -> dict[str, Any]:
        info: dict[str, Any] = self.lncli("getinfo")
        return info

    def new_address(self) -> str:
        address: str = self.lncli("newaddress", "p2wkh")["address"]
        return address

    def peers(self) -> set[str]:
        return {str(p["pub_key"]) for p in self.lncli("listpeers")["peers"]}

    def is_connected(self, other: LndNode) -> bool:
        return other.pubkey_hex in self.peers()

    def connect(self, other: LndNode) -> None:
        """``lncli connect``; retried while either lnd is still starting its server."""

        def attempt() -> bool:
            try:
                self.lncli("connect", other.uri, timeout=30)
            except LncliError as e:
                if "already connected" in e.stderr:
                    return True
                if "still in the process of starting" in e.stderr:
                    return False
                raise
            return True

        wait_for(
            f"{self.name} to connect to {other.name}",
            attempt,
            timeout=60,
            interval=0.5,
            alive=[self.process, other.process],
            retry_on=(),
        )

    def disconnect(self, other: LndNode) -> None:
        try:
            self.lncli("disconnect", other.pubkey_hex)
        except LncliError as e:
            if "not connected" not in e.stderr:
                raise

    def wait_synced(self, height: int, timeout: float = 60.0) -> None:
        def synced() -> bool:
            info = self.getinfo()
            return bool(info["synced_to_chain"]) and int(info["block_height"]) >= height

        wait_for(
            f"lnd {self.name} to sync to {height}", synced, timeout=timeout, alive=[self.process]
        )

    def channels(self, other: LndNode | None = None, *, active_only: bool = False) -> list[Any]:
        args = ["listchannels"]
        if other is not None:
            args += ["--peer", other.pubkey_hex]
        if active_only:
            args.append("--active_only")
        channels: list[Any] = self.lncli(*args)["channels"]
        return channels

    def bake_macaroon(self, permissions: Sequence[str], path: Path) -> bytes:
        """``lncli bakemacaroon --save_to PATH perm...``; returns the macaroon bytes."""
        self.lncli_text("bakemacaroon", f"--save_to={path}", *permissions)
        if not path.exists():
            raise ProcessError(f"lncli bakemacaroon did not write {path}")
        return path.read_bytes()
