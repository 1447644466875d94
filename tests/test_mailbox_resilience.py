"""The daemon under lnd restarts, Redis restarts, lagging peer events and a second daemon."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from simnet import Personality

from lndmailbox.store import RedisServer
from tests.daemon_harness import World, counter, stored_count, wait_until, world

GENERATIONS = pytest.mark.parametrize(
    "personality", [Personality.LND_0_20, Personality.LND_0_21], ids=["lnd0.20", "lnd0.21"]
)


@GENERATIONS
async def test_lnd_restart_resubscribes_and_still_delivers(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    async with world(personality, redis_url, tmp_path) as w:
        await w.start_daemon()
        await w.alice.send_onion_message(w.message_for_bob(b"before the restart"))
        await stored_count(w, 1)

        await w.node.stop()
        await asyncio.sleep(0.3)
        await w.node.start()
        await wait_until(lambda: w.node.subscriber_count("peer_events") >= 1, what="resubscription")
        w.bob.connect()
        await wait_until(lambda: len(w.bob.received) == 1, what="delivery after restart")
        assert await w.payloads_received(w.bob) == [b"before the restart"]


@GENERATIONS
async def test_peer_that_came_online_while_lnd_was_down_is_served(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    """Peer events are not replayed: the daemon must learn from ListPeers after resubscribing."""
    async with world(personality, redis_url, tmp_path) as w:
        await w.start_daemon()
        await w.alice.send_onion_message(w.message_for_bob(b"catch up"))
        await stored_count(w, 1)
        await w.node.stop(abrupt=True)
        await w.node.start()
        # bob connects before the daemon is back on the event stream: nobody sees the event.
        assert w.node.subscriber_count("peer_events") == 0
        w.bob.connect()
        await wait_until(lambda: len(w.bob.received) == 1, what="delivery after resync")
        assert await w.payloads_received(w.bob) == [b"catch up"]


async def test_redis_restart_loses_nothing(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", persist=True)
    redis.start()
    try:
        async with world(Personality.LND_0_20, redis.url, tmp_path) as w:
            await w.start_daemon()
            await w.alice.send_onion_message(w.message_for_bob(b"one"))
            await stored_count(w, 1)

            redis.stop()
            # Kept in the daemon's memory until Redis is back.
            await w.alice.send_onion_message(w.message_for_bob(b"two"))
            await asyncio.sleep(0.5)
            redis.start()

            await stored_count(w, 2)
            w.bob.connect()
            await wait_until(lambda: len(w.bob.received) == 2, what="both delivered")
            assert await w.payloads_received(w.bob) == [b"one", b"two"]
            assert await counter(w, "lost") == 0
    finally:
        redis.stop()


async def test_native_race_stores_what_lnd_could_not_forward(
    redis_url: str, tmp_path: Path
) -> None:
    """lnd 0.21 publishes a message whether its own forward worked; our view can lag.

    bob drops off in lnd before the daemon hears of it: lnd's forward fails while the
    daemon still believes bob is online and leaves the message to lnd. When bob's
    PEER_OFFLINE arrives inside the race window, the daemon stores the message after all.
    """
    async with world(Personality.LND_0_21, redis_url, tmp_path) as w:
        w.bob.connect()
        await w.start_daemon()
        # bob's connection dies without lnd having reported it yet.
        w.bob.online = False
        fate = await w.alice.send_onion_message(w.message_for_bob(b"lost in the race?"))
        assert fate.forwarded_to is None
        w.bob.online = True
        w.bob.disconnect()  # the PEER_OFFLINE, late

        await stored_count(w, 1)
        w.bob.connect()
        await wait_until(lambda: len(w.bob.received) == 1, what="delivery")
        assert await w.payloads_received(w.bob) == [b"lost in the race?"]


async def test_a_second_daemon_waits_for_the_first(redis_url: str, tmp_path: Path) -> None:
    async with world(Personality.LND_0_20, redis_url, tmp_path) as w:
        await w.start_daemon()
        owner = await w.store.control.lock_owner()
        assert owner is not None
        from lndmailbox.daemon import run

        second_stop = asyncio.Event()
        second = asyncio.create_task(run(w.settings, stop=second_stop))
        await asyncio.sleep(1.0)
        assert not second.done()
        assert await w.store.control.lock_owner() == owner
        await w.stop_daemon()
        await wait_until(
            lambda: _owner_changed(w, owner), within=15, what="the second daemon to take over"
        )
        second_stop.set()
        await asyncio.wait_for(second, 30)


async def _owner_changed(w: World, previous: str) -> bool:
    now = await w.store.control.lock_owner()
    return now is not None and now != previous


async def test_a_macaroon_without_the_signer_stops_the_daemon_with_a_clear_error(
    redis_url: str, tmp_path: Path
) -> None:
    from lndmailbox.errors import LndPermissionError
    from lndmailbox.lnd import PERMISSIONS

    async with world(Personality.LND_0_21, redis_url, tmp_path) as w:
        everything_but_signer = {p for _, p in PERMISSIONS.values()} - {"signer:generate"}
        narrow = tmp_path / "narrow.macaroon"
        narrow.write_bytes(w.node.bake_macaroon(sorted(everything_but_signer)))
        from dataclasses import replace

        from lndmailbox.daemon import run

        with pytest.raises(LndPermissionError, match="signer:generate"):
            await asyncio.wait_for(
                run(replace(w.settings, macaroonpath=narrow), stop=asyncio.Event()), 30
            )


async def test_a_macaroon_that_may_not_send_stops_the_daemon_and_keeps_the_mail(
    redis_url: str, tmp_path: Path
) -> None:
    from dataclasses import replace

    from lndmailbox.daemon import run
    from lndmailbox.errors import LndPermissionError
    from lndmailbox.lnd import PERMISSIONS

    async with world(Personality.LND_0_20, redis_url, tmp_path) as w:
        may_not_send = {p for _, p in PERMISSIONS.values()} - {"offchain:write"}
        narrow = tmp_path / "narrow.macaroon"
        narrow.write_bytes(w.node.bake_macaroon(sorted(may_not_send)))
        daemon = asyncio.create_task(
            run(replace(w.settings, macaroonpath=narrow), stop=asyncio.Event())
        )
        await wait_until(lambda: w.node.subscriber_count("custom_messages") >= 1, what="the daemon")
        await w.alice.send_onion_message(w.message_for_bob(b"kept"))
        await stored_count(w, 1)
        w.bob.connect()
        with pytest.raises(LndPermissionError, match="offchain:write"):
            await asyncio.wait_for(daemon, 30)
        # Not one attempt used up: the mail waits for a daemon that may send it.
        [message] = await w.stored_for(w.bob)
        assert message.attempts == 0
