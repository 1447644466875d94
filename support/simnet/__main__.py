"""``python -m simnet``: run a stand-in lnd until SIGINT/SIGTERM.

It writes its credentials into ``--dir`` the way an lnd directory holds them, so the
mailbox can be pointed at it with either set of flags::

    python -m simnet --dir /tmp/sim --port 10009 --peer alice --peer bob
    lndmailbox --rpcserver 127.0.0.1:10009 --lnddir /tmp/sim --network regtest ...
    lndmailbox --rpcserver 127.0.0.1:10009 --tlscertpath /tmp/sim/tls.cert \\
               --macaroonpath /tmp/sim/admin.macaroon ...

The node key, macaroon root key and certificate are kept in ``--dir`` and reused, so a
restarted simnet is the same node with the same credentials (like a restarted lnd).

Commands on standard input, one per line: ``add NAME``, ``connect NAME``, ``disconnect
NAME``, ``peers``, ``send FROM TO TEXT`` (FROM sends TO a message through this node, TEXT
in payload record 65537), ``received NAME`` (NAME peels what it received), ``help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from lndmailbox.errors import OnionError
from lndmailbox.onion import Receive, message_via
from lndmailbox.onion.tlv import format_scid, scid
from simnet.node import (
    OnionRateLimits,
    Personality,
    SimnetError,
    SimNode,
    SimPeer,
)
from simnet.tls import TlsPair, generate_tls_pair

TEXT_RECORD = 65537
HELP = """\
add NAME              a new peer with a channel (offline)
connect NAME          the peer connects (PEER_ONLINE)
disconnect NAME       the peer disconnects (PEER_OFFLINE)
peers                 list peers
send FROM TO TEXT     FROM sends TO an onion message through this node (TEXT in record 65537)
received NAME         NAME peels every onion message it received"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simnet",
        description="A stand-in lnd (gRPC over TLS, lnd's macaroons) with simulated peers.",
    )
    p.add_argument(
        "--personality",
        choices=[x.value for x in Personality],
        default=Personality.LND_0_21.value,
        help="which lnd to imitate (default %(default)s)",
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default %(default)s)")
    p.add_argument("--port", type=int, default=0, help="RPC port (default: a free one)")
    p.add_argument("--dir", type=Path, help="where credentials live (default: a new temp dir)")
    p.add_argument("--network", default="regtest", help="network name (default %(default)s)")
    p.add_argument("--alias", default="simnet", help="node alias (default %(default)s)")
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME",
        help="a peer with a channel, connected at start (repeatable)",
    )
    p.add_argument(
        "--custom-513",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="lnd's protocol.custom-message=513, and on 0.20 custom-init/custom-nodeann=39 "
        "(default: on for 0.20, off for 0.21)",
    )
    p.add_argument(
        "--relay-all",
        action="store_true",
        help="lnd 0.21's protocol.onion-msg-relay-all: accept onion messages from "
        "peers without a channel",
    )
    p.add_argument(
        "--no-rate-limit", action="store_true", help="switch off lnd 0.21's onion token buckets"
    )
    p.add_argument("--json", action="store_true", help="print one JSON line when ready")
    return p


def _load_or_create(directory: Path) -> tuple[bytes, bytes, TlsPair]:
    """Node secret, macaroon root key and TLS pair from ``directory``, created when absent."""
    directory.mkdir(parents=True, exist_ok=True)
    node_file = directory / "simnet-node.key"
    root_file = directory / "simnet-macaroon-root.key"
    cert_file, key_file = directory / "tls.cert", directory / "tls.key"
    if node_file.exists():
        secret = bytes.fromhex(node_file.read_text().strip())
    else:
        secret = SimNode().secret
        node_file.write_text(secret.hex() + "\n")
        node_file.chmod(0o600)
    if root_file.exists():
        root_key = bytes.fromhex(root_file.read_text().strip())
    else:
        root_key = os.urandom(32)
        root_file.write_text(root_key.hex() + "\n")
        root_file.chmod(0o600)
    if cert_file.exists() and key_file.exists():
        tls = TlsPair(cert_file.read_bytes(), key_file.read_bytes())
    else:
        tls = generate_tls_pair()
        cert_file.write_bytes(tls.cert_pem)
        key_file.write_bytes(tls.key_pem)
        key_file.chmod(0o600)
    return secret, root_key, tls


