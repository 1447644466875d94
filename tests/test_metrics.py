"""Metrics: served over real HTTP, parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from lndmailbox.daemon.metrics import DELIVERY_DELAY_BUCKETS, Metrics


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics(drop_reasons=("not_allowed", "bad_hmac"))
    yield m
    m.stop()


def scrape(address: tuple[str, int], path: str = "/metrics") -> dict[str, list[Sample]]:
    """GET the endpoint and parse it: family name -> samples."""
    host, port = address
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    matching = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(matching) == 1, (name, labels, samples)
    return matching[0]


def test_scrape_reports_what_was_counted(metrics: Metrics) -> None:
    address = metrics.start_http_server("127.0.0.1", 0)
    assert address[0] == "127.0.0.1"
    assert address[1] > 0
    assert metrics.address == address

    metrics.received.inc(7)
    metrics.forwarded.inc(2)
    metrics.stored.inc(4)
    metrics.delivered.inc(3)
    metrics.expired.inc()
    metrics.duplicate.inc()
    metrics.evicted.inc(2)
    metrics.lost.labels(reason="buffer_full").inc()
    metrics.drop("not_allowed")
    metrics.drop("not_allowed")
    metrics.drop("no_next_hop")
    metrics.notify_failed.inc()
    metrics.queued_messages.set(5)
    metrics.queued_bytes.set(5 * 1432)
    metrics.peers_with_mail.set(2)
    metrics.online_peers.set(11)
    metrics.peel_seconds.observe(0.003)
    metrics.store_seconds.observe(0.0007)
    for seconds in (2.0, 40.0, 7200.0):
        metrics.delivery_delay_seconds.observe(seconds)
    metrics.observe_rpc("SendCustomMessage", 0.02)
    metrics.observe_rpc("SendCustomMessage", 0.2)
    metrics.observe_rpc("GetInfo", 0.004)

    families = scrape(address)

    counters = {
        "received": 7,
        "forwarded": 2,
        "stored": 4,
        "delivered": 3,
        "expired": 1,
        "duplicate": 1,
        "evicted": 2,
        "notify_failed": 1,
    }
    for name, expected in counters.items():
        family = f"lndmailbox_{name}"
        assert value(families[family], f"{family}_total") == expected, name

    dropped = families["lndmailbox_dropped"]
    assert value(dropped, "lndmailbox_dropped_total", reason="not_allowed") == 2
    assert value(dropped, "lndmailbox_dropped_total", reason="no_next_hop") == 1
    # Declared up front, so exported before the first drop of that kind.
    assert value(dropped, "lndmailbox_dropped_total", reason="bad_hmac") == 0
    lost = families["lndmailbox_lost"]
    assert value(lost, "lndmailbox_lost_total", reason="buffer_full") == 1
    assert value(lost, "lndmailbox_lost_total", reason="shutdown") == 0

    assert value(families["lndmailbox_queued_messages"], "lndmailbox_queued_messages") == 5
    assert value(families["lndmailbox_queued_bytes"], "lndmailbox_queued_bytes") == 5 * 1432
    assert value(families["lndmailbox_peers_with_mail"], "lndmailbox_peers_with_mail") == 2
    assert value(families["lndmailbox_online_peers"], "lndmailbox_online_peers") == 11

    peel = families["lndmailbox_peel_seconds"]
    assert value(peel, "lndmailbox_peel_seconds_count") == 1
    assert value(peel, "lndmailbox_peel_seconds_sum") == pytest.approx(0.003)
    assert value(peel, "lndmailbox_peel_seconds_bucket", le="0.0025") == 0
    assert value(peel, "lndmailbox_peel_seconds_bucket", le="0.005") == 1
    store = families["lndmailbox_store_seconds"]
    assert value(store, "lndmailbox_store_seconds_bucket", le="0.001") == 1

    delay = families["lndmailbox_delivery_delay_seconds"]
    assert value(delay, "lndmailbox_delivery_delay_seconds_count") == 3
    assert value(delay, "lndmailbox_delivery_delay_seconds_sum") == pytest.approx(7242.0)
    assert value(delay, "lndmailbox_delivery_delay_seconds_bucket", le="5.0") == 1
    assert value(delay, "lndmailbox_delivery_delay_seconds_bucket", le="60.0") == 2
    assert value(delay, "lndmailbox_delivery_delay_seconds_bucket", le="10800.0") == 3
    assert value(delay, "lndmailbox_delivery_delay_seconds_bucket", le="86400.0") == 3
    bounds = {s.labels["le"] for s in delay if s.name.endswith("_bucket")}
    assert len(bounds) == len(DELIVERY_DELAY_BUCKETS) + 1  # and +Inf

    rpc = families["lndmailbox_lnd_rpc_seconds"]
    name = "lndmailbox_lnd_rpc_seconds_count"
    assert value(rpc, name, rpc="SendCustomMessage") == 2
    assert value(rpc, name, rpc="GetInfo") == 1
    assert value(rpc, "lndmailbox_lnd_rpc_seconds_sum", rpc="SendCustomMessage") == pytest.approx(
        0.22
    )


def test_every_metric_is_prefixed_and_none_is_global(metrics: Metrics) -> None:
    names = {family.name for family in text_string_to_metric_families(metrics.render().decode())}
    assert names
    assert all(name.startswith("lndmailbox_") for name in names)
    assert not any(family.name.startswith("lndmailbox_") for family in REGISTRY.collect())


def test_instances_do_not_share_values() -> None:
    one, two = Metrics(), Metrics()
    one.stored.inc(3)
    assert "lndmailbox_stored_total 3.0" in one.render().decode()
    assert "lndmailbox_stored_total 0.0" in two.render().decode()


def test_stop_frees_the_port_and_a_second_start_works(metrics: Metrics) -> None:
    host, port = metrics.start_http_server("127.0.0.1", 0)
    with pytest.raises(RuntimeError, match="already served"):
        metrics.start_http_server("127.0.0.1", 0)
    metrics.stop()
    assert metrics.address is None
    metrics.stop()  # idempotent
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect((host, port))

    # The same port can be bound again straight away.
    assert metrics.start_http_server("127.0.0.1", port) == (host, port)
    metrics.stored.inc()
    assert value(scrape((host, port))["lndmailbox_stored"], "lndmailbox_stored_total") == 1


def test_a_taken_port_is_an_oserror(metrics: Metrics) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            metrics.start_http_server("127.0.0.1", taken.getsockname()[1])
    assert metrics.address is None


def test_docs_list_every_metric_with_its_labels() -> None:
    """docs/metrics.md and the code name the same metrics, with the same labels."""
    doc = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text()
    documented = {
        name: set(re.findall(r"`(\w+)`", labels))
        for name, labels in re.findall(r"^\| `(lndmailbox_\w+)` \|([^|]*)\|", doc, re.M)
    }
    m = Metrics(drop_reasons=("not_allowed",))
    m.observe_rpc("GetInfo", 0.01)  # so that labelled families have a sample to show labels
    exported: dict[str, set[str]] = {}
    for family in m.registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        exported[name] = {k for s in family.samples for k in s.labels if k != "le"}
    assert documented == exported


def health(address: tuple[str, int], path: str) -> tuple[int, dict[str, object]]:
    host, port = address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_leader_whose_lease_is_unconfirmed_is_not_the_leader_to_a_probe(
    metrics: Metrics,
) -> None:
    address = metrics.start_http_server("127.0.0.1", 0)
    in_lease = True
    metrics.set_role("leader", ready=True, owner="a", since=1.0)
    metrics.lease = lambda: in_lease
    assert health(address, "/health/leader") == (
        200,
        {"role": "leader", "ready": True, "owner": "a", "since": 1.0, "in_lease": True},
    )
    in_lease = False
    code, body = health(address, "/health/leader")
    assert (code, body["in_lease"]) == (503, False)
    assert health(address, "/health")[0] == 200, "still serving: it journals, and waits"
    metrics.set_role("standby", ready=True, owner="a", since=2.0)
    metrics.lease = None
    code, body = health(address, "/health/leader")
    assert code == 503
    assert "in_lease" not in body
