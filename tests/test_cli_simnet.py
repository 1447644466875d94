"""mailboxctl where it asks lnd: simnet (a real gRPC server with TLS and macaroons) plays lnd.

The node's identity comes from GetInfo when no --node is given, and ``peers`` asks
ListPeers who is online. The SimNode serves from the test's event loop while ``main``
runs its own loop in a worker thread, as it would in a separate process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from simnet import Personality, SimNode, SimPeer

from lndmailbox.store import Store
from tests.test_cli import NODE, Run, put, run_main
from tests.test_cli import _clean_environment as _clean_environment  # autouse fixture


@dataclass
class Lnd:
    node: SimNode
    alice: SimPeer
    bob: SimPeer
    cert: Path
    macaroon: Path


@pytest.fixture(params=[Personality.LND_0_21, Personality.LND_0_20], ids=["0.21", "0.20"])
async def lnd(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Lnd]:
    node = SimNode(request.param, alias="lsp-one")
    await node.start()
    cert, macaroon = node.write_credentials(tmp_path / "lnd")
    alice = node.add_peer("alice")
    bob = node.add_peer("bob", connect=True)
    try:
        yield Lnd(node, alice, bob, cert, macaroon)
    finally:
        await node.stop()


@pytest.fixture
async def store(redis_url: str, lnd: Lnd) -> AsyncIterator[Store]:
    s = Store.from_url(redis_url, lnd.node.pubkey)
    yield s
    await s.aclose()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "lndmailbox.toml"
    path.write_text("")
    return path


@dataclass
class Ctl:
    capsys: pytest.CaptureFixture[str]
    flags: list[str]

    async def __call__(self, *argv: str) -> Run:
        return await run_main(self.capsys, [*self.flags, *argv])


@pytest.fixture
def ctl(capsys: pytest.CaptureFixture[str], redis_url: str, lnd: Lnd, config_file: Path) -> Ctl:
    flags = ["--config", str(config_file), "--redis-url", redis_url]
    flags += ["--rpcserver", lnd.node.target, "--tlscertpath", str(lnd.cert)]
    flags += ["--macaroonpath", str(lnd.macaroon)]
    return Ctl(capsys, flags)


async def test_status_shows_the_node_lnd_serves(ctl: Ctl, lnd: Lnd, store: Store) -> None:
    await put(store, lnd.alice.pubkey, 60)
    transport = "native" if lnd.node.personality is Personality.LND_0_21 else "custom"

    r = await ctl("status")

    assert r.code == 0, r.err
    lines = {line.split("  ", 1)[0]: line for line in r.out.splitlines()}
    assert lines["node"].endswith(f"{lnd.node.pubkey.hex()} (from lnd)")
    assert lines["lnd"].split(maxsplit=1)[1] == (
        f'"lsp-one" {lnd.node.pubkey.hex()}, lnd {lnd.node.personality.version}, '
        f"transport {transport}"
    )
    assert lines["messages"].split()[1] == "1"

    doc = (await ctl("status", "--json")).json()
    assert doc["node"] == lnd.node.pubkey.hex()
    assert doc["node_source"] == "lnd"
    assert doc["lnd"] == {
        "reachable": True,
        "pubkey": lnd.node.pubkey.hex(),
        "alias": "lsp-one",
        "version": lnd.node.personality.version,
        "transport": transport,
        "network": "regtest",
        "synced_to_chain": doc["lnd"]["synced_to_chain"],
    }
    assert doc["mail"]["messages"] == 1


async def test_peers_shows_who_is_online(ctl: Ctl, lnd: Lnd, store: Store) -> None:
    await put(store, lnd.alice.pubkey, 600)
    await put(store, lnd.bob.pubkey, 60)
    await store.allowlist.add([lnd.alice.pubkey])

    r = await ctl("peers")

    assert r.code == 0
    assert r.err == ""
    rows = {row.split()[0]: row.split() for row in r.out.splitlines()[1:]}
    assert rows[lnd.alice.pubkey.hex()][1] == "no"
    assert rows[lnd.alice.pubkey.hex()][-1] == "yes"
    assert rows[lnd.bob.pubkey.hex()][1] == "yes"
    assert rows[lnd.bob.pubkey.hex()][-1] == "no"

    lnd.alice.connect()
    lnd.bob.disconnect()
    doc = (await ctl("peers", "--json")).json()
    assert doc["online_known"] is True
    assert {p["peer"]: p["online"] for p in doc["peers"]} == {
        lnd.alice.pubkey.hex(): True,
        lnd.bob.pubkey.hex(): False,
    }


async def test_commands_open_the_mailbox_of_the_node_lnd_serves(
    ctl: Ctl, lnd: Lnd, store: Store
) -> None:
    r = await ctl("allow", "add", lnd.alice.pubkey.hex())
    assert r.code == 0, r.err
    assert await store.allowlist.members() == [lnd.alice.pubkey]


async def test_another_node_given_with_node_is_not_mixed_with_lnds(
    ctl: Ctl, lnd: Lnd, redis_url: str
) -> None:
    async with Store.from_url(redis_url, NODE) as other:
        await put(other, lnd.bob.pubkey, 60)

    r = await ctl("--node", NODE.hex(), "peers")
    assert r.code == 0
    assert r.err == (
        f"mailboxctl: online status unknown: lnd serves {lnd.node.pubkey.hex()}, not {NODE.hex()}\n"
    )
    assert r.out.splitlines()[1].split()[:2] == [lnd.bob.pubkey.hex(), "?"]

    r = await ctl("--node", NODE.hex(), "status")
    assert "(another node than the one shown here)" in r.out
    assert f"{NODE.hex()} (from --node)" in r.out


async def test_a_macaroon_without_peers_read_leaves_online_unknown(
    ctl: Ctl, lnd: Lnd, store: Store, tmp_path: Path
) -> None:
    await put(store, lnd.alice.pubkey, 60)
    narrow = tmp_path / "info.macaroon"
    narrow.write_bytes(lnd.node.bake_macaroon(["info:read"]))
    ctl.flags[ctl.flags.index("--macaroonpath") + 1] = str(narrow)

    r = await ctl("peers")

    assert r.code == 0
    assert r.err.startswith("mailboxctl: online status unknown: ListPeers needs peers:read")
    assert r.out.splitlines()[1].split()[:2] == [lnd.alice.pubkey.hex(), "?"]
