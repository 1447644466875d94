"""mailboxctl against a Redis Cluster (``--redis-url redis+cluster://...``), on a mailbox the
daemon filled: simnet's lnd with alice and bob, the daemon storing alice's messages for bob
while he is offline, every command of mailboxctl on what it stored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from simnet import Personality

from lndmailbox.store import free_port
from tests.daemon_harness import World, stored_count, wait_until, world
from tests.test_cli import Run, run_main
from tests.test_cli import _clean_environment as _clean_environment  # autouse fixture

TEXTS = [b"first for bob", b"second for bob", b"third for bob"]


@pytest.fixture
async def w(cluster_url: str, tmp_path: Path) -> AsyncIterator[World]:
    async with world(Personality.LND_0_21, cluster_url, tmp_path, confirm_after=0.2) as running:
        await running.start_daemon()
        for text in TEXTS:
            await running.alice.send_onion_message(running.message_for_bob(text))
        await stored_count(running, len(TEXTS))
        yield running


async def test_every_command_works_on_a_mailbox_the_daemon_filled_in_the_cluster(
    w: World, cluster_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "lndmailbox.toml"
    config.write_text("")
    flags = ["--config", str(config), "--redis-url", cluster_url]
    flags += ["--rpcserver", w.node.target, "--tlscertpath", str(w.settings.tlscertpath)]
    flags += ["--macaroonpath", str(w.settings.macaroonpath)]

    async def ctl(*argv: str) -> Run:
        r = await run_main(capsys, [*flags, *argv])
        assert r.code == 0, r.err
        return r

    bob = w.bob.pubkey.hex()
    stored = await w.stored_for(w.bob)

    status = (await ctl("status", "--json")).json()
    assert status["node"] == w.node.pubkey.hex()
    assert status["node_source"] == "lnd"
    assert status["redis"]["reachable"] is True
    assert status["redis"]["mailbox_memory"] > 0
    assert status["daemon"]["running"] is True
    assert status["mail"]["messages"] == len(TEXTS)
    assert status["mail"]["peers_with_mail"] == 1
    assert status["counters"]["stored"] == len(TEXTS)

    peers = (await ctl("peers", "--json")).json()
    assert [(p["peer"], p["online"], p["messages"]) for p in peers["peers"]] == [
        (bob, False, len(TEXTS))
    ]
    assert peers["peers"][0]["bytes"] == sum(m.size for m in stored)

    shown = (await ctl("show", bob)).out
    assert shown.startswith(f"{len(TEXTS)} messages (")
    assert all(f"message {m.id}" in shown for m in stored)

    # Without lnd and --node: the node is the one mailbox a SCAN of every shard finds.
    unreachable = [*flags[:4], "--rpcserver", f"127.0.0.1:{free_port()}", *flags[6:]]
    r = await run_main(capsys, [*unreachable, "status", "--json"])
    assert (r.code, r.json()["node"], r.json()["node_source"]) == (
        0,
        w.node.pubkey.hex(),
        "Redis",
    ), r.err

    await ctl("allow", "add", w.alice.pubkey.hex())
    assert (await ctl("allow", "list", "--json")).json() == {"allowlist": [w.alice.pubkey.hex()]}
    assert await w.store.allowlist.members() == [w.alice.pubkey]

    r = await ctl("events", "--json", "-n", "20")
    events = [json.loads(line) for line in r.out.splitlines()]
    assert [e["id"] for e in events if e["kind"] == "stored"] == [m.id for m in stored]

    purged = (await ctl("purge", bob, "--id", stored[0].id, "--yes", "--json")).json()
    assert purged == {"peer": bob, "purged": 1}
    assert [m.id for m in await w.stored_for(w.bob)] == [m.id for m in stored[1:]]

    asked = (await ctl("deliver", bob, "--json")).json()
    assert asked == {"peer": bob, "requested": True, "queued": 2, "daemon_running": True}
    w.bob.connect()
    await wait_until(lambda: len(w.bob.received) == 2, what="the two left to reach bob")
    assert await w.payloads_received(w.bob) == TEXTS[1:]

    async def confirmed() -> bool:
        return await w.held_for(w.bob) == []

    await wait_until(confirmed, what="bob's mail to be confirmed and gone")
    after = (await ctl("status", "--json")).json()
    assert after["mail"]["messages"] == 0
    assert (after["counters"]["delivered"], after["counters"]["dropped_by_reason"]) == (
        2,
        {"purged": 1},
    )
