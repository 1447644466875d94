"""What a webhook URL may be (bLIP-55), and the one way it is shown anywhere.

A webhook URL usually carries the phone's push token, so it is a secret: logs, events,
metrics and mailboxctl show :func:`webhook_label` (its host and the first 8 hex digits of
its SHA-256), never the URL itself.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Final
from urllib.parse import urlsplit

from lndmailbox.errors import LspsError

__all__ = [
    "MAX_WEBHOOK_CHARS",
    "TOO_LONG",
    "UNSUPPORTED_PROTOCOL",
    "URL_PARSE_ERROR",
    "check_webhook",
    "webhook_digest",
    "webhook_host",
    "webhook_label",
]

#: bLIP-55's error codes for a webhook (and an app_name) it refuses.
TOO_LONG: Final = 500
URL_PARSE_ERROR: Final = 501
UNSUPPORTED_PROTOCOL: Final = 502

#: bLIP-55: a webhook is at most 1024 ASCII characters.
MAX_WEBHOOK_CHARS: Final = 1024
_DIGEST_HEX: Final = 8
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")


def _host_is_valid(host: str) -> bool:
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return host.endswith("]")
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def check_webhook(url: object) -> str:
    """``url`` if a client may register it (bLIP-55), else LspsError with its code:

    500 ``too_long`` past 1024 characters, 501 ``url_parse_error`` for anything that is
    not one printable-ASCII absolute URL with a valid host and port, 502
    ``unsupported_protocol`` for any scheme but https. Where it may point (a loopback or
    private address) is checked when connecting, not here: a name can change its address.
    """
    if not isinstance(url, str):
        raise LspsError(URL_PARSE_ERROR, "url_parse_error: the webhook must be a string")
    if len(url) > MAX_WEBHOOK_CHARS:
        raise LspsError(TOO_LONG, f"too_long: the webhook is over {MAX_WEBHOOK_CHARS} characters")
    if not _PRINTABLE_ASCII.fullmatch(url):
        raise LspsError(URL_PARSE_ERROR, "url_parse_error: the webhook must be printable ASCII")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        # urlsplit's text quotes the URL's port or bracketed host, which may be a token.
        raise LspsError(
            URL_PARSE_ERROR, "url_parse_error: the webhook's host or port is not valid"
        ) from e
    if not parts.scheme or not parts.netloc:
        raise LspsError(URL_PARSE_ERROR, "url_parse_error: the webhook is not an absolute URL")
    if parts.scheme.lower() != "https":
        raise LspsError(UNSUPPORTED_PROTOCOL, "unsupported_protocol: the webhook must be https")
    host = parts.netloc.rpartition("@")[2]
    if port is not None or host.endswith(":"):
        host = host.rpartition(":")[0]
    if not host or not _host_is_valid(host) or port == 0:
        raise LspsError(URL_PARSE_ERROR, "url_parse_error: the webhook's host is not valid")
    return url


def webhook_digest(url: str) -> str:
    """A short, stable name for ``url``: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(url.encode("utf-8", errors="surrogatepass")).hexdigest()[:_DIGEST_HEX]


def webhook_host(url: str) -> str:
    """The host ``url`` names, lowercased, or ``?`` when it names none."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        host = None
    return host or "?"


def webhook_label(url: str) -> str:
    """How a webhook is shown: ``host#digest``, e.g. ``push.example.com#1a2b3c4d``."""
    return f"{webhook_host(url)}#{webhook_digest(url)}"
