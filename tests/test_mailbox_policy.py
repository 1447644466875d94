"""What the daemon keeps, for how long, and what it refuses (both lnd generations)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from simnet import Personality, SimPeer

from lndmailbox.onion import BlindedHopSpec, message_via
from lndmailbox.onion.tlv import scid
from lndmailbox.onion.wire import OnionMessage
from tests.daemon_harness import (
    BOB_ALIAS,
    PAYLOAD_TYPE,
    World,
    counted,
    stored_count,
    wait_until,
    world,
)

GENERATIONS = pytest.mark.parametrize(
    "personality", [Personality.LND_0_20, Personality.LND_0_21], ids=["lnd0.20", "lnd0.21"]
)


@GENERATIONS
async def test_expired_message_is_never_delivered(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    async with world(personality, redis_url, tmp_path, ttl=0.5) as w:
        await w.start_daemon()
        await w.alice.send_onion_message(w.message_for_bob(b"too late"))
        await counted(w, "stored", 1)
        await counted(w, "expired", 1)
        assert await w.stored_for(w.bob) == []
        w.bob.connect()
        await counted(w, "delivered", 0)
        assert w.bob.received == []


@GENERATIONS
async def test_peer_cap_oldest_gives_way_to_newest(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    async with world(personality, redis_url, tmp_path, max_messages_per_peer=3) as w:
        await w.start_daemon()
        texts = [f"n{i}".encode() for i in range(5)]
        for text in texts:
            await w.alice.send_onion_message(w.message_for_bob(text))
            await counted(w, "stored", texts.index(text) + 1)
        await counted(w, "evicted", 2)
        w.bob.connect()
        await wait_until(lambda: len(w.bob.received) == 3, what="three delivered")
        assert await w.payloads_received(w.bob) == texts[2:]


@GENERATIONS
async def test_duplicate_is_stored_once(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    async with world(personality, redis_url, tmp_path) as w:
        await w.start_daemon()
        message = w.message_for_bob(b"twice")
        await w.alice.send_onion_message(message)
        await w.alice.send_onion_message(message)
        await counted(w, "duplicate", 1)
        assert len(await w.stored_for(w.bob)) == 1
        await counted(w, "stored", 1)


@GENERATIONS
async def test_only_allowed_peers_get_a_mailbox(
    personality: Personality, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lndmailbox")
    async with world(personality, redis_url, tmp_path, allow_channel_peers=False) as w:
        await w.start_daemon()
        # Allowing nobody is almost always a mistake: the daemon says so when it starts.
        assert "keeping mail for the allowlist (0 peers)\n" in caplog.text
        assert "no peer is allowed (empty allowlist, no --allow-channel-peers)" in caplog.text
        await w.alice.send_onion_message(w.message_for_bob(b"not yet allowed"))
        await counted(w, "dropped:not_allowed", 1)
        assert await w.stored_for(w.bob) == []

        await w.store.allowlist.add([w.bob.pubkey])

        # The daemon reads the allowlist again within a couple of seconds.
        async def kept() -> bool:
            await w.alice.send_onion_message(w.message_for_bob(b"allowed now"))
            return len(await w.stored_for(w.bob)) > 0

        await wait_until(kept, what="bob's mail to be kept once allowed")


async def test_unknown_channel_is_dropped(redis_url: str, tmp_path: Path) -> None:
    # lnd 0.21 drops a message whose next channel it does not know before publishing it;
    # on the custom generation the mailbox is the one that must refuse it.
    async with world(Personality.LND_0_20, redis_url, tmp_path) as w:
        await w.start_daemon()
        _, message = message_via(
            [
                BlindedHopSpec(w.node.pubkey, short_channel_id=scid(1, 2, 3)),
                w.bob.pubkey,
            ],
            {PAYLOAD_TYPE: b"where to?"},
        )
        await w.alice.send_onion_message(message)
        await counted(w, "dropped:unknown_scid", 1)


async def test_next_hop_equal_to_sender_is_dropped(redis_url: str, tmp_path: Path) -> None:
    async with world(Personality.LND_0_20, redis_url, tmp_path) as w:
        await w.start_daemon()
        _, message = message_via(
            [BlindedHopSpec(w.node.pubkey, next_node_id=w.alice.pubkey), w.alice.pubkey],
            {PAYLOAD_TYPE: b"boomerang"},
        )
        await w.alice.send_onion_message(message)
        await counted(w, "dropped:loopback", 1)
        assert w.alice.received == []


async def test_message_for_the_node_itself_is_not_kept(redis_url: str, tmp_path: Path) -> None:
    async with world(Personality.LND_0_20, redis_url, tmp_path) as w:
        await w.start_daemon()
        _, message = message_via([w.node.pubkey], {PAYLOAD_TYPE: b"for the LSP"})
        await w.alice.send_onion_message(message)
        await counted(w, "dropped:final_hop", 1)


def via_scid(w: World, hop_scid: int, to: SimPeer, text: bytes) -> OnionMessage:
    """alice -> LSP -> ``to``, the LSP's next hop named by ``hop_scid``."""
    _, message = message_via(
        [BlindedHopSpec(w.node.pubkey, short_channel_id=hop_scid), to.pubkey],
        {PAYLOAD_TYPE: text},
    )
    return message


