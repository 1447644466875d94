"""The webhook tests' HTTP endpoint (tests/http_endpoint.py) and its throwaway CA
(tests/local_ca.py), through a real client (httpx): HTTPS trusted through the CA's file
only, what a request records, and the answers a test can choose."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.http_endpoint import MakeEndpoint
from tests.local_ca import LocalCa


@pytest.fixture
def ca(tmp_path: Path) -> LocalCa:
    return LocalCa.create(tmp_path / "ca")


def trusting(ca: LocalCa) -> httpx.AsyncClient:
    """A client that trusts the CA through its file, as a daemon given the file would."""
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    return httpx.AsyncClient(verify=context, trust_env=False, timeout=5)


async def test_https_is_trusted_through_the_ca_file(endpoint: MakeEndpoint, ca: LocalCa) -> None:
    ep = await endpoint(tls=ca, path="/push/v1?token=x")
    assert ep.url == f"https://localhost:{ep.port}/push/v1?token=x"
    body = b'{"jsonrpc":"2.0","method":"lsps5.webhook_registered","params":{}}'
    async with trusting(ca) as http:
        answer = await http.post(
            ep.url, content=body, headers={"Content-Type": "application/json", "X-Lsps5-A": "1"}
        )
        by_address = await http.get(f"https://127.0.0.1:{ep.port}/other")
    assert (answer.status_code, answer.content) == (200, b"ok")
    assert by_address.status_code == 200  # the certificate names the address too
    posted, got = ep.requests
    assert (posted.method, posted.path, posted.body) == ("POST", "/push/v1?token=x", body)
    assert posted.headers["content-type"] == posted.headers["Content-Type"] == "application/json"
    assert "x-lsps5-a" in posted.headers
    assert "X-LSPS5-A" in posted.headers
    assert (got.method, got.path, got.body) == ("GET", "/other", b"")


async def test_https_is_refused_by_a_client_that_does_not_trust_the_ca(
    endpoint: MakeEndpoint, ca: LocalCa, tmp_path: Path
) -> None:
    ep = await endpoint(tls=ca)
    stranger = LocalCa.create(tmp_path / "stranger")
    for client in (
        httpx.AsyncClient(trust_env=False, timeout=5),  # the system's CAs
        httpx.AsyncClient(verify=stranger.client_context(), trust_env=False, timeout=5),
    ):
        async with client as http:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.post(ep.url, content=b"{}")
    assert ep.requests == []


async def test_a_certificate_for_another_host_fails_the_hostname_check(
    ca: LocalCa,
) -> None:
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.1", 0, ssl=ca.issue(("mailbox.example",))
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with trusting(ca) as http:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(f"https://localhost:{port}/")
    finally:
        server.close()
        await server.wait_closed()


async def test_a_chunked_body_is_recorded_whole(endpoint: MakeEndpoint) -> None:
    ep = await endpoint()

    async def parts() -> AsyncIterator[bytes]:
        for part in (b'{"a":', b"1", b"}"):
            yield part

    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        answer = await http.post(ep.url, content=parts())
    assert answer.status_code == 200
    (request,) = ep.requests
    assert request.headers["transfer-encoding"] == "chunked"
    assert request.body == b'{"a":1}'


async def test_chosen_statuses_then_200(endpoint: MakeEndpoint) -> None:
    ep = await endpoint(statuses=[500, 404])
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        codes = [(await http.post(ep.url, content=b"x")).status_code for _ in range(3)]
    assert codes == [500, 404, 200]
    assert len(ep.requests) == 3


async def test_a_redirect_names_its_location(endpoint: MakeEndpoint, ca: LocalCa) -> None:
    elsewhere = "https://localhost:1/elsewhere"
    ep = await endpoint(tls=ca, statuses=[307], location=elsewhere)
    async with trusting(ca) as http:
        answer = await http.post(ep.url, content=b"x")
        after = await http.post(ep.url, content=b"x")
    assert (answer.status_code, answer.headers["location"]) == (307, elsewhere)
    assert (after.status_code, "location" in after.headers) == (200, False)


async def test_a_hanging_endpoint_records_and_never_answers(endpoint: MakeEndpoint) -> None:
    ep = await endpoint(hang=True)
    async with httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(5, read=0.2)) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(ep.url, content=b"held")
    await ep.wait_for(1)
    assert ep.requests[0].body == b"held"
