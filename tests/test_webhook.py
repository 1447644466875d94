"""Webhook notifications against a real local HTTP server (asyncio streams, HTTP/1.1 by hand)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lndmailbox.daemon.webhook import (
    SIGNATURE_HEADER,
    Notifier,
    delivered_event,
    encode_event,
    sign,
    stored_event,
    verify_signature,
)
from lndmailbox.errors import ConfigError
from tests.http_endpoint import MakeEndpoint

SECRET = b"correct horse battery staple"
NODE = bytes.fromhex("03" + "11" * 32)
PEER = bytes.fromhex("02" + "ab" * 32)
WAIT = 5.0  # seconds a test waits for something that should happen in milliseconds


def refused_url() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


class Failures:
    """on_failure that records reasons and lets a test wait for a number of them."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self._changed.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.reasons) < count:
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def running(notifier: Notifier, *, drain: float = 0.0) -> AsyncIterator[Notifier]:
    task = asyncio.create_task(notifier.run())
    await asyncio.sleep(0)  # let run() start its workers
    try:
        yield notifier
    finally:
        await notifier.aclose(drain=drain)
        await task


def event(n: int = 0) -> dict[str, object]:
    return stored_event(
        node=NODE,
        peer=PEER,
        message_id=f"msg-{n}",
        size=1366,
        at=1_700_000_000.25 + n,
        expires_at=1_700_086_400.25 + n,
    )


async def test_signed_json_reaches_the_endpoint(endpoint: MakeEndpoint) -> None:
    ep = await endpoint()
    failures = Failures()
    notifier = Notifier(ep.url, SECRET, on_failure=failures, trust_env=False)
    async with running(notifier, drain=WAIT):
        notifier.submit(event())
        notifier.submit(
            delivered_event(node=NODE, peer=PEER, message_id="msg-0", size=1366, at=1.5e9)
        )
    assert failures.reasons == []

    stored, delivered = sorted(ep.requests, key=lambda r: json.loads(r.body)["event"], reverse=True)
    assert stored.method == "POST"
    assert stored.path == "/hooks/mailbox"
    assert stored.headers["content-type"] == "application/json"
    assert stored.headers["user-agent"].startswith("lndmailbox/")
    # Compact, sorted keys: the exact bytes an integrator's HMAC runs over.
    assert stored.body == (
        b'{"at":1700000000.25,"event":"stored","expires_at":1700086400.25,'
        b'"message_id":"msg-0","node":"03'
        + b"11" * 32
        + b'","peer":"02'
        + b"ab" * 32
        + b'","size":1366}'
    )
    assert json.loads(delivered.body) == {
        "event": "delivered",
        "node": NODE.hex(),
        "peer": PEER.hex(),
        "message_id": "msg-0",
        "size": 1366,
        "at": 1.5e9,
    }
    for request in (stored, delivered):
        header = request.headers[SIGNATURE_HEADER.lower()]
        # Checked independently of the module's own helper...
        mac = hmac.new(SECRET, request.body, hashlib.sha256).hexdigest()
        assert header == f"sha256={mac}"
        # ...and with the helper integrators are told to use.
        assert verify_signature(SECRET, request.body, header)
        assert not verify_signature(b"another secret", request.body, header)
        assert not verify_signature(SECRET, request.body.replace(b"1366", b"1367"), header)
    assert notifier.sent == 2
    assert notifier.failed == 0


def test_verify_signature_rejects_malformed_headers() -> None:
    body = encode_event(event())
    good = sign(SECRET, body)
    assert verify_signature(SECRET, body, good)
    assert verify_signature(SECRET, body, "  SHA256=" + good[7:].upper() + " ")
    for header in (None, "", good[7:], "sha1=" + good[7:], good[:-1], "sha256=zz", "sha256=é"):
        assert not verify_signature(SECRET, body, header), header


async def test_non_2xx_answers_are_retried_until_accepted(endpoint: MakeEndpoint) -> None:
    ep = await endpoint(statuses=[500, 503, 404])
    failures = Failures()
    notifier = Notifier(ep.url, SECRET, on_failure=failures, backoff_initial=0.01, trust_env=False)
    async with running(notifier, drain=WAIT):
        notifier.submit(event())
    assert len(ep.requests) == 4
    assert len({r.body for r in ep.requests}) == 1
    assert failures.reasons == []
    assert notifier.sent == 1


async def test_a_hanging_endpoint_holds_up_nothing(endpoint: MakeEndpoint) -> None:
    ep = await endpoint(hang=True)
    failures = Failures()
    notifier = Notifier(
        ep.url,
        SECRET,
        on_failure=failures,
        timeout=0.2,
        give_up_after=0.5,
        backoff_initial=0.05,
        concurrency=2,
        trust_env=False,
    )
    async with running(notifier):
        begin = time.perf_counter()
        for n in range(20):
            notifier.submit(event(n))
        # submit() only queues; waiting on the endpoint would take 20 x 0.2 s at least.
        assert time.perf_counter() - begin < 1.0
        await ep.wait_for(2)  # both workers are now stuck on the endpoint...
        # ...and the event loop is not: other work (ingest, delivery) gets its turns well
        # within the endpoint's 0.2 s timeout.
        async with asyncio.timeout(0.15):
            for _ in range(3):
                await asyncio.sleep(0)
        # Two workers hold two events; each ends within give_up_after + one timeout.
        async with asyncio.timeout(2.0):
            await failures.wait_for(2)
        assert failures.reasons == ["gave_up", "gave_up"]
    # The 18 events still queued (or in flight) when it closed are counted too.
    assert failures.reasons.count("gave_up") + failures.reasons.count("closed") == 20
    assert notifier.sent == 0
    assert notifier.failed == 20
    # Bounded retries: each event gets at most give_up_after / timeout + 1 attempts.
    given_up = failures.reasons.count("gave_up")
    assert len(ep.requests) <= given_up * 4 + 2


