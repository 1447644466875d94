"""``mailboxctl webhooks list [PEER] | remove PEER APP``: the clients' LSPS5 webhooks.

A webhook URL usually carries the phone's push token, so it is a secret: nothing here
prints one, in text or JSON. A webhook is shown as its label (host and a short digest of
the URL, :func:`~lndmailbox.lsps.webhook_url.webhook_label`), which is enough to tell two
apart and to match one to the daemon's logs. App names are the client's own choice (any
UTF-8 up to 64 bytes): text output passes them through
:func:`~lndmailbox.cli.render.safe_text`; JSON escapes every non-ASCII character anyway.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from lndmailbox.cli.errors import CtlError
from lndmailbox.cli.output import emit_json, json_time
from lndmailbox.cli.render import (
    format_time,
    plural,
    read_safe_text,
    render_table,
    safe_text,
)
from lndmailbox.cli.session import Session
from lndmailbox.lsps.webhook_url import webhook_digest, webhook_host, webhook_label
from lndmailbox.store import Store, Webhook

__all__ = ["run_webhooks"]

log = logging.getLogger(__name__)

_CLIENT_HEADERS = ["PEER", "WEBHOOKS", "LAST SEEN"]
_WEBHOOK_HEADERS = ["APP", "WEBHOOK", "REGISTERED"]


async def run_webhooks(s: Session, args: argparse.Namespace) -> int:
    store = await s.store()
    if args.webhooks_command == "list":
        if args.peer is None:
            return await _list_clients(store, args.json)
        return await _list_one(store, args.peer, args.json)
    return await _remove(store, args.peer, args.app_name, args.json)


async def _list_clients(store: Store, as_json: bool) -> int:
    clients = await store.webhooks.summaries()
    if as_json:
        emit_json(
            {
                "node": store.node.hex(),
                "clients": [
                    {
                        "peer": c.peer.hex(),
                        "webhooks": c.webhooks,
                        "last_seen": json_time(c.last_seen_ms / 1000),
                    }
                    for c in clients
                ],
            }
        )
    elif clients:
        rows = [
            [c.peer.hex(), str(c.webhooks), format_time(c.last_seen_ms / 1000)] for c in clients
        ]
        print(render_table(_CLIENT_HEADERS, rows, right=(1,)))
    else:
        print("no client has webhooks")
    return 0


async def _list_one(store: Store, peer: bytes, as_json: bool) -> int:
    hooks = await store.webhooks.list(peer)
    seen_ms = await store.webhooks.last_seen(peer)
    seen = None if seen_ms is None else seen_ms / 1000
    if as_json:
        emit_json(
            {
                "peer": peer.hex(),
                "last_seen": json_time(seen),
                "webhooks": [_webhook_json(w) for w in hooks],
            }
        )
    elif hooks:
        head = f"{plural(len(hooks), 'webhook')} of {peer.hex()}, last seen {format_time(seen)}"
        rows = [
            [safe_text(w.app_name), webhook_label(w.url), format_time(w.registered_at_ms / 1000)]
            for w in hooks
        ]
        print(f"{head}\n{render_table(_WEBHOOK_HEADERS, rows)}")
    else:
        print(f"{peer.hex()} has no webhooks")
    return 0


def _webhook_json(w: Webhook) -> dict[str, Any]:
    return {
        "app_name": w.app_name,
        "host": webhook_host(w.url),
        "digest": webhook_digest(w.url),
        "label": webhook_label(w.url),
        "registered_at": json_time(w.registered_at_ms / 1000),
    }


async def _remove(store: Store, peer: bytes, app_name: str, as_json: bool) -> int:
    """Removes the webhook of ``app_name`` as given, or else of the name ``list`` printed as
    ``app_name`` (a name with escapes in it). One script: safe while the daemon runs.

    It does not count as the client being seen (its last seen, which pruning goes by,
    stays)."""
    removed_name = app_name
    removed = await store.webhooks.remove(peer, app_name, now_ms=None)
    unescaped = read_safe_text(app_name)
    if not removed and unescaped is not None and unescaped != app_name:
        removed_name = unescaped
        removed = await store.webhooks.remove(peer, unescaped, now_ms=None)
    if not removed:
        names = [safe_text(w.app_name) for w in await store.webhooks.list(peer)]
        has = f"it has {', '.join(names)}" if names else "it has none"
        raise CtlError(f"{peer.hex()} has no webhook of app {safe_text(app_name)} ({has})")
    log.debug("removed a webhook of %s", peer.hex())
    if as_json:
        emit_json({"peer": peer.hex(), "app_name": removed_name, "removed": True})
    else:
        print(f"removed the webhook of app {safe_text(removed_name)} of {peer.hex()}")
    return 0
