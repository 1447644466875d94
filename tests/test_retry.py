"""lndmailbox.retry: the one backoff every loop that tries again waits by."""

from __future__ import annotations

from lndmailbox.retry import Backoff


def test_backoff_grows_with_jitter_up_to_the_maximum() -> None:
    # Was lnd.Backoff's test; lnd's client and streams now wait by retry.Backoff.
    backoff = Backoff(initial=0.5, maximum=8.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (40, 8.0)]:
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
