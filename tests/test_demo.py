"""`make demo`, the README's first command, tells its whole story on both lnd generations."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from simnet.demo import main


@pytest.fixture(autouse=True)
def logging_put_back() -> Iterator[None]:
    """The demo configures logging as a program does; the rest of the suite must not see it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.mark.parametrize("lnd", ["0.21", "0.20"])
def test_demo_story_ends_with_bob_reading_alices_payload(
    lnd: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--lnd", lnd]) == 0
    out = capsys.readouterr().out
    assert "stored in Redis for bob: 1 message" in out
    assert "bob peels it with his own key and reads: 'held_htlc_available (demo)" in out
    assert "delivered=1" in out
