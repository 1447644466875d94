"""LSPS5's HTTPS client (daemon/webhook_http.py) against a real local HTTPS endpoint: which
addresses it refuses, that the URL stays out of its errors, TLS checked by name."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from lndmailbox.daemon.webhook_http import WebhookPoster, is_public_address
from lndmailbox.errors import WebhookError
from tests.http_endpoint import Endpoint, MakeEndpoint
from tests.local_ca import LocalCa

SECRET = "push-token-5e1f"
BODY = b'{"jsonrpc":"2.0","method":"lsps5.webhook_registered","params":{}}'


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("10.0.0.1", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("127.0.0.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # shared address space (carrier-grade NAT)
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.1.2.3", False),
        ("2002:c0a8:0101::1", False),  # 6to4 of 192.168.1.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("4000::1", False),  # outside 2000::/3, unassigned
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("::ffff:8.8.8.8", True),
        ("2001:4860:4860::8888", True),
    ],
)
def test_only_globally_routable_unicast_addresses_are_public(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.fixture
def ca(tmp_path: Path) -> LocalCa:
    return LocalCa.create(tmp_path / "ca")


def secret_url(ep: Endpoint, host: str = "localhost") -> str:
    return f"https://{host}:{ep.port}/hook/{SECRET}?token={SECRET}"


async def posted(poster: WebhookPoster, url: str) -> WebhookError:
    try:
        with pytest.raises(WebhookError) as raised:
            await poster.post(url, BODY, {"content-type": "application/json"})
    finally:
        await poster.aclose()
    assert SECRET not in str(raised.value)
    assert "/hook" not in str(raised.value)
    return raised.value


async def test_a_200_returns_with_the_body_and_headers_as_given(
    ca: LocalCa, endpoint: MakeEndpoint
) -> None:
    ep = await endpoint(tls=ca)
    poster = WebhookPoster(ca_file=ca.cert_path, allow_private=True)
    try:
        await poster.post(secret_url(ep), BODY, {"x-lsps5-timestamp": "t", "content-type": "a/b"})
    finally:
        await poster.aclose()
    (request,) = ep.requests
    assert request.body == BODY
    assert request.path == f"/hook/{SECRET}?token={SECRET}"
    assert request.headers["x-lsps5-timestamp"] == "t"
    assert request.headers["content-type"] == "a/b"
    assert request.headers["host"] == f"localhost:{ep.port}"
    assert request.headers["user-agent"].startswith("lndmailbox/")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
async def test_loopback_is_refused_before_any_connection(
    ca: LocalCa, endpoint: MakeEndpoint, host: str
) -> None:
    ep = await endpoint(tls=ca)
    error = await posted(WebhookPoster(ca_file=ca.cert_path), secret_url(ep, host))
    assert (error.reason, error.retryable) == ("private_address", False)
    assert ep.requests == []
    assert ep.writers == []  # no connection was even opened


@pytest.mark.parametrize(
    ("status", "retryable"), [(201, False), (404, False), (408, True), (429, True), (500, True)]
)
async def test_statuses_other_than_200_fail(
    ca: LocalCa, endpoint: MakeEndpoint, status: int, retryable: bool
) -> None:
    ep = await endpoint(tls=ca, statuses=[status])
    error = await posted(WebhookPoster(ca_file=ca.cert_path, allow_private=True), secret_url(ep))
    assert (error.reason, error.retryable) == ("status", retryable)
    assert str(status) in str(error)


async def test_an_unknown_ca_fails_as_tls_and_a_name_that_does_not_resolve_as_connect(
    ca: LocalCa, endpoint: MakeEndpoint, tmp_path: Path
) -> None:
    ep = await endpoint(tls=ca)
    other_ca = LocalCa.create(tmp_path / "other")
    poster = WebhookPoster(ca_file=other_ca.cert_path, allow_private=True)
    error = await posted(poster, secret_url(ep))
    assert (error.reason, error.retryable) == ("tls", True)
    assert "certificate" in str(error)
    poster = WebhookPoster(ca_file=ca.cert_path, allow_private=True)
    error = await posted(poster, f"https://nowhere.invalid:{ep.port}/hook/{SECRET}")
    assert (error.reason, error.retryable) == ("connect", True)


async def test_http_is_refused(endpoint: MakeEndpoint) -> None:
    ep = await endpoint()
    error = await posted(WebhookPoster(allow_private=True), f"http://127.0.0.1:{ep.port}/{SECRET}")
    assert (error.reason, error.retryable) == ("connect", False)
    assert ep.requests == []
