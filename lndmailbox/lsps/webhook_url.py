"""What a webhook URL may be (bLIP-55), and the one way it is shown anywhere.

A webhook URL usually carries the phone's push token, so it is a secret: logs, events,
metrics and mailboxctl show :func:`webhook_label` (its host and the first 8 hex digits of
its SHA-256), never the URL itself.
"""

from __future__ import annotations

import hashlib
from typing import Final
from urllib.parse import urlsplit

__all__ = ["MAX_WEBHOOK_CHARS", "webhook_digest", "webhook_host", "webhook_label"]

#: bLIP-55: a webhook is at most 1024 ASCII characters.
MAX_WEBHOOK_CHARS: Final = 1024
_DIGEST_HEX: Final = 8


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
