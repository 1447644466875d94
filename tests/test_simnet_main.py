"""``python -m simnet``: standalone, credentials on disk, peers on stdin, SIGINT."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from lndmailbox.lnd.lnrpc import lightning_pb2 as ln
from lndmailbox.lnd.lnrpc import lightning_pb2_grpc as ln_grpc


class Simnet:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(20):
            raw = await self.proc.stdout.readline()
        assert raw, "simnet exited early"
        return raw.decode().rstrip("\n")

    async def until(self, prefix: str) -> str:
        while True:
            line = await self.line()
            if line.startswith(prefix):
                return line

    async def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            await self.proc.communicate()
        assert self.proc.returncode is not None
        return self.proc.returncode


async def start(directory: Path, *args: str) -> tuple[Simnet, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simnet",
        "--json",
        "--dir",
        str(directory),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    sim = Simnet(proc)
    ready: dict[str, Any] = json.loads(await sim.line())
    return sim, ready


async def get_info_and_peers(
    ready: dict[str, Any], cert: bytes, macaroon: bytes
) -> tuple[Any, Any]:
    creds = grpc.ssl_channel_credentials(root_certificates=cert)
    async with grpc.aio.secure_channel(ready["rpcserver"], creds) as channel:
        stub = ln_grpc.LightningStub(channel)
        md = (("macaroon", macaroon.hex()),)
        info = await stub.GetInfo(ln.GetInfoRequest(), metadata=md, timeout=10)
        peers = await stub.ListPeers(ln.ListPeersRequest(), metadata=md, timeout=10)
    return info, peers


async def test_standalone_simnet(tmp_path: Path) -> None:
    sim, ready = await start(tmp_path, "--personality", "0.21", "--peer", "alice", "--peer", "bob")
    try:
        assert ready["version"] == "0.21.3-beta commit=v0.21.3-beta"
        info, peers = await get_info_and_peers(
            ready, (tmp_path / "tls.cert").read_bytes(), (tmp_path / "admin.macaroon").read_bytes()
        )
        assert Path(ready["tlscertpath"]) == tmp_path / "tls.cert"
        assert Path(ready["macaroonpath"]) == tmp_path / "admin.macaroon"
        assert info.identity_pubkey == ready["identity_pubkey"]
        assert {p.pub_key for p in peers.peers} == set(ready["peers"].values())

        await sim.command("send alice bob hello there")
        assert await sim.until("sent:") == "sent: published=True forwarded_to=bob dropped=-"
        await sim.command("received bob")
        assert await sim.until("0:") == "0: for bob: 'hello there'"
        await sim.command("disconnect bob")
        await sim.command("peers")
        assert (await sim.until("bob")).split()[1] == "offline"
    finally:
        assert await sim.interrupt() == 0

    # Restarted on the same directory: the same node, and lncli's macaroon path works.
    sim, again = await start(tmp_path, "--personality", "0.20")
    try:
        assert again["identity_pubkey"] == ready["identity_pubkey"]
        assert again["version"] == "0.20.2-beta commit=v0.20.2-beta"
        lnd_layout = tmp_path / "data" / "chain" / "bitcoin" / "regtest" / "admin.macaroon"
        info, peers = await get_info_and_peers(
            again, (tmp_path / "tls.cert").read_bytes(), lnd_layout.read_bytes()
        )
        assert info.identity_pubkey == ready["identity_pubkey"]
        assert list(peers.peers) == []
    finally:
        assert await sim.interrupt() == 0