class _Console:
    """The line commands read from standard input."""

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self.tasks: set[asyncio.Task[None]] = set()

    def add_peer(self, name: str) -> SimPeer:
        peer = self.node.add_peer(name)
        self.node.open_channel(peer, scid(100 + len(self.node.channels), 1, 0))
        return peer

    def describe(self, peer: SimPeer) -> str:
        scids = [
            format_scid(s) for c in self.node.channels if c.peer == peer.pubkey for s in c.all_scids
        ]
        state = "online " if peer.online else "offline"
        return f"{peer.name:<12} {state} {peer.pubkey.hex()} scid {','.join(scids) or '-'}"

    def handle(self, line: str) -> None:
        words = line.split(maxsplit=3)
        if not words:
            return
        cmd, args = words[0], words[1:]
        try:
            if cmd == "add" and len(args) == 1:
                print(self.describe(self.add_peer(args[0])))
            elif cmd == "connect" and len(args) == 1:
                self.node.peer(args[0]).connect()
            elif cmd == "disconnect" and len(args) == 1:
                self.node.peer(args[0]).disconnect()
            elif cmd == "peers":
                for peer in self.node.peers.values():
                    print(self.describe(peer))
            elif cmd == "send" and len(args) == 3:
                self._spawn(self._send(self.node.peer(args[0]), self.node.peer(args[1]), args[2]))
            elif cmd == "received" and len(args) == 1:
                self._spawn(self._received(self.node.peer(args[0])))
            else:
                print(HELP)
        except (KeyError, SimnetError) as e:
            print(f"error: {e}")
        sys.stdout.flush()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, sender: SimPeer, recipient: SimPeer, text: str) -> None:
        _, msg = message_via([self.node.pubkey, recipient.pubkey], {TEXT_RECORD: text.encode()})
        try:
            result = await sender.send_onion_message(msg)
        except SimnetError as e:
            print(f"error: {e}")
        else:
            target = self.node.peers.get(result.forwarded_to or b"")
            print(
                f"sent: published={result.published} "
                f"forwarded_to={target.name if target else '-'} "
                f"dropped={result.drop_reason or '-'}"
            )
        sys.stdout.flush()

    async def _received(self, peer: SimPeer) -> None:
        for i, msg in enumerate(peer.received):
            try:
                action = await peer.peel(msg)
            except OnionError as e:
                print(f"{i}: cannot peel ({e.reason})")
                continue
            if isinstance(action, Receive):
                text = action.payload.get(TEXT_RECORD, b"").decode("utf-8", "replace")
                print(f"{i}: for {peer.name}: {text!r}")
            else:
                print(f"{i}: to forward: {action}")
        sys.stdout.flush()


async def _run(args: argparse.Namespace) -> int:
    directory: Path = args.dir or Path(tempfile.mkdtemp(prefix="simnet-"))
    secret, root_key, tls = _load_or_create(directory)
    node = SimNode(
        Personality(args.personality),
        alias=args.alias,
        host=args.host,
        port=args.port,
        node_secret=secret,
        tls=tls,
        macaroon_root_key=root_key,
        custom_message_513=args.custom_513,
        onion_msg_relay_all=args.relay_all,
        onion_rate_limits=None if args.no_rate_limit else OnionRateLimits(),
        network=args.network,
    )
    await node.start()
    cert_path, mac_path = node.write_credentials(directory)
    # Also where lncli (and the mailbox's --lnddir/--network defaults) look for it.
    lnd_mac = directory / "data" / "chain" / "bitcoin" / args.network / "admin.macaroon"
    lnd_mac.parent.mkdir(parents=True, exist_ok=True)
    lnd_mac.write_bytes(node.admin_macaroon)
    lnd_mac.chmod(0o600)

    console = _Console(node)
    for name in args.peer:
        console.add_peer(name).connect()

    if args.json:
        print(
            json.dumps(
                {
                    "rpcserver": node.target,
                    "tlscertpath": str(cert_path),
                    "macaroonpath": str(mac_path),
                    "lnddir": str(directory),
                    "network": args.network,
                    "identity_pubkey": node.pubkey.hex(),
                    "version": node.personality.version,
                    "peers": {p.name: p.pubkey.hex() for p in node.peers.values()},
                }
            )
        )
    else:
        print(f"simnet lnd {node.personality.version} ({node.alias}) {node.pubkey.hex()}")
        print(f"rpcserver:    {node.target}")
        print(f"tlscertpath:  {cert_path}")
        print(f"macaroonpath: {mac_path}")
        print(f"lnddir:       {directory} (--network {args.network})")
        for peer in node.peers.values():
            print("peer:", console.describe(peer))
        print("commands on stdin (help lists them): add connect disconnect peers send received")
    sys.stdout.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    # Raw reads on the descriptor: a buffered readline() would hide a second line that
    # arrived with the first one from the event loop.
    reading = False
    pending = bytearray()
    if sys.stdin is not None and not sys.stdin.closed:
        stdin_fd = sys.stdin.fileno()

        def on_input() -> None:
            chunk = os.read(stdin_fd, 65536)
            if not chunk:
                loop.remove_reader(stdin_fd)
                chunk = b"\n"
            pending.extend(chunk)
            while b"\n" in pending:
                line, _, rest = bytes(pending).partition(b"\n")
                pending[:] = rest
                console.handle(line.decode("utf-8", "replace").strip())

        # Fails for a regular file or /dev/null (epoll refuses those): then no commands.
        with contextlib.suppress(OSError, ValueError):
            loop.add_reader(stdin_fd, on_input)
            reading = True

    try:
        await stop.wait()
    finally:
        if reading:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(sys.stdin.fileno())
        await node.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
