"""Issue 13 on real lnd, both generations: a standby takes over, and delivery is confirmed.

- A leader SIGKILLed with a message stored: the standby (a second daemon on the same
  Redis) takes the node's lock and delivers it when the recipient connects.
- ``--confirm-after``: a recipient that stays connected has its message confirmed (event,
  counter, nothing left in Redis); one that leaves right after lnd accepted the message
  gets it again when it is back (``redelivered``, the second copy peeled).

Delivery is proved as in test_scenarios.py: the recipient's own lnd hands the message over
and the recipient peels it with its key.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from itest.daemon import MailboxDaemon
from itest.network import Network
from itest.onion import check_received, is_letter, send_to_lsp, write_letter
from itest.test_scenarios import (
    StartMailbox,
    counter,
    eventually,
    lsp_store,
    prepare,
    recipient_inbox,
    stored_for_recipient,
)
from lndmailbox.store import RedisServer, Store

pytestmark = pytest.mark.timeout(300)

CONFIRM_AFTER = 3.0
"""Seconds a recipient must stay connected for its mail to be confirmed, in these tests:
long enough for the test to disconnect the recipient before it runs out."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health(port: int, path: str = "/health") -> tuple[int, dict[str, Any]]:
    """The daemon's health answer: status code and its JSON body (``role``, ``ready``...)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def role(port: int) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(health, port, "/health/leader")


async def test_standby_takes_over_after_the_leader_is_killed(
    network: Network, redis_server: RedisServer, mailbox: StartMailbox
) -> None:
    """Two daemons on one Redis; the leader is SIGKILLed with a message stored; the standby
    leads and delivers it when the recipient connects."""
    await prepare(network, recipient_online=False)
    ports = free_port(), free_port()
    leader = await asyncio.to_thread(mailbox, "--metrics-addr", f"127.0.0.1:{ports[0]}")
    standby = await asyncio.to_thread(
        mailbox, "--metrics-addr", f"127.0.0.1:{ports[1]}", standby=True
    )
    code, body = await role(ports[0])
    assert (code, body["role"]) == (200, "leader"), body
    await eventually(
        "the second daemon to stand by",
        lambda: role(ports[1]),
        lambda answer: answer[0] == 503 and answer[1]["role"] == "standby",
        daemon=standby,
    )

    letter = await write_letter(network, label="before-kill")
    async with lsp_store(network, redis_server) as store:
        await send_to_lsp(network, letter.sent)
        await stored_for_recipient(network, store, 1, leader)

        killed = time.monotonic()
        await asyncio.to_thread(leader.kill)
        await _until_leading(standby, ports[1])
        took = time.monotonic() - killed
        print(f"\n[{network.generation.value}] takeover after SIGKILL: {took:.2f}s (to ready)")

        async with recipient_inbox(network) as inbox:
            await asyncio.to_thread(network.bring_recipient_online)
            item = await inbox.wait_for("the stored message", is_letter(network, letter))
            await check_received(network, letter, item)
        await eventually(
            "delivered counted",
            lambda: counter(store, "delivered"),
            lambda n: n == 1,
            daemon=standby,
        )
        assert await store.queues.messages(network.recipient.pubkey) == []
        assert "taking over the node lock" in standby.log()


async def _until_leading(daemon: MailboxDaemon, port: int, within: float = 15.0) -> None:
    """Polls the health endpoint often (the takeover is timed by it) until the daemon leads
    with its pipeline ready."""
    deadline = time.monotonic() + within
    while True:
        daemon.check_alive()
        code, body = await role(port)
        if code == 200 and body.get("ready"):
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the standby does not lead after {within}s: {body}\n{daemon.process.log_tail(30)}"
            )
        await asyncio.sleep(0.05)


async def test_mail_of_a_recipient_that_stays_is_confirmed(
    network: Network, redis_server: RedisServer, mailbox: StartMailbox
) -> None:
    """Delivered, the recipient stays connected ``--confirm-after``: confirmed, with its
    event, and nothing of it is left in Redis."""
    await prepare(network, recipient_online=False)
    daemon = await asyncio.to_thread(mailbox, "--confirm-after", f"{CONFIRM_AFTER:g}s")
    letter = await write_letter(network, label="confirmed")
    async with lsp_store(network, redis_server) as store:
        await send_to_lsp(network, letter.sent)
        (stored,) = await stored_for_recipient(network, store, 1, daemon)
        async with recipient_inbox(network) as inbox:
            await asyncio.to_thread(network.bring_recipient_online)
            item = await inbox.wait_for("the stored message", is_letter(network, letter))
            await check_received(network, letter, item)
            await eventually(
                "confirmed counted",
                lambda: counter(store, "confirmed"),
                lambda n: n == 1,
                within=CONFIRM_AFTER + 15,
                daemon=daemon,
            )
        kinds = [(e.kind, e.message_id) for e in await store.events.recent(50)]
        assert ("confirmed", stored.id) in kinds, kinds
        assert await store.queues.messages(network.recipient.pubkey) == []
        assert await store.queues.unconfirmed(network.recipient.pubkey) == []
        assert await counter(store, "redelivered") == 0
        assert await counter(store, "delivered") == 1


async def test_recipient_that_leaves_at_once_gets_the_mail_again(
    network: Network, redis_server: RedisServer, mailbox: StartMailbox
) -> None:
    """The recipient disconnects as soon as lnd accepted the delivery: the message goes
    back (``redelivered``) and reaches it again when it reconnects."""
    await prepare(network, recipient_online=False)
    daemon = await asyncio.to_thread(mailbox, "--confirm-after", f"{CONFIRM_AFTER:g}s")
    letter = await write_letter(network, label="redelivered")
    async with lsp_store(network, redis_server) as store:
        await send_to_lsp(network, letter.sent)
        await stored_for_recipient(network, store, 1, daemon)
        async with recipient_inbox(network) as inbox:
            await asyncio.to_thread(network.bring_recipient_online)
            await _until_counted(store, "delivered", 1, daemon)
            left = time.monotonic()
            await asyncio.to_thread(network.take_recipient_offline)
            print(
                f"\n[{network.generation.value}] recipient gone {time.monotonic() - left:.2f}s "
                "after the delivered count showed"
            )
            await eventually(
                "redelivered counted",
                lambda: counter(store, "redelivered"),
                lambda n: n == 1,
                daemon=daemon,
            )
            assert await counter(store, "confirmed") == 0
            assert len(await store.queues.messages(network.recipient.pubkey)) == 1
            # What the recipient read before it left is in its stream by now.
            await asyncio.sleep(1.0)
            before = len(inbox.items)
            first = [i for i in inbox.items if is_letter(network, letter)(i)]
            print(f"[{network.generation.value}] copies read before the disconnect: {len(first)}")

            await asyncio.to_thread(network.bring_recipient_online)
            again = await _wait_after(inbox, before, network, letter)
            await check_received(network, letter, again)
            await eventually(
                "the second delivery counted",
                lambda: counter(store, "delivered"),
                lambda n: n == 2,
                daemon=daemon,
            )


async def _until_counted(store: Store, name: str, n: int, daemon: MailboxDaemon) -> None:
    """Polls the counter every 20 ms: the test must act well within ``CONFIRM_AFTER``."""
    deadline = time.monotonic() + 30
    while await counter(store, name) < n:
        daemon.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} not {n} after 30s\n{daemon.process.log_tail(30)}")
        await asyncio.sleep(0.02)


async def _wait_after(inbox: Any, index: int, network: Network, letter: Any) -> Any:
    """The first copy of ``letter`` the recipient's stream carries after item ``index``."""
    deadline = time.monotonic() + 30
    while True:
        copies = [i for i in inbox.items[index:] if is_letter(network, letter)(i)]
        if copies:
            return copies[0]
        if time.monotonic() > deadline or inbox.ended:
            raise AssertionError(f"no second copy after the reconnect: {inbox.items[index:]!r}")
        await asyncio.sleep(0.1)
