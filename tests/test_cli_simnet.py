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

from lndmailbox.onion.tlv import scid
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


# --- SCID aliases lnd >= 0.21 cannot forward by ---------------------------------------------

ONLY_0_21 = pytest.mark.parametrize("lnd", [Personality.LND_0_21], indirect=True, ids=["0.21"])
BOB_REAL, BOB_ALIAS = scid(800_000, 1, 0), scid(16_000_000, 0, 1)
ALICE_ALIAS = scid(16_000_000, 0, 2)


def open_channels(lnd: Lnd) -> None:
    """bob's channel confirmed before use (lnd 0.21 cannot forward by its alias); alice's
    is zero-conf with scid-alias, as an LSP opens to a phone (lnd forwards by its alias)."""
    lnd.node.open_channel(lnd.bob, BOB_REAL, [BOB_ALIAS])
    lnd.node.open_channel(
        lnd.alice, ALICE_ALIAS, zero_conf=True, confirmed_scid=scid(800_000, 2, 0)
    )


def alias_line(out: str) -> str | None:
    lines = [line for line in out.splitlines() if line.startswith("scid aliases  ")]
    assert len(lines) <= 1
    return lines[0].removeprefix("scid aliases").strip() if lines else None


@ONLY_0_21
async def test_status_warns_of_aliases_lnd_cannot_resolve(ctl: Ctl, lnd: Lnd, store: Store) -> None:
    open_channels(lnd)
    carol = lnd.node.add_peer("carol")
    lnd.node.open_channel(carol, scid(800_000, 3, 0), [scid(16_000_000, 0, 3)])

    r = await ctl("status")

    assert r.code == 0, r.err
    assert alias_line(r.out) == (
        f"warning: 2 private channels (2 peers) with SCID aliases lnd cannot resolve: "
        f"{lnd.bob.pubkey.hex()} 16000000x0x1, {carol.pubkey.hex()} 16000000x0x3; if these "
        "peers are phones on LDK, their blinded paths name the LSP's hop by these aliases and "
        "lnd drops those onion messages before the mailbox sees them: open phones zero-conf "
        "scid-alias channels"
    )
    doc = (await ctl("status", "--json")).json()
    assert doc["unresolvable_aliases"] == {
        "checked": True,
        "channels": [
            {
                "peer": lnd.bob.pubkey.hex(),
                "channel_point": lnd.node.channels[0].channel_point,
                "chan_id": "800000x1x0",
                "aliases": ["16000000x0x1"],
            },
            {
                "peer": carol.pubkey.hex(),
                "channel_point": lnd.node.channels[2].channel_point,
                "chan_id": "800000x3x0",
                "aliases": ["16000000x0x3"],
            },
        ],
    }


@ONLY_0_21
async def test_status_names_a_few_channels_and_counts_the_rest(ctl: Ctl, lnd: Lnd) -> None:
    for i in range(5):
        phone = lnd.node.add_peer(f"phone{i}")
        lnd.node.open_channel(phone, scid(800_000, 10 + i, 0), [scid(16_000_000, 1, i)])
    line = alias_line((await ctl("status")).out)
    assert line is not None
    assert line.startswith(
        "warning: 5 private channels (5 peers) with SCID aliases lnd cannot resolve: "
    )
    assert "16000000x1x2 and 2 more channels; if these peers" in line
    assert "16000000x1x3" not in line


@ONLY_0_21
async def test_status_with_only_zero_conf_phones_is_ok(ctl: Ctl, lnd: Lnd) -> None:
    lnd.node.open_channel(lnd.alice, ALICE_ALIAS, zero_conf=True)
    lnd.node.open_channel(lnd.bob, BOB_REAL)  # no alias at all: nothing to resolve
    carol = lnd.node.add_peer("carol")  # a routing node: its public channel is not checked
    lnd.node.open_channel(carol, scid(800_000, 3, 0), [scid(16_000_000, 0, 3)], private=False)
    assert alias_line((await ctl("status")).out) == (
        "ok: lnd forwards by every alias of every private channel"
    )
    doc = (await ctl("status", "--json")).json()
    assert doc["unresolvable_aliases"] == {"checked": True, "channels": []}


@ONLY_0_21
async def test_a_macaroon_without_offchain_read_leaves_the_check_undone(
    ctl: Ctl, lnd: Lnd, tmp_path: Path
) -> None:
    open_channels(lnd)
    narrow = tmp_path / "info.macaroon"
    narrow.write_bytes(lnd.node.bake_macaroon(["info:read", "peers:read"]))
    ctl.flags[ctl.flags.index("--macaroonpath") + 1] = str(narrow)

    r = await ctl("status")

    assert r.code == 0, r.err
    line = alias_line(r.out)
    assert line is not None
    assert line.startswith("not checked (ListChannels needs offchain:read")
    doc = (await ctl("status", "--json")).json()
    assert doc["unresolvable_aliases"]["checked"] is False
    assert doc["unresolvable_aliases"]["error"].startswith("ListChannels needs offchain:read")


async def test_the_custom_transport_has_no_alias_check(ctl: Ctl, lnd: Lnd) -> None:
    """lnd 0.20 hands the mailbox every message and the mailbox resolves every alias: no
    line, no JSON field. On 0.21 the same channels draw the warning."""
    open_channels(lnd)
    r = await ctl("status")
    doc = (await ctl("status", "--json")).json()
    if lnd.node.personality is Personality.LND_0_20:
        assert alias_line(r.out) is None
        assert "unresolvable_aliases" not in doc
    else:
        line = alias_line(r.out)
        assert line is not None
        assert line.startswith("warning: 1 private channel (1 peer) with SCID aliases lnd ")
        assert [c["peer"] for c in doc["unresolvable_aliases"]["channels"]] == [
            lnd.bob.pubkey.hex()
        ]


@ONLY_0_21
async def test_the_check_is_of_the_node_asked_for(ctl: Ctl, lnd: Lnd) -> None:
    """With --node another node than lnd's, lnd's channels say nothing of it."""
    open_channels(lnd)
    r = await ctl("--node", NODE.hex(), "status")
    assert r.code == 0, r.err
    assert (
        alias_line(r.out) == f"not checked (lnd serves {lnd.node.pubkey.hex()}, not {NODE.hex()})"
    )
    doc = (await ctl("--node", NODE.hex(), "--json", "status")).json()
    assert doc["unresolvable_aliases"] == {
        "checked": False,
        "error": f"lnd serves {lnd.node.pubkey.hex()}, not {NODE.hex()}",
    }
    assert lnd.node.calls.get("ListChannels", 0) == 0


async def test_a_refused_get_info_is_said_as_lnd_said_it(
    ctl: Ctl, lnd: Lnd, store: Store, tmp_path: Path
) -> None:
    """Not "unreachable": lnd answered, and refused the macaroon."""
    narrow = tmp_path / "peers.macaroon"
    narrow.write_bytes(lnd.node.bake_macaroon(["peers:read", "offchain:read"]))
    ctl.flags[ctl.flags.index("--macaroonpath") + 1] = str(narrow)

    r = await ctl("--node", lnd.node.pubkey.hex(), "status")

    assert r.code == 0, r.err
    line = alias_line(r.out)
    assert line is not None
    assert line.startswith("not checked (GetInfo needs info:read: the macaroon "), line
    assert "unreachable" not in line
    doc = (await ctl("--node", lnd.node.pubkey.hex(), "--json", "status")).json()
    assert doc["unresolvable_aliases"] == {"checked": False, "error": doc["lnd"]["error"]}
    assert f"unreachable ({doc['lnd']['error']})" in r.out  # the lnd line, with the same reason
