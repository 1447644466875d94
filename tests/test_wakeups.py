"""LSPS5's notifications (daemon/wakeups.py) to a real HTTPS endpoint, with a real Redis
for the webhooks, signed with a real secp256k1 key the way lnd's SignMessage signs, and
each signature recovered here with coincurve alone (tests/lsps_signatures.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import coincurve
import pytest
from simnet.signing import sign_message

from lndmailbox.clock import SystemClock
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.wakeups import WakeupOptions, Wakeups
from lndmailbox.errors import LndError
from lndmailbox.store import Store
from tests.daemon_harness import wait_until
from tests.http_endpoint import Endpoint, MakeEndpoint
from tests.local_ca import LocalCa
from tests.lsps_signatures import INCOMING, REGISTERED, check_notification

NODE_SECRET = bytes.fromhex("11" * 32)
NODE = coincurve.PrivateKey(NODE_SECRET).public_key.format()
ALICE = bytes.fromhex("02" + "a1" * 32)
BOB = bytes.fromhex("02" + "b0" * 32)
TOKEN = "tok-3f9a77c1e2"


@dataclass
class KeySigner:
    """Signs as lnd's SignMessage does, with the node's key; ``fail`` makes it refuse."""

    fail: LndError | None = None
    signed: list[bytes] = field(default_factory=list)

    async def sign_message(self, message: bytes) -> str:
        if self.fail is not None:
            raise self.fail
        self.signed.append(message)
        return sign_message(NODE_SECRET, message)


@dataclass
class Setup:
    wakeups: Wakeups
    signer: KeySigner
    metrics: Metrics
    store: Store
    ca: LocalCa

    async def register(self, peer: bytes, app: str, url: str) -> None:
        await self.store.webhooks.set(peer, app, url, max_webhooks=10, now_ms=1)

    def count(self, method: str, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "lndmailbox_lsps5_notifications_total",
            {"method": f"lsps5.{method}", "outcome": outcome},
        )
        return value or 0.0

    def attempts_failed(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "lndmailbox_lsps5_notification_attempts_failed_total", {"reason": reason}
        )
        return value or 0.0


@pytest.fixture
def ca(tmp_path: Path) -> LocalCa:
    return LocalCa.create(tmp_path / "ca")


async def started(
    redis_url: str, ca: LocalCa, *, signer: KeySigner | None = None, **options: object
) -> AsyncIterator[Setup]:
    store = Store.from_url(redis_url, NODE)
    metrics = Metrics()
    reporter = Reporter(node=NODE, metrics=metrics, events=store.events)
    signer = signer or KeySigner()
    settings: dict[str, object] = {
        "ca_file": ca.cert_path,
        "allow_private": True,
        "timeout": 2.0,
        "give_up_after": 5.0,
    }
    settings.update(options)
    wakeups = Wakeups(
        signer=signer,
        webhooks=store.webhooks,
        reporter=reporter,
        clock=SystemClock(),
        options=WakeupOptions(**settings),  # type: ignore[arg-type]
    )
    stop = asyncio.Event()
    task = asyncio.create_task(wakeups.run(stop))
    try:
        yield Setup(wakeups, signer, metrics, store, ca)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await store.aclose()


@pytest.fixture
async def setup(redis_url: str, ca: LocalCa) -> AsyncIterator[Setup]:
    async for s in started(redis_url, ca):
        yield s


def hook(ep: Endpoint) -> str:
    return ep.url_for(f"/push/v1/{TOKEN}?token={TOKEN}")


async def settled(s: Setup, total: float) -> None:
    """Waits until ``total`` notifications ended (sent, failed or dropped)."""

    def ended() -> bool:
        methods, outcomes = (
            ("webhook_registered", "onion_message_incoming"),
            (
                "sent",
                "failed",
                "dropped",
            ),
        )
        return sum(s.count(m, o) for m in methods for o in outcomes) >= total

    await wait_until(ended, within=15, what=f"{total} notifications to end")


async def test_registered_comes_first_then_mail_to_every_webhook_signed_by_the_node(
    setup: Setup, endpoint: MakeEndpoint
) -> None:
    phone = await endpoint(tls=setup.ca)
    tablet = await endpoint(tls=setup.ca)
    await setup.register(BOB, "phone", hook(phone))
    await setup.register(BOB, "tablet", hook(tablet))
    setup.wakeups.webhook_set(BOB, "phone", hook(phone))
    setup.wakeups.mail_stored(BOB)
    await phone.wait_for(2)
    await tablet.wait_for(1)
    assert [r.body for r in phone.requests] == [REGISTERED, INCOMING]
    assert [r.body for r in tablet.requests] == [INCOMING]
    for request in [*phone.requests, *tablet.requests]:
        assert request.method == "POST"
        assert request.path == f"/push/v1/{TOKEN}?token={TOKEN}"
        assert request.headers["content-type"] == "application/json"
        check_notification(request.headers, request.body, NODE)
    await settled(setup, 3)
    assert setup.count("webhook_registered", "sent") == 1
    assert setup.count("onion_message_incoming", "sent") == 2


async def test_the_cooldown_holds_back_repeats_until_the_peer_connects(
    setup: Setup, endpoint: MakeEndpoint
) -> None:
    ep = await endpoint(tls=setup.ca)
    await setup.register(BOB, "phone", hook(ep))
    setup.wakeups.mail_stored(BOB)
    setup.wakeups.mail_stored(BOB)
    setup.wakeups.mail_stored(BOB)
    await ep.wait_for(1)
    setup.wakeups.connection_changed(BOB)
    setup.wakeups.mail_stored(BOB)
    await settled(setup, 2)
    assert len(ep.requests) == 2
    assert setup.count("onion_message_incoming", "cooldown") == 2
    # Each notification is signed anew, with its own timestamp.
    assert len(setup.signer.signed) == 2


async def test_a_client_without_webhooks_is_looked_up_once_and_not_counted(
    redis_url: str, ca: LocalCa, endpoint: MakeEndpoint
) -> None:
    async for s in started(redis_url, ca, workers=1):
        other = await endpoint(tls=ca)
        s.wakeups.mail_stored(ALICE)
        # One worker takes jobs in order: bob's POST comes after alice's look-up.
        s.wakeups.webhook_set(BOB, "phone", hook(other))
        await other.wait_for(1)
        for _ in range(4):
            s.wakeups.mail_stored(ALICE)
        assert s.count("onion_message_incoming", "cooldown") == 0
        assert len(s.signer.signed) == 1  # bob's
        # Registering ends the cooldown: the next mail notifies at once.
        ep = await endpoint(tls=ca)
        await s.register(ALICE, "phone", hook(ep))
        s.wakeups.webhook_set(ALICE, "phone", hook(ep))
        s.wakeups.mail_stored(ALICE)
        await ep.wait_for(2)
        assert [r.body for r in ep.requests] == [REGISTERED, INCOMING]


@pytest.mark.parametrize("status", [201, 204, 400, 404])
async def test_only_200_counts_and_a_client_error_is_not_retried(
    setup: Setup, endpoint: MakeEndpoint, status: int
) -> None:
    ep = await endpoint(tls=setup.ca, statuses=[status])
    setup.wakeups.webhook_set(BOB, "phone", hook(ep))
    await settled(setup, 1)
    assert setup.count("webhook_registered", "failed") == 1
    assert setup.attempts_failed("status") == 1
    assert len(ep.requests) == 1


async def test_a_server_error_is_retried_until_a_200(setup: Setup, endpoint: MakeEndpoint) -> None:
    ep = await endpoint(tls=setup.ca, statuses=[500, 503])
    setup.wakeups.webhook_set(BOB, "phone", hook(ep))
    await settled(setup, 1)
    assert setup.count("webhook_registered", "sent") == 1
    assert setup.attempts_failed("status") == 2
    assert len(ep.requests) == 3
    # Signed anew for each attempt.
    timestamps = [check_notification(r.headers, r.body, NODE) for r in ep.requests]
    assert len(set(timestamps)) == 3


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_never_followed(
    setup: Setup, endpoint: MakeEndpoint, status: int
) -> None:
    target = await endpoint(tls=setup.ca)
    ep = await endpoint(tls=setup.ca, statuses=[status], location=hook(target))
    setup.wakeups.webhook_set(BOB, "phone", hook(ep))
    await settled(setup, 1)
    assert setup.count("webhook_registered", "failed") == 1
    assert setup.attempts_failed("redirect") == 1
    assert target.requests == []


async def test_a_hanging_webhook_holds_up_nobody_else(
    redis_url: str, ca: LocalCa, endpoint: MakeEndpoint
) -> None:
    async for s in started(redis_url, ca, timeout=1.0, give_up_after=0.0):
        hanging = await endpoint(tls=ca, hang=True)
        fine = await endpoint(tls=ca)
        s.wakeups.webhook_set(ALICE, "phone", hook(hanging))
        await hanging.wait_for(1)
        s.wakeups.webhook_set(BOB, "phone", hook(fine))
        await fine.wait_for(1)
        assert s.count("webhook_registered", "failed") == 0  # alice's still hangs
        await settled(s, 2)
        assert s.attempts_failed("timeout") == 1
        assert s.count("webhook_registered", "failed") == 1


async def test_a_full_queue_drops_and_counts(
    redis_url: str, ca: LocalCa, endpoint: MakeEndpoint
) -> None:
    async for s in started(redis_url, ca, queue_size=2, workers=1):
        ep = await endpoint(tls=ca)
        peers = [bytes.fromhex("03" + f"{n:02x}" * 32) for n in range(3)]
        for peer in peers:  # no await in between: nothing has left the queue yet
            s.wakeups.webhook_set(peer, "phone", hook(ep))
        await settled(s, 3)
        assert s.count("webhook_registered", "dropped") == 1
        assert s.count("webhook_registered", "sent") == 2
        assert len(ep.requests) == 2


async def test_lnd_refusing_to_sign_fails_the_notification_without_a_post(
    redis_url: str, ca: LocalCa, endpoint: MakeEndpoint
) -> None:
    refusal = LndError(
        "permission denied", rpc="SignMessage", code="PERMISSION_DENIED", retryable=False
    )
    async for s in started(redis_url, ca, signer=KeySigner(fail=refusal)):
        ep = await endpoint(tls=ca)
        s.wakeups.webhook_set(BOB, "phone", hook(ep))
        await settled(s, 1)
        assert s.attempts_failed("sign") == 1
        assert s.count("webhook_registered", "failed") == 1
        assert ep.requests == []


async def test_private_addresses_are_refused_unless_allowed(
    redis_url: str, ca: LocalCa, endpoint: MakeEndpoint
) -> None:
    async for s in started(redis_url, ca, allow_private=False):
        ep = await endpoint(tls=ca)
        # localhost resolves to a loopback address: refused when connecting.
        s.wakeups.webhook_set(BOB, "phone", hook(ep))
        await settled(s, 1)
        assert s.attempts_failed("private_address") == 1
        assert ep.requests == []


async def test_an_unknown_ca_fails_as_tls(
    redis_url: str, ca: LocalCa, tmp_path: Path, endpoint: MakeEndpoint
) -> None:
    other = LocalCa.create(tmp_path / "other", name="someone else's CA")
    async for s in started(redis_url, other, give_up_after=0.0):
        ep = await endpoint(tls=ca)
        s.wakeups.webhook_set(BOB, "phone", hook(ep))
        await settled(s, 1)
        assert s.attempts_failed("tls") == 1
        assert ep.requests == []


async def test_the_url_never_reaches_the_log(
    redis_url: str, ca: LocalCa, endpoint: MakeEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async for s in started(redis_url, ca, give_up_after=0.0, allow_private=False):
        ep = await endpoint(tls=ca)
        s.wakeups.webhook_set(ALICE, "phone", hook(ep))  # refused: a private address
        await settled(s, 1)
    async for s in started(redis_url, ca, give_up_after=0.0):
        ok = await endpoint(tls=ca)
        failing = await endpoint(tls=ca, statuses=[404])
        s.wakeups.webhook_set(ALICE, "phone", hook(ok))
        s.wakeups.webhook_set(BOB, "phone", hook(failing))
        await settled(s, 2)
    assert "wakeup_sent" in caplog.text
    assert "wakeup_failed" in caplog.text
    assert TOKEN not in caplog.text
    assert "/push/v1" not in caplog.text
