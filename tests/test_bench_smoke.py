"""The mailbox benchmark still runs end to end (tiny counts, no timing asserted).

``make bench`` gives the figures; this only keeps its machinery from rotting: simnet in
its own process, the real daemon, a real Redis, ingest, the drain and the memory reading,
and the table that prints them.
"""

from __future__ import annotations

import pytest
from simnet import Personality

from bench import mailbox
from bench.__main__ import details, table


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

    printed = table((303.4, 273.6, 1.11), [figures]) + details(figures)
    assert any("crypto floor 273.6 us" in line for line in printed)
    assert any("ingest: peel, decide, store" in line for line in printed)
    assert any("its floor: stream + peel only" in line for line in printed)
    assert any("signer round trips alone" in line for line in printed)
    assert any("drain 8 to returning peer" in line for line in printed)
