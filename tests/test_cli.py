"""mailboxctl through ``main(argv)`` against the real Redis fixture, lnd unreachable.

Each test puts its data in Redis through :class:`Store`, runs ``main`` in a worker thread
(it calls ``asyncio.run`` itself) and reads what it printed. lnd is a closed port on
127.0.0.1 unless a test says otherwise (simnet tests: test_cli_simnet.py), so these tests
also show that nothing but ``status`` and ``peers`` needs lnd, and those degrade.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis
from simnet import generate_tls_pair

import lndmailbox.cli.session
from lndmailbox.cli import main
from lndmailbox.cli.session import NodeSource
from lndmailbox.cli.status import LndStatus, RedisStatus, Status, render_status
from lndmailbox.lnd import NodeInfo
from lndmailbox.onion import LocalNodeKey, message_via
from lndmailbox.onion.inspect import packet_fields
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.store import NewMessage, Store, StoredMessage
from lndmailbox.store.audit import audit
from lndmailbox.store.embedded import free_port

WAIT = 10.0


def key(n: int) -> LocalNodeKey:
    return LocalNodeKey(n.to_bytes(32, "big"))


NODE = key(1).pubkey
ALICE = key(2).pubkey
BOB = key(3).pubkey
CAROL = key(4).pubkey
SENDER = key(5).pubkey


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Ctl:
    """Runs mailboxctl with connection flags for the test's Redis and an unreachable lnd."""

    capsys: pytest.CaptureFixture[str]
    redis_url: str
    store: Store
    lnd_flags: list[str]
    config: Path

    def flags(self, *, node: bytes | None = NODE, redis_url: str | None = None) -> list[str]:
        out = ["--config", str(self.config), "--redis-url", redis_url or self.redis_url]
        out += self.lnd_flags
        if node is not None:
            out += ["--node", node.hex()]
        return out

    async def __call__(
        self, *argv: str, node: bytes | None = NODE, redis_url: str | None = None
    ) -> Run:
        return await run_main(self.capsys, [*self.flags(node=node, redis_url=redis_url), *argv])


