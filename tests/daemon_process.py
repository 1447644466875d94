"""The ``lndmailbox`` command line of the tests that run the daemon as a subprocess.

Those tests (SIGTERM, SIGKILL, refused credentials, Redis outages) need the real process:
its exit code, its signals, its log. Each points it at simnet and a Redis the way an
operator points it at lnd, and adds the flags its scenario is about.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# Caps no scenario reaches: an eviction would be policy, not what those tests look for.
ROOM_FOR_EVERYTHING = (
    "--max-messages-per-peer",
    "100000",
    "--max-bytes-per-peer",
    "1GiB",
    "--max-bytes-total",
    "1GiB",
)


def daemon_argv(
    rpcserver: str, cert: Path, macaroon: Path, redis_url: str | None, *extra: str
) -> list[str]:
    """The command line; ``redis_url`` None: no --redis-url, the daemon's embedded Redis
    (in the --datadir that ``extra`` names)."""
    redis = [] if redis_url is None else ["--redis-url", redis_url]
    return [
        sys.executable,
        "-m",
        "lndmailbox",
        "--rpcserver",
        rpcserver,
        "--tlscertpath",
        str(cert),
        "--macaroonpath",
        str(macaroon),
        "--network",
        "regtest",
        *redis,
        *extra,
    ]


def health(port: int, path: str = "/health") -> tuple[int, dict[str, Any]]:
    """The daemon's health endpoint (``--metrics-addr``): status and JSON body; (0, {})
    while it does not answer. Blocking: call it through ``asyncio.to_thread``."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except (OSError, ValueError):
        return 0, {}


async def leading(port: int) -> bool:
    """Whether the daemon leads its node and is ready (on lnd's streams, deciding)."""
    code, body = await asyncio.to_thread(health, port, "/health/leader")
    return code == 200 and body.get("ready") is True