async def test_a_refused_connection_gives_up_in_bounded_time() -> None:
    failures = Failures()
    notifier = Notifier(
        refused_url(),
        SECRET,
        on_failure=failures,
        timeout=0.5,
        give_up_after=0.3,
        backoff_initial=0.02,
        trust_env=False,
    )
    async with running(notifier):
        begin = time.monotonic()
        notifier.submit(event(1))
        notifier.submit(event(2))
        async with asyncio.timeout(3.0):
            await failures.wait_for(2)
        elapsed = time.monotonic() - begin
    assert failures.reasons == ["gave_up", "gave_up"]
    assert 0.3 <= elapsed < 0.3 + 0.5 + 1.0  # give_up_after + one timeout + slack


async def test_a_full_queue_drops_and_counts_and_close_accounts_for_the_rest() -> None:
    failures = Failures()
    notifier = Notifier(refused_url(), SECRET, queue_size=2, on_failure=failures)
    for n in range(5):  # nothing runs: the queue only fills
        notifier.submit(event(n))
    assert failures.reasons == ["queue_full"] * 3
    assert notifier.pending == 2
    await notifier.aclose()
    assert failures.reasons == ["queue_full"] * 3 + ["closed"] * 2
    notifier.submit(event(9))
    assert failures.reasons[-1] == "closed"
    assert notifier.failed == 6
    await notifier.aclose()  # idempotent
    await notifier.run()  # closed: returns at once


async def test_close_can_drain_what_is_queued(endpoint: MakeEndpoint) -> None:
    ep = await endpoint()
    failures = Failures()
    notifier = Notifier(ep.url, SECRET, on_failure=failures, concurrency=1, trust_env=False)
    async with running(notifier, drain=WAIT):
        for n in range(10):
            notifier.submit(event(n))
    assert len(ep.requests) == 10
    assert notifier.sent == 10
    assert failures.reasons == []


async def test_cancelling_run_reports_in_flight_events(endpoint: MakeEndpoint) -> None:
    ep = await endpoint(hang=True)
    failures = Failures()
    notifier = Notifier(ep.url, SECRET, on_failure=failures, concurrency=1, trust_env=False)
    task = asyncio.create_task(notifier.run())
    notifier.submit(event(1))
    notifier.submit(event(2))
    await ep.wait_for(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert failures.reasons == ["closed"]  # the one in flight
    await notifier.aclose()
    assert failures.reasons == ["closed", "closed"]  # and the one still queued


async def test_a_raising_failure_callback_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    def explode(reason: str) -> None:
        raise RuntimeError(f"metrics broke on {reason}")

    notifier = Notifier(refused_url(), SECRET, queue_size=1, on_failure=explode)
    notifier.submit(event(1))
    notifier.submit(event(2))  # full: on_failure raises, submit does not
    await notifier.aclose()
    assert "on_failure callback raised" in caplog.text
    assert notifier.failed == 2


async def test_bad_events_and_settings_are_rejected() -> None:
    notifier = Notifier("https://push.example/hook", SECRET)
    with pytest.raises(TypeError):
        notifier.submit({"event": "stored", "peer": PEER})
    with pytest.raises(ValueError, match="JSON"):
        notifier.submit({"event": "stored", "at": float("nan")})
    await notifier.aclose()
    with pytest.raises(ConfigError, match="http"):
        Notifier("ftp://push.example/hook", SECRET)
    with pytest.raises(ConfigError, match="URL"):
        Notifier("http://", SECRET)
    with pytest.raises(ConfigError, match="secret"):
        Notifier("https://push.example/hook", b"")


def test_event_builders_follow_the_documented_schema() -> None:
    stored = event()
    assert set(stored) == {"event", "node", "peer", "message_id", "size", "at", "expires_at"}
    delivered = delivered_event(node=NODE, peer=PEER, message_id="m", size=1, at=2.0)
    assert set(delivered) == {"event", "node", "peer", "message_id", "size", "at"}
    assert json.loads(encode_event(stored)) == stored


def test_docs_describe_the_payload_and_a_working_verifier() -> None:
    """docs/notifications.md: the payload table matches the builders, its verifier works."""
    doc = (Path(__file__).parents[1] / "docs" / "notifications.md").read_text()
    webhook = doc.split("## The webhook", 1)[1]
    table = set(re.findall(r"^\| `(\w+)` \| (?:string|integer|number) \|", webhook, re.M))
    assert table == set(event()) | set(
        delivered_event(node=NODE, peer=PEER, message_id="m", size=1, at=2.0)
    )

    (snippet,) = [
        block
        for block in re.findall(r"```python\n(.*?)```", doc, re.S)
        if "def verify_signature" in block
    ]
    namespace: dict[str, object] = {}
    exec(snippet, namespace)
    documented = namespace["verify_signature"]
    assert callable(documented)
    body = encode_event(event())
    header = sign(SECRET, body)
    assert documented(SECRET, body, header)
    assert documented(SECRET, body, header.upper())
    assert not documented(SECRET, body + b" ", header)
    assert not documented(b"other", body, header)
    assert not documented(SECRET, body, None)
    assert not documented(SECRET, body, "sha256=\u00e9")
