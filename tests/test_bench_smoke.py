"""The mailbox benchmark still runs end to end (tiny counts, no timing asserted).

``make bench`` gives the figures; this only keeps its machinery from rotting: simnet in
its own process, the real daemon, a real Redis, ingest, the drain and the memory reading,
the realistic mix with its floor (and, on lnd 0.21, again with a standby daemon
journaling), and the table that prints them.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from simnet import Personality

from bench import durability, mailbox, scale
from bench.__main__ import details, durability_rows, scale_details, scale_rows, table
from lndmailbox.store import Store


@pytest.mark.parametrize("personality", list(Personality))
async def test_mailbox_bench_runs_end_to_end(personality: Personality, redis_url: str) -> None:
    lines: list[str] = []
    config = mailbox.Config(
        personality=personality,
        messages=12,
        warmup=3,
        recipients=3,
        drain=8,
        signer_calls=20,
        redis_url=redis_url,
        mix_paths=4,
        standby=personality is Personality.LND_0_21,
        race_window=0.0,  # no wait before the mix
        timeout=20.0,
    )
    figures = await mailbox.run(config, say=lines.append)

    assert figures.ingest.messages == figures.floor.count == 12
    assert figures.floor.rate > 0
    assert figures.signer.count == 20
    assert figures.signer.rate > 0
    assert figures.ingest.rate > 0
    assert not {k for k in figures.ingest.counters if k.startswith(("dropped", "lost"))}
    # Every drained message reached bob and he peeled each one to its own payload.
    assert figures.drain.received == figures.drain.peeled == figures.drain.distinct == 8
    assert figures.drain.bare > 0
    short, long = figures.memory
    assert (short.queues, short.messages) == (3, 15)
    assert (long.queues, long.messages) == (1, 8)
    assert long.per_message > mailbox.MESSAGE_SIZE
    assert any(line.startswith("ingest:") for line in lines)

    # The mix: 3 online recipients and 1 offline, one message in ten (index 9) to it.
    assert figures.alone is not None
    assert figures.alone.count == 12
    assert [m.standby for m in figures.mixes] == (
        [False, True] if personality is Personality.LND_0_21 else [False]
    )
    for mix in figures.mixes:
        assert mix.problems == ()
        assert (mix.messages, mix.paths, mix.offline, mix.online) == (12, 4, 1, 11)
        assert mix.received == 11
        assert mix.queued == 1
        assert mix.peeled == mix.checked > 0
        assert mix.decided["stored"] == 1
        assert mix.decided.get("left_to_lnd", 0) + mix.decided.get("forwarded", 0) == 11
        assert mix.cpu.daemon > 0
    if personality is Personality.LND_0_21:
        assert figures.mixes[1].standby_read >= 15
        assert figures.mixes[1].cpu.standby >= 0  # /proc counts 10 ms ticks: 0 is possible

    printed = table((303.4, 273.6, 1.11), [figures]) + details(figures)
    assert any("crypto floor 273.6 us" in line for line in printed)
    assert any("ingest: peel, decide, store" in line for line in printed)
    assert any("its floor: stream + peel only" in line for line in printed)
    assert any("signer round trips alone" in line for line in printed)
    assert any("drain 8 to returning peer" in line for line in printed)
    assert any("mix: 4 paths, 10% kept" in line for line in printed)
    assert any("its floor: simnet alone" in line for line in printed)
    assert any("busiest:" in line for line in printed)
    assert any("the same, hot standby on" in line for line in printed) == (
        personality is Personality.LND_0_21
    )


def test_mix_plan_sends_one_in_ten_offline_over_few_paths() -> None:
    plan = mailbox.mix_plan("mix", "m", 20, 1000)
    assert (len(plan.online), len(plan.offline)) == (18, 2)
    assert set(plan.sequence) == {*plan.online, *plan.offline}
    assert plan.offline_in(0, 1000) == 100
    assert plan.offline_in(300, 800) == 50
    assert plan.most_per_offline_peer == 50
    # Round robin in each group: every online recipient gets its share.
    assert {plan.sequence.count(name) for name in plan.online} == {50}


async def test_the_scale_bench_runs_end_to_end() -> None:
    """bench.scale in a tiny size: both servers, the fill, the rounds, every phase at size
    (mailboxctl in its own process), SLOWLOG read, the rows printed."""
    lines: list[str] = []
    config = scale.Config(messages=300, peers=30, workload_peers=3, workload_messages=48, rounds=1)
    f = await scale.run(config, say=lines.append)

    assert lines[0] == f"scale: seed {f.seed}"
    assert len(f.empty_per_message) == len(f.full_per_message) == 1
    assert f.batch_seconds > 0
    assert f.batch_redis.command.startswith("EVALSHA delivered")
    assert [p.what for p in f.phases] == [
        "mailboxctl peers",
        "mailboxctl status",
        "daemon start-up",
        "sweep",
        "daemon start-up, empty store",
        "mailboxctl peers, empty store",
        "mailboxctl status, empty store",
    ]
    peers, status, start_up, sweep = f.phases[:4]
    assert peers.note == "31 lines of output"  # the header and one line a peer
    assert start_up.note.startswith("leads after ")
    assert "12 unconfirmed put back after " in start_up.note
    assert sweep.note == "30 expired messages removed (of 30 due)"
    for p in (peers, status, start_up, sweep):
        assert p.calls > 0
        assert p.whole_reads == ()
    assert all("read everything" not in problem for problem in f.problems)

    rows = scale_rows(f) + scale_details(f)
    assert any(row.startswith("store+deliver, 300 msgs/30 peers") for row in rows)
    assert any(row.startswith("  sweep: heaviest call") for row in rows)


def test_a_whole_read_of_the_mail_index_is_caught() -> None:
    """The check that fails the bench when one call reads every peer."""
    store = Store(aioredis.Redis(), bytes.fromhex("02" + "11" * 32))
    mail, usage = store.keys.mail_key, store.keys.usage_key
    calls = [
        scale.Call(10, f"ZRANGE {mail} 0 -1", 4),
        scale.Call(10, f"ZRANGEBYSCORE {mail} -inf 5", 4),
        scale.Call(10, f"ZRANGEBYSCORE {mail} -inf 5 LIMIT 0 32", 7),
        scale.Call(10, f"HGETALL {usage}", 2),
        scale.Call(10, f"HMGET {usage} messages bytes", 4),
        scale.Call(10, "EVALSHA summaries 65 x", 3 * 32 + 4),
        scale.Call(10, "EVALSHA summaries 20001 x", 30_004),
    ]
    assert [w.split(" (")[0] for w in scale._whole_reads(calls, store, 32)] == [
        f"ZRANGE {mail} 0 -1",
        f"ZRANGEBYSCORE {mail} -inf 5",
        f"HGETALL {usage}",
        "EVALSHA summaries 20001 x",
    ]


async def test_the_replica_wait_bench_runs_end_to_end() -> None:
    off, wait = durability.MODES[:2]
    figures = await durability.measure(messages=5, rounds=1, modes=(off, wait), say=print)
    assert [f.mode for f in figures] == [off.name, wait.name]
    assert all(f.per_message > 0 for f in figures)
    (row,) = durability_rows(figures)
    assert row.startswith(f"store+deliver, {wait.name}")
