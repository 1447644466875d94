"""``make bench-lnd``'s parts that need no real lnd: the messages it builds, the pacing of
the sends against the daemon's counters, and the table (the bench itself runs real lnd and
is not part of ``make test``)."""

from __future__ import annotations

import asyncio
import math
import os

from bench import lnd
from itest.build import Generation
from lndmailbox import onion
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.store import Store

LSP = onion.LocalNodeKey.generate()
ONLINE = onion.LocalNodeKey.generate()
OFFLINE = [onion.LocalNodeKey.generate() for _ in range(3)]


def plan(case: lnd.Case) -> lnd.Plan:
    return lnd.Plan(case, LSP.pubkey, ONLINE.pubkey, tuple(k.pubkey for k in OFFLINE))


async def test_messages_go_where_the_case_says_along_its_paths() -> None:
    for case in lnd.Case:
        p = plan(case)
        built = [OnionMessage.decode(m) for m in lnd.build(p, 0, 30)]
        path_keys = set()
        for i, message in enumerate(built):
            forward = await onion.peel(message.path_key, message.onion, LSP)
            assert isinstance(forward, onion.Forward)
            assert forward.next_node_id == p.destination(i)[0]
            path_keys.add(message.path_key)
            if p.is_stored(i):
                key = next(k for k in OFFLINE if k.pubkey == forward.next_node_id)
                assert await lnd.check_stored(p, key, forward.message) == i
            else:
                assert case is lnd.Case.REALISTIC
                assert forward.next_node_id == ONLINE.pubkey
        stored = [i for i in range(30) if p.is_stored(i)]
        if case is lnd.Case.WORST:
            assert len(stored) == 30
            assert len(path_keys) == 30
        else:
            assert stored == [9, 19, 29]
            assert len(path_keys) == lnd.ONLINE_PATHS + len(OFFLINE)
    # A part built elsewhere shares the same paths.
    again = OnionMessage.decode(lnd.build(plan(lnd.Case.REALISTIC), 30, 31)[0])
    assert (
        again.path_key == OnionMessage.decode(lnd.build(plan(lnd.Case.REALISTIC), 0, 1)[0]).path_key
    )


async def test_sends_stay_within_both_windows_and_stop_at_the_interval_s_end(
    redis_url: str,
) -> None:
    store = Store.from_url(redis_url, LSP.pubkey)
    try:
        await store.redis.hset(store.keys.counters_key, mapping={"stored": 7})
        meter = lnd.Meter(store, {"self": os.getpid()})
        meter.published = 0  # as if it followed lnd's stream
        await meter.begin()
        messages = [OnionMessage.decode(m) for m in lnd.build(plan(lnd.Case.WORST), 0, 40)]
        ahead: list[int] = []
        ahead_of_lnd: list[int] = []
        sent = 0

        async def send(message: OnionMessage) -> None:
            # "lnd" publishes each message and the "daemon" decides it as it is sent; the
            # meter reads the decisions later.
            nonlocal sent
            sent += 1
            ahead.append(sent - meter.decided)
            ahead_of_lnd.append(sent - (meter.published or 0))
            await asyncio.sleep(0.002)
            async with meter.changed:
                meter.published = (meter.published or 0) + 1
                meter.changed.notify_all()
            name = "left_to_lnd" if sent % 2 else "stored"
            await store.redis.hincrby(store.keys.counters_key, name, 1)

        driven = await lnd.drive(
            meter,
            send,
            messages,
            lead=5,
            seconds=math.inf,
            tail=5,
            in_flight=4,
            window=6,
            lnd_window=3,
            every=0.001,
        )
        assert 35 <= driven.sent <= 40
        assert sent == driven.sent == meter.decided
        assert max(ahead) <= 6
        assert max(ahead_of_lnd) <= 3
        assert 5 <= driven.start.count < driven.end.count
        assert driven.end.count >= 35
        assert driven.end.at > driven.start.at
        assert set(driven.end.cpu) == {"self", "bench"}
        assert sum(meter.growth().values()) == sent

        # A timed interval of no length ends at once, and the sending with it.
        more = [OnionMessage.decode(m) for m in lnd.build(plan(lnd.Case.WORST), 40, 240)]
        short = await lnd.drive(
            meter, send, more, lead=0, seconds=0.0, tail=0, in_flight=2, window=4, lnd_window=4
        )
        assert short.sent < 100
        assert meter.decided == sent
    finally:
        await store.aclose()


def test_the_table_shows_rate_multiple_and_cpu_per_message() -> None:
    cpu0 = dict.fromkeys(lnd.PROCESSES, 1.0)
    cpu1 = {**dict.fromkeys(lnd.PROCESSES, 1.5), "daemon": 3.0}
    row = lnd.Row(
        Generation.NATIVE,
        lnd.Case.WORST,
        sent=1200,
        start=lnd.Snapshot(10.0, 100, cpu0),
        end=lnd.Snapshot(11.0, 1100, cpu1),
        outcomes={"stored": 1200},
        checked=40,
    )
    result = lnd.Generated(Generation.NATIVE, "0.21.3-beta commit=v0.21.3-beta", [row], 60.0)
    lines = lnd.table([result])
    assert lines[-1].split()[:6] == ["0.21.3-beta", "worst", "1000", "1.00", "1000", "2.13x"]
    assert "2000" in lines[-1].split()  # daemon: 2 s of CPU over 1000 messages
    (verdict,) = lnd.verdicts([result])
    assert "2.13x ok" in verdict
    assert "daemon 2000 us" in verdict
