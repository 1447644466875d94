"""The daemon's WARNING, on the native transport, about SCID aliases lnd cannot forward by.

lnd 0.21 resolves a next hop's SCID only in its channel graph (itest/test_alias_facts.py):
a message naming a confirmed-first channel's alias is dropped inside lnd and never reaches
the mailbox, so the operator must hear of such channels from the daemon itself. The check
(``daemon.peers.AliasCheck``) runs beside lnd's streams, at start and every interval, and
never holds them up: lnd keeps no backlog for a stream subscribed late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from simnet import Personality, SimNode, SimPeer

from lndmailbox.daemon.mailbox import Mailbox, MailboxOptions
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.peers import AliasCheck, AliasWarning
from lndmailbox.errors import LndCredentialsError, LndError, LndPermissionError
from lndmailbox.lnd import PERMISSIONS, Channel, LndClient
from lndmailbox.onion import BlindedHopSpec, message_via
from lndmailbox.onion.tlv import scid
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.store import Store
from tests.daemon_harness import GENERATIONS, PAYLOAD_TYPE, wait_until, world

PEERS = "lndmailbox.daemon.peers"
BOB = bytes.fromhex("02" + "22" * 32)
CAROL = bytes.fromhex("03" + "33" * 32)


def confirmed_first(peer: bytes, real: int, *aliases: int) -> Channel:
    return Channel(peer, f"{real:064x}:0", real, private=True, alias_scids=aliases)


def zero_conf(peer: bytes, alias: int) -> Channel:
    return Channel(
        peer, f"{alias:064x}:0", alias, private=True, alias_scids=(alias,), zero_conf=True
    )


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == PEERS and r.levelno == logging.WARNING
    ]


def test_one_warning_per_change_of_the_set(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=PEERS)
    warning = AliasWarning()
    bob = confirmed_first(BOB, scid(800_000, 1, 0), scid(16_000_000, 0, 1))
    carol = confirmed_first(CAROL, scid(800_000, 2, 0), scid(16_000_000, 0, 2))
    phone = zero_conf(CAROL, scid(16_000_000, 0, 3))

    warning.saw([bob, phone])
    warning.saw([bob, phone])  # the same: said already
    warning.saw([phone, bob, carol])
    assert [w.split(":", 1)[0] for w in warnings(caplog)] == [
        "1 private channel (1 peer) with SCID aliases lnd cannot resolve",
        "2 private channels (2 peers) with SCID aliases lnd cannot resolve",
    ]
    first = warnings(caplog)[0]
    assert f"{BOB.hex()} 16000000x0x1;" in first
    assert "if these peers are phones on LDK" in first
    assert "16000000x0x3" not in first  # the zero-conf channel's alias resolves

    caplog.clear()
    warning.saw([phone])
    assert warnings(caplog) == []
    assert [r.getMessage() for r in caplog.records if r.name == PEERS] == [
        "every private channel's SCID aliases resolve in lnd now"
    ]


def test_nothing_to_say_when_every_alias_resolves(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=PEERS)
    public = Channel(BOB, "ab:0", scid(800_000, 1, 0), private=False, alias_scids=(1,))
    AliasWarning().saw([zero_conf(BOB, scid(16_000_000, 0, 1)), public])
    assert [r for r in caplog.records if r.name == PEERS] == []


class Lister:
    def __init__(self, *answers: tuple[Channel, ...] | LndError) -> None:
        self.answers = list(answers)

    async def list_channels(self) -> tuple[Channel, ...]:
        answer = self.answers.pop(0)
        if isinstance(answer, LndError):
            raise answer
        return answer


async def test_a_failed_look_is_logged_and_the_next_one_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bob = confirmed_first(BOB, scid(800_000, 1, 0), scid(16_000_000, 0, 1))
    away = LndError(
        "ListChannels failed: UNAVAILABLE", rpc="ListChannels", code="UNAVAILABLE", retryable=True
    )
    check = AliasCheck(Lister(away, (bob,)))
    await check.check()
    assert warnings(caplog) == [
        "could not list lnd's channels to check their SCID aliases: ListChannels failed: "
        "UNAVAILABLE"
    ]
    await check.check()
    assert len(warnings(caplog)) == 2
    assert warnings(caplog)[1].startswith("1 private channel (1 peer)")


async def test_a_refused_macaroon_ends_the_check() -> None:
    refused = LndPermissionError(
        "ListChannels needs offchain:read", rpc="ListChannels", code="UNKNOWN", retryable=False
    )
    with pytest.raises(LndCredentialsError):
        await AliasCheck(Lister(refused)).run(asyncio.Event())


# --- the running daemon --------------------------------------------------------------------


@GENERATIONS
async def test_the_daemon_warns_at_start_on_the_native_transport_only(
    personality: Personality, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The harness's bob has a confirmed-first channel with an alias, alice a plain one."""
    caplog.set_level(logging.INFO, logger="lndmailbox")
    async with world(personality, redis_url, tmp_path) as w:
        await w.start_daemon()
        tasks = {t.get_name() for t in asyncio.all_tasks()}
        if personality is Personality.LND_0_20:
            assert "alias-check" not in tasks
            assert warnings(caplog) == []
            return
        assert "alias-check" in tasks
        await wait_until(lambda: warnings(caplog) != [], what="the warning")
        found = warnings(caplog)
        assert len(found) == 1, found
        assert found[0].startswith(
            f"1 private channel (1 peer) with SCID aliases lnd cannot resolve: "
            f"{w.bob.pubkey.hex()} 16000000x0x1; if these peers are phones on LDK"
        )


