"""The daemon end to end: simnet (both lnd generations) over TLS gRPC, a real Redis.

A delivered message is proved right by the recipient peeling it with its own key and
finding the sender's payload.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from simnet import Personality

from lndmailbox.daemon import run
from lndmailbox.errors import ConfigError
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.store.audit import audit
from tests.daemon_harness import World, counted, stored_count, wait_until, world

GENERATIONS = [Personality.LND_0_20, Personality.LND_0_21]


@pytest.fixture(params=GENERATIONS, ids=lambda p: f"lnd{p.value}")
async def w(
    request: pytest.FixtureRequest, server_or_cluster_url: str, tmp_path: Path
) -> AsyncIterator[World]:
    """The daemon on one Redis server, then on a Redis Cluster."""
    # A short confirmation window: a delivered message leaves Redis once it is confirmed.
    async with world(request.param, server_or_cluster_url, tmp_path, confirm_after=0.2) as running:
        await running.start_daemon()
        yield running


@pytest.mark.parametrize("how", ["next_node_id", "short_channel_id", "override"])
async def test_offline_recipient_gets_the_message_when_back(w: World, how: str) -> None:
    text = f"hello bob, by {how}".encode()
    message = w.message_for_bob(text, by_scid=how == "short_channel_id", override=how == "override")
    await w.alice.send_onion_message(message)
    await stored_count(w, 1)
    assert w.bob.received == []

    w.bob.connect()
    await wait_until(lambda: len(w.bob.received) == 1, what="delivery to bob")
    assert await w.payloads_received(w.bob) == [text]
    await wait_until(lambda: _no_mail(w), what="the delivered message to leave Redis")
    await counted(w, "delivered", 1)
    await counted(w, "confirmed", 1)


async def _no_mail(w: World) -> bool:
    """Nothing held for bob: delivered and confirmed."""
    return await w.held_for(w.bob) == []


async def test_online_recipient_is_served_at_once_and_nothing_stays_stored(w: World) -> None:
    w.bob.connect()
    await w.alice.send_onion_message(w.message_for_bob(b"you are online"))
    # lnd 0.21 forwards it itself. bob came online just now, within --race-window, so the
    # daemon cannot be sure lnd found him there and sends a copy too (rescued came_online);
    # a peer online for longer gets lnd's alone (tests/test_race.py).
    copies = 2 if w.node.personality is Personality.LND_0_21 else 1
    await wait_until(lambda: len(w.bob.received) == copies, what="bob to receive it")
    assert await w.payloads_received(w.bob) == [b"you are online"] * copies
    await wait_until(lambda: _no_mail(w), what="nothing left in Redis")


async def test_several_messages_arrive_oldest_first(w: World) -> None:
    texts = [f"message {i}".encode() for i in range(5)]
    for text in texts:
        await w.alice.send_onion_message(w.message_for_bob(text))
        await stored_count(w, texts.index(text) + 1)
    w.bob.connect()
    await wait_until(lambda: len(w.bob.received) == 5, what="all five delivered")
    assert await w.payloads_received(w.bob) == texts


@pytest.mark.parametrize("personality", GENERATIONS, ids=lambda p: f"lnd{p.value}")
async def test_a_long_queue_is_delivered_whole_in_store_order(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    # Several of the deliverer's batches, read ahead while the one before goes out.
    count = 150
    async with world(personality, redis_url, tmp_path) as w:
        await w.start_daemon(
            max_messages_per_peer=count, max_bytes_per_peer=count * 1400, confirm_after=0.2
        )
        texts = [f"queued {i}".encode() for i in range(count)]
        for text in texts:
            await w.alice.send_onion_message(w.message_for_bob(text))
        await stored_count(w, count)
        queued = [(m.path_key, m.onion) for m in await w.stored_for(w.bob)]

        w.bob.connect()
        await wait_until(lambda: len(w.bob.received) == count, what="the whole queue")
        assert [(m.path_key, m.onion) for m in w.bob.received] == queued
        assert sorted(await w.payloads_received(w.bob)) == sorted(texts)
        await wait_until(lambda: _no_mail(w), what="the delivered messages to leave Redis")
        await counted(w, "delivered", count)
        await counted(w, "confirmed", count)
        assert await audit(w.store) == []


async def test_malformed_onion_is_dropped_and_daemon_keeps_going(w: World) -> None:
    good = w.message_for_bob(b"after the bad one")
    broken = OnionMessage(good.path_key, good.onion[:-1] + bytes([good.onion[-1] ^ 1]))
    fate = await w.alice.send_onion_message(broken)
    await w.alice.send_onion_message(good)
    await stored_count(w, 1)
    if w.node.personality is Personality.LND_0_21:
        # lnd 0.21 peels every message itself and never publishes one that fails.
        assert not fate.published
        assert fate.drop_reason is not None
        assert fate.drop_reason.startswith("peel")
    else:
        await counted(w, "dropped:bad_hmac", 1)


@pytest.mark.parametrize(
    ("personality", "transport"),
    [(Personality.LND_0_20, "custom"), (Personality.LND_0_21, "native")],
    ids=["lnd0.20-custom", "lnd0.21-native"],
)
async def test_transport_flag_serves_an_lnd_whose_version_the_mapping_does_not_know(
    personality: Personality,
    transport: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A build of lnd whose version says nothing the mapping knows: --transport decides;
    left to ``auto``, the daemon stops and says which flag to set."""
    monkeypatch.setattr(Personality, "version", property(lambda _: "lsp-build commit=3f2e1d"))
    async with world(personality, redis_url, tmp_path, transport=transport) as w:
        await w.start_daemon()
        await w.alice.send_onion_message(w.message_for_bob(b"whatever lnd calls itself"))
        await stored_count(w, 1)
        w.bob.connect()
        await wait_until(lambda: len(w.bob.received) == 1, what="delivery to bob")
        assert await w.payloads_received(w.bob) == [b"whatever lnd calls itself"]
    async with world(personality, redis_url, tmp_path / "auto") as w:
        with pytest.raises(ConfigError, match="set --transport"):
            await asyncio.wait_for(run(w.settings, stop=asyncio.Event()), 30)
