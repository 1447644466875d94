"""The daemon's WARNING, on the native transport, about SCID aliases lnd cannot forward by.

lnd 0.21 resolves a next hop's SCID only in its channel graph (itest/test_alias_facts.py):
a message naming a confirmed-first channel's alias is dropped inside lnd and never reaches
the mailbox, so the operator must hear of such channels from the daemon itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
from simnet import Personality

from lndmailbox.daemon.peers import AliasWarning, ChannelMap
from lndmailbox.lnd import Channel, ChannelIndex
from lndmailbox.onion import BlindedHopSpec, message_via
from lndmailbox.onion.tlv import scid
from lndmailbox.onion.wire import OnionMessage
from tests.daemon_harness import PAYLOAD_TYPE, World, wait_until, world

PEERS = "lndmailbox.daemon.peers"
BOB = bytes.fromhex("02" + "22" * 32)
CAROL = bytes.fromhex("03" + "33" * 32)


def confirmed_first(peer: bytes, real: int, *aliases: int) -> Channel:
    return Channel(peer, f"{real:064x}:0", real, aliases)


def zero_conf(peer: bytes, alias: int) -> Channel:
    return Channel(peer, f"{alias:064x}:0", alias, (alias,), zero_conf=True)


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == PEERS and r.levelno == logging.WARNING]


def test_one_warning_per_change_of_the_set(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=PEERS)
    warning = AliasWarning()
    bob = confirmed_first(BOB, scid(800_000, 1, 0), scid(16_000_000, 0, 1))
    carol = confirmed_first(CAROL, scid(800_000, 2, 0), scid(16_000_000, 0, 2))
    phone = zero_conf(CAROL, scid(16_000_000, 0, 3))

    warning.saw([bob, phone])
    warning.saw([bob, phone])  # the same: said already
    warning.saw([phone, bob, carol])
    assert [r.getMessage().split(":", 1)[0] for r in warnings(caplog)] == [
        "1 channel (1 peer) with SCID aliases lnd cannot resolve",
        "2 channels (2 peers) with SCID aliases lnd cannot resolve",
    ]
    first = warnings(caplog)[0].getMessage()
    assert f"{BOB.hex()} 16000000x0x1;" in first
    assert "open phones zero-conf scid-alias channels" in first
    assert "16000000x0x3" not in first  # the zero-conf channel's alias resolves

    caplog.clear()
    warning.saw([phone])
    assert warnings(caplog) == []
    assert [r.getMessage() for r in caplog.records if r.name == PEERS] == [
        "every channel's SCID aliases resolve in lnd now"
    ]


def test_nothing_to_say_when_every_alias_resolves(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=PEERS)
    AliasWarning().saw([zero_conf(BOB, scid(16_000_000, 0, 1))])
    assert [r for r in caplog.records if r.name == PEERS] == []


def test_a_few_channels_are_named_and_the_rest_counted(caplog: pytest.LogCaptureFixture) -> None:
    channels = [
        confirmed_first(bytes([2, i]) + bytes(31), scid(800_000, i, 0), scid(16_000_000, 0, i))
        for i in range(1, 6)
    ]
    AliasWarning().saw(channels)
    (record,) = warnings(caplog)
    assert record.getMessage().startswith("5 channels (5 peers) with SCID aliases")
    assert "16000000x0x3 and 2 more;" in record.getMessage()
    assert "16000000x0x4" not in record.getMessage()


class Source:
    def __init__(self, channels: Sequence[Channel]) -> None:
        self.channels = list(channels)
        self.loads = 0

    async def channel_index(self) -> ChannelIndex:
        self.loads += 1
        return ChannelIndex(tuple(self.channels), {c.chan_id: c.peer for c in self.channels})


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t


async def test_the_channel_map_shows_every_load_to_its_watcher() -> None:
    bob = confirmed_first(BOB, scid(800_000, 1, 0), scid(16_000_000, 0, 1))
    carol = confirmed_first(CAROL, scid(800_000, 2, 0))
    source, clock = Source([bob]), Clock()
    seen: list[Sequence[Channel]] = []
    channels = ChannelMap(source, clock, on_load=seen.append)
    await channels.load()
    assert seen == [(bob,)]
    source.channels.append(carol)
    clock.t += 5  # past min_refresh: a miss reloads
    assert await channels.peer_for(carol.chan_id) == CAROL
    assert seen == [(bob,), (bob, carol)]
    assert source.loads == 2


# --- the running daemon --------------------------------------------------------------------


@pytest.mark.parametrize(
    "personality", [Personality.LND_0_20, Personality.LND_0_21], ids=["lnd0.20", "lnd0.21"]
)
async def test_the_daemon_warns_at_start_on_the_native_transport_only(
    personality: Personality, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The harness's bob has a confirmed-first channel with an alias, alice a plain one."""
    caplog.set_level(logging.INFO, logger="lndmailbox")
    async with world(personality, redis_url, tmp_path) as w:
        await w.start_daemon()
        found = [r.getMessage() for r in warnings(caplog)]
        if personality is Personality.LND_0_20:
            assert found == []
            return
        assert len(found) == 1, found
        assert found[0].startswith(
            f"1 channel (1 peer) with SCID aliases lnd cannot resolve: {w.bob.pubkey.hex()} "
            "16000000x0x1; onion messages naming these aliases"
        )


async def test_the_daemon_warns_again_when_a_reload_finds_another_channel(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lndmailbox")
    async with world(Personality.LND_0_21, redis_url, tmp_path) as w:
        await w.start_daemon()
        assert len(warnings(caplog)) == 1
        carol = w.node.add_peer("carol")
        w.node.open_channel(carol, scid(800_000, 8, 0), [scid(16_000_000, 0, 8)])
        # Mail for carol, a channel peer the daemon's map does not know yet, makes it reload
        # (at most every 2 s): the daemon keeps her mail once it has.

        async def kept() -> bool:
            await w.alice.send_onion_message(for_peer(w, carol.pubkey))
            return len(await w.stored_for(carol)) > 0

        await wait_until(kept, what="carol's mail to be kept")
        found = [r.getMessage() for r in warnings(caplog)]
        assert len(found) == 2, found
        assert found[1].startswith("2 channels (2 peers) with SCID aliases lnd cannot resolve")
        assert f"{carol.pubkey.hex()} 16000000x0x8" in found[1]


def for_peer(w: World, peer: bytes) -> OnionMessage:
    _, message = message_via(
        [BlindedHopSpec(w.node.pubkey, next_node_id=peer), peer], {PAYLOAD_TYPE: b"hi"}
    )
    return message
