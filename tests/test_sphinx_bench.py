"""The peel benchmark still runs (a tiny round; the figures themselves come from make bench)."""

from __future__ import annotations

import pytest

from bench import peel


def test_bench_runs_and_prints_the_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    peel.run(rounds=1, peels_per_round=5)
    out = capsys.readouterr().out
    assert "peels/second" in out
    assert "ratio peel / floor" in out