async def run_main(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Run:
    capsys.readouterr()
    code = await asyncio.wait_for(asyncio.to_thread(main, argv), WAIT)
    out, err = capsys.readouterr()
    return Run(code, out, err)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's LNDMAILBOX_* variables must not leak into the tests."""
    for name in list(os.environ):
        if name.startswith("LNDMAILBOX_"):
            monkeypatch.delenv(name)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "lndmailbox.toml"
    path.write_text("")
    return path


@pytest.fixture
def closed_lnd(tmp_path: Path) -> list[str]:
    """Flags for an lnd that does not answer: valid credentials, a port nobody listens on."""
    cert = tmp_path / "tls.cert"
    cert.write_bytes(generate_tls_pair().cert_pem)
    return [
        "--rpcserver",
        f"127.0.0.1:{free_port()}",
        "--tlscertpath",
        str(cert),
        "--macaroon",
        "00ff",
    ]


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    s = Store.from_url(redis_url, NODE)
    yield s
    await s.aclose()


@pytest.fixture
def ctl(
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    store: Store,
    closed_lnd: list[str],
    config_file: Path,
) -> Ctl:
    return Ctl(capsys, redis_url, store, closed_lnd, config_file)


@pytest.fixture
def cli_now(monkeypatch: pytest.MonkeyPatch) -> float:
    """Stops mailboxctl's clock at this moment, so that ages it prints in whole seconds
    do not depend on how long a loaded machine takes to get the command going."""
    now = float(int(time.time()))  # whole, as the store keeps times to the millisecond
    monkeypatch.setattr(lndmailbox.cli.session, "time", SimpleNamespace(time=lambda: now))
    return now


async def put(
    store: Store,
    peer: bytes,
    age: float,
    *,
    ttl: float | None = None,
    now: float | None = None,
) -> tuple[StoredMessage, OnionMessage]:
    """Queues a real onion message for ``peer``, received ``age`` seconds before ``now``."""
    _, msg = message_via([peer])
    received_at = (time.time() if now is None else now) - age
    (result,) = await store.queues.put_many(
        [NewMessage(peer, SENDER, msg.path_key, msg.onion, received_at)], ttl=ttl
    )
    assert result.message is not None
    return result.message, msg


# --------------------------------------------------------------------------- status


async def test_status_with_lnd_unreachable_shows_redis_daemon_totals_and_counters(
    ctl: Ctl, store: Store
) -> None:
    oldest, _ = await put(store, ALICE, 3600)
    await put(store, ALICE, 60)
    await put(store, BOB, 600)
    assert await store.queues.move_delivered([oldest], int(time.time() * 1000)) == 1
    # the three puts count as stored themselves, the move as delivered
    for name, n in (("stored", 4), ("delivered", 2), ("expired", 1)):
        await store.events.record({name: n})
    await store.events.record({"dropped:not_allowed": 2})
    await store.events.record({"dropped:malformed": 1})
    await store.events.record({"received": 11})
    started = time.time() - 7200
    assert await store.control.acquire_lock("host-a:4242:abcd", 30)
    await store.control.write_heartbeat(
        {"owner": "host-a:4242:abcd", "pid": 4242, "host": "host-a", "version": "0.1.0",
         "started_at": started, "at": time.time()}
    )  # fmt: skip

    r = await ctl("status")

    assert r.code == 0, r.err
    assert r.err == ""
    lines = {line.split("  ", 1)[0].strip(): line for line in r.out.splitlines()}
    assert lines["node"].endswith(f"{NODE.hex()} (from --node)")
    assert "unreachable (GetInfo failed: UNAVAILABLE" in lines["lnd"]
    assert f"{ctl.redis_url}, version " in lines["redis"]
    assert "of it by this mailbox" in lines["redis"]
    assert "running since" in lines["daemon"]
    assert "(up 2h 00m)" in lines["daemon"]
    assert "pid 4242 on host-a, version 0.1.0, last heartbeat" in lines["daemon"]
    assert lines["peers with mail"].split() == ["peers", "with", "mail", "2"]
    assert lines["messages"].split()[:2] == ["messages", "3"]
    assert lines["unconfirmed"].split()[:4] == ["unconfirmed", "1", "of", "them"]
    assert lines["oldest message"].split()[2:5] == ["1h", "00m", "old"]
    assert lines["stored"].split() == ["stored", "7"]
    assert lines["delivered"].split() == ["delivered", "3"]
    assert lines["expired"].split() == ["expired", "1"]
    assert lines["dropped"].split() == ["dropped", "3"]
    assert "dropped          3\n  malformed      1\n  not_allowed    2\n" in r.out
    assert lines["other counters"].endswith("received 11")


async def test_status_json_has_every_value(ctl: Ctl, store: Store) -> None:
    first, _ = await put(store, ALICE, 3600)
    second, _ = await put(store, BOB, 10)
    await store.events.record({"dropped:not_allowed": 4})

    r = await ctl("status", "--json")

    assert r.code == 0, r.err
    doc = r.json()
    assert doc["node"] == NODE.hex()
    assert doc["node_source"] == "--node"
    assert doc["lnd"]["reachable"] is False
    assert "UNAVAILABLE" in doc["lnd"]["error"]
    # Not checked, for the reason the lnd part gives.
    assert doc["unresolvable_aliases"] == {"checked": False, "error": doc["lnd"]["error"]}
    redis = doc["redis"]
    assert redis["reachable"] is True
    assert redis["url"] == ctl.redis_url
    assert redis["version"]
    assert redis["used_memory"] > redis["mailbox_memory"] > 0
    assert doc["daemon"] == {
        "running": False,
        "lock_owner": None,
        "pid": None,
        "host": None,
        "version": None,
        "started_at": None,
        "last_heartbeat_at": None,
    }
    assert doc["mail"]["peers_with_mail"] == 2
    assert doc["mail"]["messages"] == 2
    assert doc["mail"]["bytes"] == first.size + second.size
    assert doc["mail"]["unconfirmed"] == 0
    assert doc["mail"]["oldest_received_at"] == pytest.approx(first.received_at, abs=0.001)
    assert doc["mail"]["oldest_age"] == pytest.approx(3600, abs=30)
    counters = doc["counters"]
    assert (counters["stored"], counters["delivered"], counters["expired"]) == (2, 0, 0)
    assert counters["dropped"] == 4
    assert counters["dropped_by_reason"] == {"not_allowed": 4}


async def test_status_of_an_empty_mailbox_without_daemon(ctl: Ctl) -> None:
    r = await ctl("status")
    assert r.code == 0, r.err
    assert "daemon           not running (no lock, no heartbeat)\n" in r.out
    assert "oldest message   -" in r.out
    assert "dropped          0" in r.out


async def test_status_tells_a_stopped_daemon_from_a_starting_one(
    ctl: Ctl, store: Store, cli_now: float
) -> None:
    # A daemon that stopped released its lock; its heartbeat lingers for a lease.
    await store.control.write_heartbeat(
        {"owner": "a", "pid": 7, "started_at": 1.0, "at": cli_now - 4}
    )
    r = await ctl("status")
    assert "daemon           not running (stopped; last heartbeat 4s ago)\n" in r.out
    daemon = (await ctl("status", "--json")).json()["daemon"]
    assert (daemon["running"], daemon["pid"], daemon["started_at"]) == (False, 7, 1.0)
    assert daemon["heartbeat"].keys() == {"owner", "pid", "started_at", "at"}
    assert daemon["heartbeat"]["pid"] == "7"

    # One that just took the lock has not beaten yet.
    await store.control.write_heartbeat({})
    assert await store.control.acquire_lock("host-b:1:ff", 30)
    r = await ctl("status")
    assert "daemon           running (lock held by host-b:1:ff; no heartbeat yet)\n" in r.out
    daemon = (await ctl("status", "--json")).json()["daemon"]
    assert (daemon["running"], daemon["lock_owner"]) == (True, "host-b:1:ff")


async def test_status_when_redis_is_unreachable_says_so_and_exits_1(ctl: Ctl) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    r = await ctl("status", redis_url=dead)
    assert r.code == 1
    # lnd is unreachable too, so the alias check could not run: its line sets the width.
    assert "scid aliases  not checked (GetInfo failed: UNAVAILABLE: " in r.out
    assert "redis         unreachable (Redis is unavailable: " in r.out
    assert r.err == "mailboxctl: Redis is unreachable\n"

    r = await ctl("--json", "status", redis_url=dead)
    assert r.code == 1
    doc = r.json()
    assert doc["redis"]["reachable"] is False
    assert "Redis is unavailable" in doc["redis"]["error"]
    assert doc["lnd"]["reachable"] is False


async def test_status_without_node_and_without_lnd_asks_for_node(ctl: Ctl) -> None:
    r = await ctl("status", node=None)
    assert r.code == 1
    assert (
        "node          unknown (lnd is unreachable, no --node was given, and Redis holds no "
        "mailbox)\n" in r.out
    )
    assert "scid aliases  not checked (GetInfo failed: UNAVAILABLE: " in r.out
    assert "(not asked: the node is unknown)" in r.out
    assert r.err == "mailboxctl: cannot tell which node's mailbox to show: pass --node PUBKEY\n"


async def test_commands_without_node_and_without_lnd_fail_with_one_line(ctl: Ctl) -> None:
    r = await ctl("peers", node=None)
    assert r.code == 1
    assert r.out == ""
    assert r.err.count("\n") == 1
    assert r.err.startswith("mailboxctl: cannot tell which node's mailbox to open: lnd is ")
    assert r.err.endswith("pass --node PUBKEY\n")


async def test_without_node_and_without_lnd_the_only_mailbox_in_redis_is_opened(
    ctl: Ctl, store: Store
) -> None:
    await put(store, ALICE, 60)
    await store.events.record({"stored": 1})
    r = await ctl("status", node=None)
    lines = {line.split()[0]: line for line in r.out.splitlines() if line.strip()}
    assert lines["node"].split(maxsplit=1)[1] == (
        f"{NODE.hex()} (the only mailbox in Redis; lnd unreachable)"
    )
    assert lines["stored"].split() == ["stored", "2"]
    r = await ctl("peers", node=None)
    assert r.code == 0
    assert "online status unknown" in r.err
    assert ALICE.hex() in r.out

    other = b"\x03" + bytes(32)
    async with Store.from_url(ctl.redis_url, other) as second:
        await second.events.record({"stored": 1})
    r = await ctl("peers", node=None)
    assert r.code == 1
    assert f"Redis holds mailboxes of {NODE.hex()}, {other.hex()}; pass --node PUBKEY\n" in r.err
    r = await ctl("--json", "status", node=None)
    assert r.code == 1
    assert r.json()["node_error"] == (
        "lnd is unreachable, no --node was given, and Redis holds mailboxes of "
        f"{NODE.hex()}, {other.hex()}"
    )


async def test_status_without_node_lnd_or_redis_says_neither_could_be_asked(ctl: Ctl) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    r = await ctl("--json", "status", node=None, redis_url=dead)
    assert r.code == 1
    why = r.json()["node_error"]
    assert why.startswith("lnd is unreachable, no --node was given, and Redis could not be asked")
    assert "Redis is unavailable" in why


async def test_redis_unreachable_is_one_line_and_exit_1(ctl: Ctl) -> None:
    r = await ctl("allow", "list", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert r.code == 1
    assert r.out == ""
    assert r.err.startswith("mailboxctl: Redis is unavailable: ")
    assert r.err.count("\n") == 1
    assert "Traceback" not in r.err


async def test_embedded_redis_not_running_says_where_it_looked(
    capsys: pytest.CaptureFixture[str], config_file: Path, tmp_path: Path
) -> None:
    datadir = tmp_path / "mailbox"
    argv = ["--config", str(config_file), "--datadir", str(datadir), "--node", NODE.hex()]
    r = await run_main(capsys, [*argv, "allow", "list"])
    assert r.code == 1
    assert f"looked for the daemon's embedded Redis at {datadir}/redis/redis.sock" in r.err


async def test_credentials_in_the_redis_url_are_not_printed(ctl: Ctl) -> None:
    dead = f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
    r = await ctl("--json", "status", redis_url=dead)
    assert r.code == 1
    assert "hunter2" not in r.out + r.err


def test_status_of_an_lnd_whose_version_does_not_name_a_transport() -> None:
    # A version lnd's numbering does not know leaves lnd reachable and the transport unknown
    # (the daemon then needs --transport); it is not mistaken for lnd being unreachable.
    info = NodeInfo(NODE, "odd", "nightly-2026", network="regtest", synced_to_chain=True)
    status = Status(LndStatus.read(info), RedisStatus("redis://x"), NODE, NodeSource.FLAG)
    doc = status.as_json()["lnd"]
    assert (doc["reachable"], doc["version"], doc["transport"]) == (True, "nightly-2026", None)
    text = render_status(status, 0.0)
    assert f'lnd    "odd" {NODE.hex()}, lnd nightly-2026, transport unknown\n' in text
    known = LndStatus.read(NodeInfo(NODE, "", "0.20.1-beta"))
    assert known.as_json()["transport"] == "custom"


# --------------------------------------------------------------------------- peers


async def test_peers_table_with_online_status_unknown(
    ctl: Ctl, store: Store, cli_now: float
) -> None:
    await put(store, ALICE, 7200, now=cli_now)
    await put(store, ALICE, 120, now=cli_now)
    await put(store, BOB, 30, ttl=600, now=cli_now)
    await store.allowlist.add([ALICE])

    r = await ctl("peers")

    assert r.code == 0
    assert r.err.startswith("mailboxctl: online status unknown: GetInfo failed: UNAVAILABLE")
    header, *rows = r.out.splitlines()
    assert header.split() == [
        "PEER", "ONLINE", "MSGS", "BYTES", "OLDEST", "NEWEST", "NEXT", "EXPIRY", "ALLOWED"
    ]  # fmt: skip
    by_peer = {row.split()[0]: row.split() for row in rows}
    # Earliest expiry first: Bob's message lives 10 minutes.
    assert [row.split()[0] for row in rows] == [BOB.hex(), ALICE.hex()]
    alice = by_peer[ALICE.hex()]
    assert alice[1:3] == ["?", "2"]
    assert alice[5:9] == ["2h", "00m", "2m", "00s"]
    assert alice[-1] == "yes"
    bob = by_peer[BOB.hex()]
    assert bob[1:3] == ["?", "1"]
    assert bob[-4:] == ["in", "9m", "30s", "no"]


async def test_peers_json(ctl: Ctl, store: Store) -> None:
    old, _ = await put(store, ALICE, 7200)
    new, _ = await put(store, ALICE, 120)
    await store.allowlist.add([BOB])

    r = await ctl("peers", "--json")

    assert r.code == 0
    doc = r.json()
    assert doc["node"] == NODE.hex()
    assert doc["online_known"] is False
    assert doc["peers"] == [
        {
            "peer": ALICE.hex(),
            "online": None,
            "messages": 2,
            "bytes": old.size + new.size,
            "oldest_received_at": pytest.approx(old.received_at, abs=0.001),
            "newest_received_at": pytest.approx(new.received_at, abs=0.001),
            "next_expiry": pytest.approx(old.expires_at, abs=0.001),
            "allowed": False,
        }
    ]


async def test_peers_when_nobody_has_mail(ctl: Ctl) -> None:
    r = await ctl("peers")
    assert (r.code, r.out, r.err) == (0, "no peer has mail\n", "")
    r = await ctl("peers", "--json")
    assert r.json() == {"node": NODE.hex(), "online_known": True, "peers": []}


# --------------------------------------------------------------------------- show


async def test_show_lists_every_message_with_its_fields(ctl: Ctl, store: Store) -> None:
    first, _ = await put(store, ALICE, 3600)
    second, _ = await put(store, ALICE, 5)
    assert await store.queues.record_attempt(first) == 1
    assert await store.queues.record_attempt(first) == 2

    r = await ctl("show", ALICE.hex())

    assert r.code == 0
    blocks = r.out.strip().split("\n\n")
    assert (
        blocks[0]
        == f"2 messages ({(first.size + second.size) / 1024:.1f} KiB) queued for {ALICE.hex()}"
    )
    assert blocks[1].splitlines()[0] == f"message {first.id}"
    fields = dict(
        line.strip().split(maxsplit=1)
        for line in blocks[1].splitlines()[1:]
        if not line.strip().startswith("path")
    )
    assert fields["size"] == f"{first.size} bytes"
    assert fields["from"] == SENDER.hex()
    assert fields["attempts"] == "2"
    assert fields["received"].endswith("(1h 00m ago)")
    assert fields["expires"].endswith("(in 23h 00m)") or fields["expires"].endswith("(in 22h 59m)")
    assert f"  path key  {first.path_key.hex()}" in blocks[1]
    assert "packet version" not in r.out
    assert blocks[2].splitlines()[0] == f"message {second.id}"


async def test_show_decode_reads_the_packet_header(ctl: Ctl, store: Store) -> None:
    stored, msg = await put(store, ALICE, 60)

    r = await ctl("show", ALICE.hex(), "--decode")

    assert r.code == 0
    assert "  packet version  0\n" in r.out
    assert f"  packet length   {len(msg.onion)} bytes\n" in r.out
    assert f"  ephemeral key   {msg.onion[1:34].hex()}\n" in r.out
    assert f"  hop payloads    {len(msg.onion) - 66} bytes (encrypted)\n" in r.out
    assert f"  hmac            {msg.onion[-32:].hex()}\n" in r.out

    doc = (await ctl("--json", "show", ALICE.hex(), "--decode")).json()
    assert doc["peer"] == ALICE.hex()
    assert doc["allowed"] is False
    (m,) = doc["messages"]
    assert m == {
        "id": stored.id,
        "state": "queued",
        "size": stored.size,
        "sender": SENDER.hex(),
        "received_at": pytest.approx(stored.received_at, abs=0.001),
        "expires_at": pytest.approx(stored.expires_at, abs=0.001),
        "expired": False,
        "redeliveries": 0,
        "attempts": 0,
        "path_key": msg.path_key.hex(),
        "packet": {
            "length": len(msg.onion),
            "version": 0,
            "ephemeral_key": msg.onion[1:34].hex(),
            "ephemeral_key_valid": True,
            "payloads_length": len(msg.onion) - 66,
            "hmac": msg.onion[-32:].hex(),
        },
    }
    doc = (await ctl("show", ALICE.hex(), "--json")).json()
    assert "packet" not in doc["messages"][0]


async def test_show_marks_expired_messages_not_yet_swept(ctl: Ctl, store: Store) -> None:
    await put(store, ALICE, 120, ttl=60)
    r = await ctl("show", ALICE.hex())
    assert "(expired, waiting for the sweep)" in r.out
    assert (await ctl("show", ALICE.hex(), "--json")).json()["messages"][0]["expired"] is True


async def test_show_lists_unconfirmed_messages_too(ctl: Ctl, store: Store) -> None:
    """What lnd took and the peer has not confirmed is still held (purge deletes it too):
    show lists it first, marked, with how often it went back to the queue."""
    first, _ = await put(store, ALICE, 60)
    second, _ = await put(store, ALICE, 30)
    third, _ = await put(store, ALICE, 10)
    await store.queues.move_delivered([first, second], int((time.time() - 20) * 1000))
    await store.queues.requeue(ALICE, 3)  # alice left: both back, redelivered once
    sent_at = time.time() - 5
    await store.queues.move_delivered([first], int(sent_at * 1000))

    r = await ctl("show", ALICE.hex())

    assert r.code == 0
    blocks = r.out.strip().split("\n\n")
    size = (first.size + second.size + third.size) / 1024
    assert blocks[0] == (
        f"3 messages ({size:.1f} KiB) held for {ALICE.hex()}: 1 delivered and unconfirmed, 2 queued"
    )
    assert [b.splitlines()[0] for b in blocks[1:]] == [
        f"message {first.id} (delivered, unconfirmed)",
        f"message {second.id}",
        f"message {third.id}",
    ]
    fields = [
        dict(line.strip().split(maxsplit=1) for line in block.splitlines()[1:])
        for block in blocks[1:]
    ]
    assert fields[0]["delivered"].endswith("(5s ago), waiting for confirmation")
    assert [f.get("redeliveries") for f in fields] == ["1", "1", None], "none: never back"
    assert "delivered" not in fields[1]

    doc = (await ctl("show", ALICE.hex(), "--json")).json()
    assert [(m["id"], m["state"], m["redeliveries"]) for m in doc["messages"]] == [
        (first.id, "unconfirmed", 1),
        (second.id, "queued", 1),
        (third.id, "queued", 0),
    ]
    assert doc["messages"][0]["delivered_at"] == pytest.approx(sent_at, abs=0.001)
    assert "delivered_at" not in doc["messages"][1]


async def test_show_a_peer_without_mail(ctl: Ctl) -> None:
    r = await ctl("show", CAROL.hex())
    assert (r.code, r.out) == (0, f"nothing queued for {CAROL.hex()}\n")
    assert (await ctl("show", CAROL.hex(), "--json")).json() == {
        "peer": CAROL.hex(),
        "allowed": False,
        "messages": [],
    }


# --------------------------------------------------------------------------- allow


async def test_allow_add_remove_list(ctl: Ctl, store: Store) -> None:
    r = await ctl("allow", "add", ALICE.hex(), BOB.hex())
    assert (r.code, r.out) == (0, "added 2 peers\n")
    assert await store.allowlist.members() == sorted([ALICE, BOB])

    r = await ctl("allow", "add", ALICE.hex(), CAROL.hex().upper())
    assert r.out == "added 1 peer, 1 already allowed\n"

    r = await ctl("allow", "list")
    assert r.out.splitlines() == sorted(p.hex() for p in (ALICE, BOB, CAROL))
    assert (await ctl("allow", "list", "--json")).json() == {
        "allowlist": sorted(p.hex() for p in (ALICE, BOB, CAROL))
    }

    r = await ctl("allow", "remove", BOB.hex(), BOB.hex(), key(9).pubkey.hex(), "--json")
    assert r.json() == {"removed": 1, "unchanged": 1, "peers": [BOB.hex(), key(9).pubkey.hex()]}
    assert await store.allowlist.members() == sorted([ALICE, CAROL])

    r = await ctl("allow", "remove", ALICE.hex(), CAROL.hex())
    assert r.out == "removed 2 peers\n"
    assert (await ctl("allow", "list")).out == "the allowlist is empty\n"


# --------------------------------------------------------------------------- purge


async def test_purge_refuses_without_a_terminal_or_yes(ctl: Ctl, store: Store) -> None:
    await put(store, ALICE, 60)
    r = await ctl("purge", ALICE.hex())
    assert r.code == 1
    assert r.out == ""
    assert r.err == (
        f"mailboxctl: not deleting all 1 message of {ALICE.hex()} without confirmation: "
        "stdin is not a terminal, pass --yes\n"
    )
    assert len(await store.queues.messages(ALICE)) == 1


async def test_purge_all_with_yes_counts_and_publishes_the_drops(ctl: Ctl, store: Store) -> None:
    a, _ = await put(store, ALICE, 60)
    b, _ = await put(store, ALICE, 30)
    await put(store, BOB, 30)

    r = await ctl("purge", ALICE.hex(), "--yes")

    assert (r.code, r.out) == (0, f"purged 2 messages of {ALICE.hex()}\n")
    assert await store.queues.messages(ALICE) == []
    assert len(await store.queues.messages(BOB)) == 1
    assert (await store.events.counters())["dropped:purged"] == 2
    events = [e for e in await store.events.recent(10) if e.kind == "dropped"]
    assert [(e.kind, e.peer, e.message_id, e.size, e.reason) for e in events] == [
        ("dropped", ALICE, a.id, a.size, "purged"),
        ("dropped", ALICE, b.id, b.size, "purged"),
    ]
    assert await audit(store) == []


async def test_purge_one_message_by_id(ctl: Ctl, store: Store) -> None:
    a, _ = await put(store, ALICE, 60)
    b, _ = await put(store, ALICE, 30)

    r = await ctl("purge", ALICE.hex(), "--id", b.id, "-y", "--json")

    assert r.code == 0
    assert r.json() == {"peer": ALICE.hex(), "purged": 1}
    assert [m.id for m in await store.queues.messages(ALICE)] == [a.id]

    r = await ctl("purge", ALICE.hex(), "--id", b.id, "--yes")
    assert r.code == 1
    assert r.err == f"mailboxctl: no message {b.id} is queued for {ALICE.hex()}\n"
    assert (await store.events.counters())["dropped:purged"] == 1


async def test_purge_with_nothing_queued(ctl: Ctl) -> None:
    r = await ctl("purge", ALICE.hex())
    assert (r.code, r.out) == (0, f"nothing queued for {ALICE.hex()}\n")


def _purge_on_a_terminal(argv: list[str], answer: bytes) -> tuple[int, str, str]:
    """Runs mailboxctl in a child whose stdin is a pseudo-terminal, answering the prompt."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LNDMAILBOX_")}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lndmailbox.cli", *argv],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        os.close(slave)
        os.write(master, answer)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        os.close(master)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(("answer", "deleted"), [(b"y\n", True), (b"no\n", False)])
async def test_purge_asks_on_a_terminal(
    ctl: Ctl, store: Store, answer: bytes, deleted: bool
) -> None:
    await put(store, ALICE, 60)
    argv = [*ctl.flags(), "purge", ALICE.hex()]

    code, out, err = await asyncio.to_thread(_purge_on_a_terminal, argv, answer)

    assert err.startswith(f"Delete all 1 message queued for {ALICE.hex()}? [y/N] ")
    if deleted:
        assert (code, out) == (0, f"purged 1 message of {ALICE.hex()}\n")
        assert await store.queues.messages(ALICE) == []
    else:
        assert (code, out) == (1, "")
        assert err.endswith("mailboxctl: nothing deleted\n")
        assert len(await store.queues.messages(ALICE)) == 1


# --------------------------------------------------------------------------- deliver


async def test_deliver_queues_a_request_for_the_daemon(ctl: Ctl, store: Store) -> None:
    await put(store, ALICE, 60)

    r = await ctl("deliver", ALICE.hex())

    assert r.code == 0
    assert r.out == f"asked the daemon to deliver to {ALICE.hex()} now (1 message queued)\n"
    assert "no daemon is running for this node" in r.err
    assert await store.control.wait_delivery_requests(WAIT) == [ALICE]

    assert await store.control.acquire_lock("me", 30)
    r = await ctl("deliver", BOB.hex(), "--json")
    assert r.json() == {"peer": BOB.hex(), "requested": True, "queued": 0, "daemon_running": True}
    assert r.err == f"mailboxctl: nothing is queued for {BOB.hex()}\n"
    assert await store.control.wait_delivery_requests(WAIT) == [BOB]


# --------------------------------------------------------------------------- decode


def _message() -> OnionMessage:
    return message_via([ALICE])[1]


async def test_decode_with_and_without_the_type(ctl: Ctl) -> None:
    msg = _message()
    for data, typed in ((msg.encode_with_type(), True), (msg.encode(), False)):
        r = await ctl("decode", data.hex())
        assert r.code == 0, r.err
        lines = dict(line.split("  ", 1) for line in r.out.splitlines())
        assert lines["type"].strip() == (
            "513 (onion_message)" if typed else "none given (body only)"
        )
        assert lines["path key"].strip() == msg.path_key.hex()
        assert lines["packet version"].strip() == "0"
        assert lines["packet length"].strip() == f"{len(msg.onion)} bytes"
        assert lines["ephemeral key"].strip() == msg.onion[1:34].hex()
        assert lines["extension TLVs"].strip() == "none"


async def test_decode_json_from_stdin(ctl: Ctl, monkeypatch: pytest.MonkeyPatch) -> None:
    msg = _message()
    text = msg.encode_with_type().hex()
    # Wrapped like a terminal paste, with a 0x prefix and an extension TLV (type 1, empty).
    wrapped = "0x" + "\n".join(text[i : i + 64] for i in range(0, len(text), 64)) + "0100\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(wrapped))

    r = await ctl("decode", "-", "--json")

    assert r.code == 0, r.err
    assert r.json() == {
        "type": 513,
        "path_key": msg.path_key.hex(),
        "packet": packet_fields(msg.onion),
        "extension_length": 2,
        "size": len(msg.path_key) + len(msg.onion),
    }


async def test_decode_rejects_what_is_not_an_onion_message(ctl: Ctl) -> None:
    msg = _message()
    r = await ctl("decode", msg.encode()[:-10].hex())
    assert r.code == 1
    assert r.err.startswith("mailboxctl: not an onion_message: onion_message: len 1366")
    r = await ctl("decode", "04" + "11" * 32 + "0001ff")
    assert r.code == 1
    assert r.err.startswith("mailboxctl: not an onion_message")


async def test_decode_bad_hex_is_a_usage_error(ctl: Ctl, monkeypatch: pytest.MonkeyPatch) -> None:
    r = await ctl("decode", "02zz")
    assert r.code == 2
    assert "argument HEX|-: not hex" in r.err
    monkeypatch.setattr(sys, "stdin", io.StringIO("  \n"))
    r = await ctl("decode", "-")
    assert (r.code, r.err) == (2, "mailboxctl: decode: no hex given\n")


# --------------------------------------------------------------------------- events


async def _publish(store: Store, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await store.events.record(
            events=[("stored", ALICE, f"{i:020x}", 100 + i, "")], at=1_700_000_000 + i
        )


async def test_events_shows_the_latest(ctl: Ctl, store: Store) -> None:
    await _publish(store, 5)
    await store.events.record(events=[("dropped", BOB, "", 0, "not_allowed")], at=1_700_000_100)

    r = await ctl("events", "--count", "3")

    assert r.code == 0
    assert r.out.splitlines() == [
        f"2023-11-14 22:13:23Z  stored     {ALICE.hex()}  id={3:020x}  size=103",
        f"2023-11-14 22:13:24Z  stored     {ALICE.hex()}  id={4:020x}  size=104",
        f"2023-11-14 22:15:00Z  dropped    {BOB.hex()}  reason=not_allowed",
    ]

    r = await ctl("events", "--json", "-n", "2")
    docs = [json.loads(line) for line in r.out.splitlines()]
    assert [d["kind"] for d in docs] == ["stored", "dropped"]
    assert docs[1] == {
        "stream_id": docs[1]["stream_id"],
        "at": 1_700_000_100,
        "kind": "dropped",
        "peer": BOB.hex(),
        "id": None,
        "size": 0,
        "reason": "not_allowed",
    }
    assert docs[0]["id"] == f"{4:020x}"


async def test_events_when_there_are_none(ctl: Ctl) -> None:
    r = await ctl("events")
    assert (r.code, r.out, r.err) == (0, "", "mailboxctl: no events\n")


async def _wait_for_xread(redis_url: str) -> None:
    """Until some client is blocked in XREAD (events --follow waiting for news)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with asyncio.timeout(WAIT):
            # Polling the server: there is nothing to wait on in this process.
            while not any(c.get("cmd") == "xread" for c in await client.client_list()):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        await client.aclose()


@pytest.mark.parametrize("as_json", [False, True])
async def test_events_follow_prints_new_events_as_they_come(
    ctl: Ctl, store: Store, as_json: bool
) -> None:
    await _publish(store, 3)
    argv = ["events", "--follow", "--count", "1", "--exit-after", "4"]
    follow = asyncio.create_task(ctl(*argv, *(["--json"] if as_json else [])))
    await _wait_for_xread(ctl.redis_url)
    await _publish(store, 2, start=3)
    await _wait_for_xread(ctl.redis_url)
    await _publish(store, 3, start=5)

    r = await follow

    assert r.code == 0
    lines = r.out.splitlines()
    if as_json:
        ids = [json.loads(line)["id"] for line in lines]
    else:
        ids = [line.split("id=")[1].split()[0] for line in lines]
    # The latest one, then four new ones: it stopped after the fourth.
    assert ids == [f"{i:020x}" for i in (2, 3, 4, 5, 6)]


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "02abc"], "argument PEER: '02abc' is not a node pubkey: expected 66 hex"),
        (["show", "zz" * 33], "with non-hex characters"),
        (["show", "04" + "11" * 32], "a compressed key starts with 02 or 03"),
        (["deliver", "02" + "ff" * 32], "not a point on secp256k1"),
        (["allow", "add"], "the following arguments are required: PEER"),
        (["allow", "add", ALICE.hex(), "nope"], "'nope' is not a node pubkey"),
        (["allow"], "the following arguments are required: ACTION"),
        (["purge", ALICE.hex(), "--id", "xyz"], "'xyz' is not a message id: expected 20 hex"),
        (["events", "--count", "-1"], "'-1' must not be negative"),
        (["events", "--count", "many"], "'many' is not a whole number"),
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["--node", "02", "status"], "argument --node: '02' is not a node pubkey"),
    ],
)
async def test_bad_arguments_exit_2_with_a_clear_message(
    ctl: Ctl, argv: list[str], message: str
) -> None:
    r = await ctl(*argv)
    assert r.code == 2
    assert r.out == ""
    assert message in r.err
    assert r.err.startswith("usage: mailboxctl")


