"""SIGTERM while Redis hangs (stopped with SIGSTOP: it accepts nothing and answers nothing),
which a stopped server, refusing connections at once, does not show: exit 0 within 5 s.

Without a bound on the node lock's release and with redis-py retrying timeouts, the stop
waited out several 30 s socket timeouts.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from simnet import Personality

from tests.test_sigterm import READY, daemon, lsp, own_redis


async def test_sigterm_while_redis_hangs(tmp_path: Path) -> None:
    async with (
        lsp(Personality.LND_0_21) as w,
        own_redis(tmp_path) as redis,
        daemon(tmp_path, w.node, redis.url) as d,
    ):
        await d.logged(READY)
        pid = redis.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            for n in range(5):
                await w.alice.send_onion_message(w.message_for_bob(b"while hung %d" % n))
            await d.sigterm("Redis hanging")
        finally:
            os.kill(pid, signal.SIGCONT)
