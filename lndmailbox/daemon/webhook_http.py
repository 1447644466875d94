"""LSPS5's HTTPS client: one POST to a webhook a client chose, which the LSP cannot trust.

A webhook's URL comes from a peer, so the client it is POSTed with must not become a way
into the LSP's own network (its metadata service, its Redis, its lnd):

- The host is resolved here, at every new connection, and an address that is not
  globally routable (:func:`is_public_address`) is refused unless ``allow_private``; the
  connection then goes to the address that was checked, so a name that resolves
  elsewhere a moment later (DNS rebinding) cannot slip past the check. TLS still sends
  the URL's host name (SNI) and checks the certificate against it.
- Redirects are never followed, no proxy from the environment is used, and only ``https``
  is spoken.
- The whole attempt, from the lookup to the answer's status, is bounded by ``timeout``.

The URL usually holds the phone's push token: a :class:`~lndmailbox.errors.WebhookError`
names the webhook by :func:`~lndmailbox.lsps.webhook_url.webhook_label` only, and never
carries another library's message (those can quote the URL).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import httpcore

from lndmailbox import __version__
from lndmailbox.errors import WebhookError
from lndmailbox.lsps.webhook_url import webhook_label

__all__ = ["WebhookPoster", "is_public_address"]

_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_GLOBAL_UNICAST_V6: Final = ipaddress.ip_network("2000::/3")
_RETRIED_STATUSES: Final = frozenset({408, 429})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public_address(ip: IPAddress) -> bool:
    """Whether ``ip`` is a globally routable unicast address. An IPv6 address that embeds
    an IPv4 one (mapped, 6to4, NAT64) is judged by the IPv4 address it reaches."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
        if ip not in _GLOBAL_UNICAST_V6:
            return False  # the rest of the IPv6 space is unassigned or special
    return ip.is_global and not ip.is_multicast


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses :func:`is_public_address` allows (all, when
    ``allow_private``), resolving the host itself."""

    def __init__(self, *, allow_private: bool) -> None:
        self._allow_private = allow_private
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as e:
            raise WebhookError(
                f"{host} does not resolve ({type(e).__name__})", reason="connect"
            ) from e
        addresses = list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in found))
        allowed = [
            a
            for a in addresses
            if self._allow_private or is_public_address(ipaddress.ip_address(a))
        ]
        if not allowed:
            raise WebhookError(
                f"{host} resolves to no public address ({', '.join(addresses)})",
                reason="private_address",
                retryable=False,
            )
        failure: Exception | None = None
        for address in allowed:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                failure = e
        assert failure is not None
        raise failure

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class WebhookPoster:
    """POSTs notifications to clients' webhooks; see the module docstring."""

    def __init__(
        self, *, timeout: float = 5.0, ca_file: Path | None = None, allow_private: bool = False
    ) -> None:
        self._timeout = timeout
        phases = ("connect", "read", "write", "pool")
        self._extensions = {"timeout": dict.fromkeys(phases, timeout)}
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            network_backend=_CheckedBackend(allow_private=allow_private),
            max_connections=64,
            keepalive_expiry=30.0,
        )

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> None:
        """POSTs ``body`` once; returns on a ``200``, raises WebhookError otherwise."""
        label = webhook_label(url)
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise WebhookError(f"{label} is not an https URL", reason="connect", retryable=False)
        sent = [
            ("Host", parts.netloc.rsplit("@", 1)[-1]),
            ("User-Agent", f"lndmailbox/{__version__}"),
            ("Content-Length", str(len(body))),
            *headers.items(),
        ]
        try:
            # The status is all that matters: the answer's body is never read (a hostile
            # endpoint could send a large one), and its connection is then closed.
            async with (
                asyncio.timeout(self._timeout),
                self._pool.stream(
                    "POST", url, headers=sent, content=body, extensions=self._extensions
                ) as response,
            ):
                status = response.status
        except WebhookError:
            raise
        except (TimeoutError, httpcore.TimeoutException) as e:
            raise WebhookError(
                f"{label} gave no answer within {self._timeout:g} s", reason="timeout"
            ) from e
        except httpcore.ConnectError as e:
            if _caused_by_tls(e):
                raise WebhookError(f"{label}: TLS failed ({_tls_reason(e)})", reason="tls") from e
            raise WebhookError(f"{label}: could not connect", reason="connect") from e
        except (httpcore.NetworkError, httpcore.ProtocolError) as e:
            raise WebhookError(
                f"{label}: the connection failed ({type(e).__name__})", reason="connect"
            ) from e
        if status == 200:
            return
        if 300 <= status < 400:
            raise WebhookError(
                f"{label} answered {status}: redirects are not followed",
                reason="redirect",
                retryable=False,
            )
        retryable = status in _RETRIED_STATUSES or status >= 500
        raise WebhookError(f"{label} answered {status}", reason="status", retryable=retryable)

    async def aclose(self) -> None:
        await self._pool.aclose()


def _ssl_error(e: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _caused_by_tls(e: BaseException) -> bool:
    return _ssl_error(e) is not None


def _tls_reason(e: BaseException) -> str:
    error = _ssl_error(e)
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate: {error.verify_message}"
    return error.reason or type(error).__name__ if error is not None else "?"
