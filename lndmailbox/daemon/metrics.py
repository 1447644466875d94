"""Prometheus metrics of the mailbox, on a registry of their own, served over HTTP on demand.

Every :class:`Metrics` owns a fresh ``CollectorRegistry``, so several instances (tests, two
daemons in one process) never collide, and nothing lands in prometheus_client's global
registry. The daemon updates the public attributes directly (``metrics.stored.inc()``,
``metrics.dropped.labels(reason="not_allowed").inc()``, ``metrics.queued_bytes.set(n)``);
docs/metrics.md lists every metric with its type, labels and meaning.

The HTTP endpoint (``--metrics-addr``, off by default) is prometheus_client's WSGI app on the
standard library's threading WSGI server in a daemon thread (as prometheus_client's own
``start_http_server`` does, but polling for shutdown every 50 ms instead of 500 ms, so that
:meth:`Metrics.stop` returns at once). :meth:`Metrics.start_http_server` returns the address it
bound (port 0 picks a free port); :meth:`Metrics.stop` shuts it down and frees the port.

Beside the metrics, the same server answers health checks (for compose, systemd and
orchestrators), with a JSON body ``{"role": ..., "ready": ..., "owner": ..., "since": ...}``
(``ready``: a leader's pipeline is on lnd's streams and deciding; a standby is ready as
soon as it is a standby):

- ``/health``: 200 while the daemon is the node's leader or a standby on lnd's stream,
  503 while it starts (not yet on lnd's stream, or waiting for lnd or Redis);
- ``/health/leader``: 200 only while it leads the node and its lease is confirmed (503
  otherwise): where a load balancer or a "which one leads" probe looks. A leader whose
  lock renewals have not got through within the lease hands nothing to lnd (a standby
  may lead), and says ``"in_lease": false``.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_wsgi_app,
)

__all__ = [
    "DELIVERY_DELAY_BUCKETS",
    "FAST_BUCKETS",
    "PREFIX",
    "RPC_BUCKETS",
    "STREAM_LAG_BUCKETS",
    "Metrics",
]

log = logging.getLogger(__name__)

PREFIX: Final = "lndmailbox"

#: Local work (peel, a Redis round trip): half a millisecond to a few seconds.
FAST_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

#: lnd RPCs: a millisecond to the half minute a slow or stuck lnd may take.
RPC_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Stored -> delivered: a wallet that was away for seconds up to the default TTL of a day.
DELIVERY_DELAY_BUCKETS: Final = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    3 * 3600.0,
    6 * 3600.0,
    12 * 3600.0,
    86400.0,
)

#: lnd's onion stream, how stale a message may be when read: an idle stream's bound is a
#: window of 20-500 ms old; a backlog (the decider behind) makes it seconds.
STREAM_LAG_BUCKETS: Final = (
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


# How often the server thread checks whether stop() asked it to end.
_POLL_INTERVAL: Final = 0.05


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr for every scrape."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _make_server(host: str, port: int, app: WSGIApplication) -> WSGIServer:
    """A WSGI server bound to host:port, IPv4 or IPv6 as the host requires."""
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(_ThreadingServer):
        address_family = family

    return make_server(str(sockaddr[0]), port, app, Server, handler_class=_QuietHandler)


HEALTH_PATH: Final = "/health"
LEADER_PATH: Final = "/health/leader"
SERVING_ROLES: Final = frozenset({"leader", "standby"})


def _with_health(metrics: Metrics, app: WSGIApplication) -> WSGIApplication:
    """``app`` (the metrics), with the health paths answered from ``metrics.role``."""

    def serve(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", "")).rstrip("/")
        if path not in (HEALTH_PATH, LEADER_PATH):
            return app(environ, start_response)
        role, details, lease = metrics.role, dict(metrics.role_details), metrics.lease
        if role == "leader":
            details["in_lease"] = lease is None or lease()
        leads = role == "leader" and bool(details["in_lease"])
        healthy = leads if path == LEADER_PATH else role in SERVING_ROLES
        body = json.dumps({"role": role, **details}).encode()
        start_response(
            "200 OK" if healthy else "503 Service Unavailable",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return serve


RESCUED_WHY = ("came_online", "went_offline")
"""Why a message for an online next hop was kept on the native transport (docs/metrics.md)."""

LOST_REASONS = ("buffer_full", "store_error", "shutdown")
"""Why a message meant to be kept was lost: the store writer's buffer was full while Redis
was away, Redis refused the write, or the daemon stopped before Redis took it."""
PEEL_FALLBACK_REASONS = ("missing", "bad_encrypted_data", "bad_point", "missing_next_hop")
"""Why the next hop of a native message was not read from its encrypted data: lnd sent
none (``missing``), or it did not decrypt or hold a next hop (an ``OnionError``'s reason;
those listed are exported from the start), or the full peel named another (``mismatch``)."""


LSPS_METHODS: Final = (
    "lsps0.list_protocols",
    "lsps5.set_webhook",
    "lsps5.list_webhooks",
    "lsps5.remove_webhook",
)
LSPS_DROP_REASONS: Final = ("rate_limited", "queue_full", "not_a_request", "answer_failed")
LSPS5_NOTIFICATIONS: Final = ("lsps5.webhook_registered", "lsps5.onion_message_incoming")
LSPS5_ATTEMPT_FAILURES: Final = (
    "status",
    "redirect",
    "timeout",
    "connect",
    "tls",
    "private_address",
    "sign",
)
"""Label values exported from the start, so that ``rate()`` works before the first."""


class Metrics:
    """Every metric of the mailbox, all named ``lndmailbox_*``, on :attr:`registry`.

    Counters (exposed with the ``_total`` suffix): ``received``, ``forwarded``, ``stored``,
    ``delivered``, ``confirmed``, ``redelivered``, ``unconfirmed``, ``expired``, ``duplicate``,
    ``evicted``, ``lost`` and ``dropped`` (label ``reason`` each; every reason of ``lost`` is
    exported from the start), ``notify_failed``, ``rescued`` (label ``why``, both exported from
    the start), ``leader_changes``, ``standby_journaled``, ``journal_skipped``,
    ``decided_over_memory``, ``adopted``, ``replica_wait_short``, ``next_hops_read``, ``peel_fallbacks`` (label
    ``reason``, its usual values exported from the start); with ``--lsps5``,
    ``lsps_requests`` (``method``, ``outcome``), ``lsps_dropped`` (``reason``),
    ``lsps5_notifications`` (``method``, ``outcome``) and
    ``lsps5_notification_attempts_failed`` (``reason``), their known values exported from
    the start.
    Gauges: ``queued_messages``, ``queued_bytes``, ``peers_with_mail``, ``online_peers``,
    ``leader``, ``lsps5_webhooks``. Histograms (seconds): ``peel_seconds``, ``store_seconds``,
    ``delivery_delay_seconds``, ``lnd_rpc_seconds`` (label ``rpc``), ``stream_lag_seconds``.

    ``drop_reasons`` are label values of ``dropped`` created up front, so they are exported as
    0 before the first drop and ``rate()`` works from the start.
    """

    def __init__(self, *, drop_reasons: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        counter, gauge, histogram = self._counter, self._gauge, self._histogram
        self.received = counter("received", "Onion messages received from peers through lnd.")
        self.forwarded = counter(
            "forwarded", "Onion messages passed on at once to an online next hop."
        )
        self.stored = counter("stored", "Onion messages stored for an offline peer.")
        self.delivered = counter(
            "delivered", "Stored onion messages that lnd accepted for their peer."
        )
        self.confirmed = counter(
            "confirmed",
            "Delivered onion messages confirmed (their peer stayed connected for the "
            "confirmation window, or sent an onion message since) and deleted.",
        )
        self.redelivered = counter(
            "redelivered",
            "Delivered onion messages put back in their queue unconfirmed: the peer left "
            "within the confirmation window.",
        )
        self.unconfirmed = counter(
            "unconfirmed",
            "Delivered onion messages given up unconfirmed after --max-redeliveries.",
        )
        self.expired = counter("expired", "Stored onion messages removed at their expiry.")
        self.duplicate = counter("duplicate", "Onion messages not stored again: already queued.")
        self.evicted = counter(
            "evicted", "Stored onion messages pushed out by newer ones when a cap was reached."
        )
        self.lost = counter(
            "lost",
            "Onion messages the mailbox meant to keep and could not, by reason.",
            ("reason",),
        )
        self.dropped = counter(
            "dropped", "Onion messages neither forwarded nor stored, by reason.", ("reason",)
        )
        self.notify_failed = counter(
            "notify_failed", "Webhook notifications given up on or refused (queue full)."
        )
        self.rescued = counter(
            "rescued",
            "Native transport: messages for an online next hop kept in case lnd's forward "
            "missed it, by why.",
            ("why",),
        )
        self.leader_changes = counter(
            "leader_changes",
            "Times this daemon took the node's lead (summed over the node's daemons: its "
            "leader changes).",
        )
        self.standby_journaled = counter(
            "standby_journaled", "Onion messages this daemon journaled while standing by."
        )
        self.journal_skipped = counter(
            "journal_skipped",
            "Onion messages a standby read after the leader had decided them: not journaled.",
        )
        self.decided_over_memory = counter(
            "decided_over_memory",
            "Decided onion messages whose journal entries were deleted while Redis refused "
            "writes for memory, without being recorded as decided.",
        )
        self.adopted = counter(
            "adopted",
            "Journaled onion messages this leader decided that only a standby had read.",
        )
        self.replica_wait_short = counter(
            "replica_wait_short",
            "Writes that matter (journal, store, removal after delivery) whose Redis "
            "replicas did not confirm them within --redis-wait-timeout: they stand on the "
            "primary, and a failover right then would lose them.",
        )
        # LSPS0 requests (lsps_service) and LSPS5 notifications (wakeups).
        self.lsps_requests = counter(
            "lsps_requests",
            "LSPS0 requests peers sent, by method (unknown ones as other) and outcome "
            "(ok, or the JSON-RPC error's name).",
            ("method", "outcome"),
        )
        self.lsps_dropped = counter(
            "lsps_dropped",
            "LSPS0 messages read and not answered, by reason (too_large, rate_limited, "
            "not_a_request, answer_failed).",
            ("reason",),
        )
        self.lsps5_webhooks = gauge(
            "lsps5_webhooks", "LSPS5 webhooks registered, as last counted (hourly)."
        )
        self.lsps5_notifications = counter(
            "lsps5_notifications",
            "LSPS5 notifications, by method and outcome: sent (a webhook answered 200), "
            "failed (one webhook given up), dropped (the queue was full), cooldown "
            "(not sent: the client was notified less than --lsps5-cooldown ago).",
            ("method", "outcome"),
        )
        self.lsps5_notification_attempts_failed = counter(
            "lsps5_notification_attempts_failed",
            "POSTs of LSPS5 notifications that failed, by reason (status, redirect, "
            "timeout, connect, tls, private_address, sign).",
            ("reason",),
        )
        self.leader = gauge(
            "leader", "1 while this daemon leads the node (decides, stores, delivers), else 0."
        )

        self.queued_messages = gauge("queued_messages", "Onion messages stored right now.")
        self.queued_bytes = gauge("queued_bytes", "Bytes of onion messages stored right now.")
        self.peers_with_mail = gauge("peers_with_mail", "Peers with at least one stored message.")
        self.online_peers = gauge("online_peers", "Peers connected to lnd right now.")

        self.peel_seconds = histogram(
            "peel_seconds", "Time to peel one onion layer (including lnd's ECDH).", FAST_BUCKETS
        )
        self.next_hops_read = counter(
            "next_hops_read",
            "Native transport: messages whose next hop was read from the "
            "encrypted_recipient_data lnd published (one ECDH, on the path key), before "
            "any peel.",
        )
        self.peel_fallbacks = counter(
            "peel_fallbacks",
            "Native transport: messages whose next hop could not be read from the "
            "encrypted_recipient_data lnd published, peeled in full instead, by reason.",
            ("reason",),
        )
        self.store_seconds = histogram(
            "store_seconds",
            "Time of one Redis write of messages (a batch under load).",
            FAST_BUCKETS,
        )
        self.delivery_delay_seconds = histogram(
            "delivery_delay_seconds",
            "Time from storing a message to lnd accepting it for its peer.",
            DELIVERY_DELAY_BUCKETS,
        )
        self.lnd_rpc_seconds = histogram(
            "lnd_rpc_seconds", "Latency of unary lnd RPCs, by method.", RPC_BUCKETS, ("rpc",)
        )
        self.stream_lag_seconds = histogram(
            "stream_lag_seconds",
            "Per message read from lnd's onion stream: how long before it the stream was "
            "last known to hold nothing for the mailbox.",
            STREAM_LAG_BUCKETS,
        )

        for reason in drop_reasons:
            self.dropped.labels(reason=reason)
        for reason in LOST_REASONS:
            self.lost.labels(reason=reason)
        for why in RESCUED_WHY:
            self.rescued.labels(why=why)
        for reason in PEEL_FALLBACK_REASONS:
            self.peel_fallbacks.labels(reason=reason)
        for method in LSPS_METHODS:
            self.lsps_requests.labels(method=method, outcome="ok")
        for reason in LSPS_DROP_REASONS:
            self.lsps_dropped.labels(reason=reason)
        for method in LSPS5_NOTIFICATIONS:
            for outcome in ("sent", "failed", "dropped", "cooldown"):
                self.lsps5_notifications.labels(method=method, outcome=outcome)
        for reason in LSPS5_ATTEMPT_FAILURES:
            self.lsps5_notification_attempts_failed.labels(reason=reason)

        self.role = "starting"
        """This daemon's role, for the health endpoint: ``starting``, ``standby``, ``leader``."""
        self.role_details: dict[str, str | float | bool] = {}
        self.lease: Callable[[], bool] | None = None
        """While leading: whether the node lock's lease is known to be this daemon's
        (:meth:`Term.leads`; read from the server's thread)."""
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, namespace=PREFIX, registry=self.registry)

    def _gauge(self, name: str, doc: str) -> Gauge:
        return Gauge(name, doc, namespace=PREFIX, registry=self.registry)

    def _histogram(
        self, name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()
    ) -> Histogram:
        return Histogram(
            name, doc, labels, namespace=PREFIX, registry=self.registry, buckets=buckets
        )

    def set_role(self, role: str, **details: str | float | bool) -> None:
        """This daemon is ``role`` now (``standby`` or ``leader``): what the health
        endpoint answers, with ``details`` (owner, since) in its body."""
        self.role, self.role_details = role, dict(details)

    def observe_rpc(self, rpc: str, seconds: float) -> None:
        """Record one lnd RPC's latency; fits ``LndClient(on_rpc=metrics.observe_rpc)``."""
        self.lnd_rpc_seconds.labels(rpc=rpc).observe(seconds)

    def drop(self, reason: str) -> None:
        """Count one dropped message (``dropped_total{reason=...}``)."""
        self.dropped.labels(reason=reason).inc()

    def render(self) -> bytes:
        """The exposition text a scrape would return."""
        return generate_latest(self.registry)

    @property
    def address(self) -> tuple[str, int] | None:
        """Where the HTTP endpoint listens (host, port), or None when it is not running."""
        server = self._server
        if server is None:
            return None
        host, port = server.server_address[:2]
        return str(host), int(port)

    def start_http_server(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``/metrics`` (any path, in fact) on host:port in a daemon thread.

        ``port`` 0 picks a free port; the bound address is returned. Raises OSError when the
        address cannot be bound and RuntimeError when already serving.
        """
        with self._lock:
            if self._server is not None:
                raise RuntimeError(f"metrics already served on {self.address}")
            server = _make_server(host, port, _with_health(self, make_wsgi_app(self.registry)))
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name=f"metrics-http-{server.server_address[1]}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
        address = self.address
        assert address is not None
        log.info("metrics on http://%s:%d/metrics", *address)
        return address

    def stop(self) -> None:
        """Stop serving and free the port; a no-op when not serving. Blocks for at most ~50 ms."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