@GENERATIONS
async def test_a_phones_alias_reaches_it(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    """A phone names the LSP's hop by the alias the LSP sent it in channel_ready. Through a
    zero-conf scid-alias channel, as LSPs open to phones, that works on both generations:
    lnd 0.21 resolves the channel's base alias itself, on 0.20 the mailbox does."""
    async with world(personality, redis_url, tmp_path) as w:
        carol = w.node.add_peer("carol")
        alias = scid(16_000_000, 0, 2)
        w.node.open_channel(carol, alias, zero_conf=True, confirmed_scid=scid(800_000, 9, 0))
        await w.start_daemon()
        await w.alice.send_onion_message(via_scid(w, alias, carol, b"via alias"))
        await wait_until(lambda: _has_mail(w, carol), what="carol's mail to be stored")
        carol.connect()
        await wait_until(lambda: len(carol.received) == 1, what="delivery")
        assert await w.payloads_received(carol) == [b"via alias"]


async def _has_mail(w: World, peer: SimPeer) -> bool:
    return len(await w.stored_for(peer)) == 1


async def test_the_custom_transport_resolves_every_scid_of_a_channel(
    redis_url: str, tmp_path: Path
) -> None:
    """lnd 0.20 hands the mailbox every message: it resolves a confirmed-first channel's
    alias and a zero-conf channel's real SCID too, which lnd 0.21 does not."""
    async with world(Personality.LND_0_20, redis_url, tmp_path) as w:
        carol = w.node.add_peer("carol")
        real = scid(800_000, 9, 0)
        w.node.open_channel(carol, scid(16_000_000, 0, 2), zero_conf=True, confirmed_scid=real)
        await w.start_daemon()
        await w.alice.send_onion_message(via_scid(w, BOB_ALIAS, w.bob, b"by bob's alias"))
        await w.alice.send_onion_message(via_scid(w, real, carol, b"by carol's real scid"))
        await stored_count(w, 1)
        await wait_until(lambda: _has_mail(w, carol), what="carol's mail to be stored")


async def test_lnd_0_21_drops_an_alias_it_does_not_resolve(redis_url: str, tmp_path: Path) -> None:
    """bob's channel confirmed before use: lnd 0.21 knows it by its real SCID only, and
    drops a message naming its alias before publishing it (itest/test_alias_facts.py)."""
    async with world(Personality.LND_0_21, redis_url, tmp_path) as w:
        await w.start_daemon()
        await w.alice.send_onion_message(via_scid(w, BOB_ALIAS, w.bob, b"by alias"))
        await w.alice.send_onion_message(w.message_for_bob(b"by scid", by_scid=True))
        await stored_count(w, 1)
        await counted(w, "received", 1)
        by_alias, by_scid = w.node.ingested[-2:]
        assert (by_alias.result.published, by_alias.result.drop_reason) == (False, "unknown_scid")
        assert by_scid.result.published
        w.bob.connect()
        await wait_until(lambda: len(w.bob.received) == 1, what="delivery")
        assert await w.payloads_received(w.bob) == [b"by scid"]