@dataclass
class Running:
    node: SimNode
    alice: SimPeer
    bob: SimPeer
    mailbox: Mailbox
    store: Store
    stop: asyncio.Event
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def native_mailbox(
    redis_url: str,
    *,
    stall: str | None = None,
    macaroon: list[str] | None = None,
    **options: object,
) -> AsyncIterator[Running]:
    """The composition root itself on simnet's lnd 0.21: alice (online) has a plain
    channel, bob (offline, allowlisted) one with an alias; the default policy
    (``allow_channel_peers`` off), so no lookup ever lists the channels."""
    async with SimNode(Personality.LND_0_21, onion_rate_limits=None) as node:
        alice = node.add_peer("alice", connect=True)
        bob = node.add_peer("bob")
        node.open_channel(alice, scid(800_000, 3, 0))
        node.open_channel(bob, scid(800_000, 7, 1), [scid(16_000_000, 0, 1)])
        if stall is not None:
            node.stall(stall)
        endpoint = (
            node.endpoint if macaroon is None else node.endpoint_with(node.bake_macaroon(macaroon))
        )
        stop = asyncio.Event()
        async with (
            LndClient(endpoint, stop=stop) as lnd,
            Store.from_url(redis_url, node.pubkey) as store,
        ):
            await store.allowlist.add([bob.pubkey])
            mailbox = Mailbox(
                lnd=lnd,
                store=store,
                metrics=Metrics(),
                options=MailboxOptions(**options),  # type: ignore[arg-type]
            )
            task = asyncio.create_task(mailbox.run(stop))
            try:
                yield Running(node, alice, bob, mailbox, store, stop, task)
            finally:
                stop.set()
                with contextlib.suppress(LndError):
                    await asyncio.wait_for(task, 10)
                if stall is not None:
                    node.unstall(stall)


def for_bob(r: Running, text: bytes) -> OnionMessage:
    _, message = message_via(
        [BlindedHopSpec(r.node.pubkey, next_node_id=r.bob.pubkey), r.bob.pubkey],
        {PAYLOAD_TYPE: text},
    )
    return message


async def ready(r: Running, within: float) -> None:
    waiting = asyncio.ensure_future(r.mailbox.ready.wait())
    done, _ = await asyncio.wait([waiting, r.task], timeout=within, return_when="FIRST_COMPLETED")
    waiting.cancel()
    if r.task in done:
        r.task.result()
    assert r.mailbox.ready.is_set(), f"not ready within {within}s"


async def test_a_hung_list_channels_delays_neither_ready_nor_the_first_message(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """lnd answers everything but ListChannels, which it holds (its client deadline is 30 s,
    retried for 30 s more): the daemon follows the streams and keeps bob's mail meanwhile."""
    async with native_mailbox(redis_url, stall="ListChannels") as r:
        await ready(r, within=5)
        fate = await r.alice.send_onion_message(for_bob(r, b"while ListChannels hangs"))
        assert fate.published
        await wait_until(
            lambda: _stored(r, 1), within=5, what="bob's message stored while ListChannels hangs"
        )
        assert r.node.calls["ListChannels"] == 1  # the check is still waiting for it
        assert not r.task.done()
        assert warnings(caplog) == []


async def _stored(r: Running, count: int) -> bool:
    return len(await r.store.queues.messages(r.bob.pubkey)) == count


async def test_a_stop_during_the_check_starts_nothing_after_it(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM while the check waits for lnd: the daemon stops, and nothing it does after
    the stop calls lnd again, the check included once lnd answers."""
    caplog.set_level(logging.INFO, logger="lndmailbox")
    async with native_mailbox(redis_url, stall="ListChannels") as r:
        await wait_until(lambda: r.node.calls.get("ListChannels") == 1, what="the check's call")
        r.stop.set()
        await asyncio.wait_for(r.task, 5)
        await asyncio.sleep(0.2)  # whatever was on its way to lnd has arrived
        called = dict(r.node.calls)
        r.node.unstall("ListChannels")
        await asyncio.sleep(0.3)
        assert r.node.calls == called
        assert called["ListChannels"] == 1
        assert warnings(caplog) == []


async def test_a_channel_opened_after_start_is_warned_about(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Without --allow-channel-peers nothing else lists the channels on the native transport:
    a message naming carol's alias is dropped inside lnd and causes no lookup. The periodic
    check finds her channel."""
    caplog.set_level(logging.INFO, logger="lndmailbox")
    async with native_mailbox(redis_url, alias_check_interval=0.2) as r:
        await ready(r, within=5)
        await wait_until(lambda: len(warnings(caplog)) == 1, what="the warning at start")
        await asyncio.sleep(0.5)  # a few looks at the same channels: said once
        assert len(warnings(caplog)) == 1
        carol = r.node.add_peer("carol")
        r.node.open_channel(carol, scid(800_000, 8, 0), [scid(16_000_000, 0, 8)])
        await wait_until(lambda: len(warnings(caplog)) == 2, what="the warning about carol")
        found = warnings(caplog)[1]
        assert found.startswith("2 private channels (2 peers) with SCID aliases lnd cannot")
        assert f"{carol.pubkey.hex()} 16000000x0x8" in found


async def test_a_refused_macaroon_in_the_check_stops_the_daemon(redis_url: str) -> None:
    """As every refused call does (README: exit 1, one line naming what failed): a macaroon
    that allows every RPC of the native transport but ListChannels."""
    uris = [
        f"uri:{path}"
        for rpc, (path, _) in PERMISSIONS.items()
        if rpc not in ("ListChannels", "ListAliases")
    ]
    async with native_mailbox(redis_url, macaroon=uris) as r:
        with pytest.raises(LndPermissionError, match="ListChannels needs offchain:read"):
            await asyncio.wait_for(r.task, 10)
