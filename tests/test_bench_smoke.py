"""The mailbox benchmark still runs end to end (tiny counts, no timing asserted).

``make bench`` gives the figures; this only keeps its machinery from rotting: simnet in
its own process, the real daemon, a real Redis, ingest, the drain and the memory reading,
the realistic mix with its floor (and, on lnd 0.21, again with a standby daemon
journaling), and the table that prints them.
"""

from __future__ import annotations

import pytest
from simnet import Personality

from bench import durability, mailbox
from bench.__main__ import details, durability_rows, table


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


async def test_the_replica_wait_bench_runs_end_to_end() -> None:
    off, wait = durability.MODES[:2]
    figures = await durability.measure(messages=5, rounds=1, modes=(off, wait), say=print)
    assert [f.mode for f in figures] == [off.name, wait.name]
    assert all(f.per_message > 0 for f in figures)
    (row,) = durability_rows(figures)
    assert row.startswith(f"store+deliver, {wait.name}")