async def test_bad_settings_exit_2(ctl: Ctl) -> None:
    r = await ctl("--network", "moonnet", "status")
    assert r.code == 2
    assert r.err.startswith("mailboxctl: bad settings: --network: 'moonnet' is not one of")


async def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    r = await run_main(capsys, ["--help"])
    assert r.code == 0
    for command in ("status", "peers", "show", "allow", "purge", "deliver", "decode", "events"):
        assert command in r.out
    for flag in ("--redis-url", "--rpcserver", "--node", "--json", "--config"):
        assert flag in r.out
    r = await run_main(capsys, ["--version"])
    assert (r.code, r.out) == (0, "mailboxctl 0.1.0\n")


async def test_json_and_node_accepted_before_or_after_the_command(ctl: Ctl, store: Store) -> None:
    await store.allowlist.add([ALICE])
    flags = ctl.flags(node=None)
    for argv in (
        [*flags, "--json", "--node", NODE.hex(), "allow", "list"],
        [*flags, "allow", "list", "--json", "--node", NODE.hex()],
        [*flags, "--node", NODE.hex(), "allow", "--json", "list"],
    ):
        r = await run_main(ctl.capsys, argv)
        assert r.code == 0, (argv, r.err)
        assert r.json() == {"allowlist": [ALICE.hex()]}


