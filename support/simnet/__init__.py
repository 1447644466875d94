"""simnet: a stand-in lnd for tests, ``make demo`` and the benchmarks.

A real ``grpc.aio`` server on a loopback port, with lnd's TLS certificate shape, lnd's
macaroons and lnd's status codes and messages, and simulated peers holding real keys.
Only tests, the demo and the benchmarks import it; the daemon never does.

    node = SimNode(Personality.LND_0_21)
    await node.start()
    alice = node.add_peer("alice")
    node.open_channel(alice, scid(800_000, 1, 0))
    alice.connect()
    ...  # LndClient(node.endpoint) talks to it like to lnd
    await node.stop()

Standalone: ``python -m simnet --help``.
"""

from __future__ import annotations

from simnet.macaroons import (
    ADMIN_PERMISSIONS,
    READONLY_PERMISSIONS,
    MacaroonError,
    MacaroonService,
    time_before_caveat,
)
from simnet.node import (
    PERMISSIONS,
    SHUTDOWN_STATUS,
    STREAMS,
    CustomMessageReceived,
    Ingested,
    IngestResult,
    OnionRateLimits,
    Personality,
    SimChannel,
    SimnetError,
    SimNode,
    SimPeer,
)
from simnet.tls import TlsPair, generate_tls_pair

__all__ = [
    "ADMIN_PERMISSIONS",
    "PERMISSIONS",
    "READONLY_PERMISSIONS",
    "SHUTDOWN_STATUS",
    "STREAMS",
    "CustomMessageReceived",
    "IngestResult",
    "Ingested",
    "MacaroonError",
    "MacaroonService",
    "OnionRateLimits",
    "Personality",
    "SimChannel",
    "SimNode",
    "SimPeer",
    "SimnetError",
    "TlsPair",
    "generate_tls_pair",
    "time_before_caveat",
]