async def test_settings_come_from_the_environment_like_the_daemons(
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    config_file: Path,
) -> None:
    monkeypatch.setenv("LNDMAILBOX_REDIS_URL", redis_url)
    monkeypatch.setenv("LNDMAILBOX_CONFIG", str(config_file))
    r = await run_main(capsys, ["--node", NODE.hex(), "allow", "list", "--json"])
    assert r.code == 0, r.err
    assert r.json() == {"allowlist": []}


async def test_settings_come_from_the_config_file(
    redis_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "mailbox.toml"
    config.write_text(f'redis-url = "{redis_url}"\n')
    r = await run_main(capsys, ["--config", str(config), "--node", NODE.hex(), "peers", "--json"])
    assert r.code == 0, r.err
    assert r.json()["node"] == NODE.hex()


async def test_peers_limit_shows_the_first_peers_by_expiry(ctl: Ctl, store: Store) -> None:
    for i, peer in enumerate((ALICE, BOB, key(7).pubkey)):
        await put(store, peer, 30, ttl=600 + 60 * i)
    r = await ctl("peers", "--json", "--limit", "2")
    assert r.code == 0
    assert [p["peer"] for p in r.json()["peers"]] == [ALICE.hex(), BOB.hex()]
    r = await ctl("peers", "--limit", "0")
    assert r.code == 2
    assert "must be at least 1" in r.err
