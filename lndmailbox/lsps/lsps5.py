"""LSPS5 (bLIP-55): the webhook methods' parameters, results and errors, and the bytes of
a notification (its body, its timestamp, the text the node key signs).

The methods (the daemon's ``lsps_service`` runs them against the store):

- ``lsps5.set_webhook {app_name, webhook}`` -> ``{num_webhooks, max_webhooks, no_change}``;
- ``lsps5.list_webhooks {}`` -> ``{app_names, max_webhooks}``;
- ``lsps5.remove_webhook {app_name}`` -> ``{}``.

Unknown parameters are ignored, as JSON-RPC servers commonly do and LSPS0 asks.

Timestamps. bLIP-55 writes them ``YYYY-MM-DDThh:mm:ss.uuuZ``. lightning-liquidity 0.2's
``LSPS5Validator`` (the one LSPS5 client in use) does not check the header's text: it
parses it and signs-checks the text chrono's ``to_rfc3339()`` renders from it, which ends
``+00:00`` and drops a zero fraction. A ``...Z`` header can never verify there. So the
mailbox sends ``YYYY-MM-DDThh:mm:ss.uuu+00:00`` (UTC, milliseconds, never ``.000``: such
an instant is sent 1 ms later), which that validator renders back unchanged, and signs the
header's text verbatim, as the spec says: a verifier that follows the spec to the letter
and lightning-liquidity's both accept it. It is the shape lightning-liquidity's own service
sends, at millisecond precision.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from lndmailbox.errors import LspsError
from lndmailbox.lsps.jsonrpc import INVALID_PARAMS
from lndmailbox.lsps.webhook_url import TOO_LONG, check_webhook

__all__ = [
    "APP_NAME_NOT_FOUND",
    "LIST_WEBHOOKS",
    "MAX_APP_NAME_BYTES",
    "NO_PRIOR_ACTIVITY",
    "ONION_MESSAGE_INCOMING",
    "REMOVE_WEBHOOK",
    "SET_WEBHOOK",
    "SIGNED_TEXT_PREFIX",
    "TOO_MANY_WEBHOOKS",
    "WEBHOOK_REGISTERED",
    "NotificationMethod",
    "SetWebhook",
    "app_name_not_found",
    "list_webhooks_result",
    "no_prior_activity",
    "notification_body",
    "notification_timestamp",
    "read_remove_webhook",
    "read_set_webhook",
    "set_webhook_result",
    "signed_text",
    "too_many_webhooks",
]

SET_WEBHOOK: Final = "lsps5.set_webhook"
LIST_WEBHOOKS: Final = "lsps5.list_webhooks"
REMOVE_WEBHOOK: Final = "lsps5.remove_webhook"

WEBHOOK_REGISTERED: Final = "lsps5.webhook_registered"
ONION_MESSAGE_INCOMING: Final = "lsps5.onion_message_incoming"
NotificationMethod = Literal["lsps5.webhook_registered", "lsps5.onion_message_incoming"]

#: bLIP-55: an app_name is at most 64 bytes of UTF-8.
MAX_APP_NAME_BYTES: Final = 64

TOO_MANY_WEBHOOKS: Final = 503
APP_NAME_NOT_FOUND: Final = 1010
#: lightning-liquidity's code for a client with no channel and no other business with the
#: node: it may not register (a stranger's registrations would cost the LSP for nothing).
NO_PRIOR_ACTIVITY: Final = 1003

SIGNED_TEXT_PREFIX: Final = "LSPS5: DO NOT SIGN THIS MESSAGE MANUALLY: LSP: At "


@dataclass(frozen=True, slots=True)
class SetWebhook:
    app_name: str
    webhook: str


def _app_name(params: Mapping[str, object], request_id: str) -> str:
    name = params.get("app_name")
    if not isinstance(name, str):
        raise LspsError(
            INVALID_PARAMS, "invalid params: app_name must be a string", request_id=request_id
        )
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as e:  # a lone surrogate from a \ud800 escape
        raise LspsError(
            INVALID_PARAMS, "invalid params: app_name is not valid UTF-8", request_id=request_id
        ) from e
    if size > MAX_APP_NAME_BYTES:
        raise LspsError(
            TOO_LONG,
            f"too_long: app_name is over {MAX_APP_NAME_BYTES} bytes",
            request_id=request_id,
        )
    return name


def read_set_webhook(params: Mapping[str, object], request_id: str) -> SetWebhook:
    """``set_webhook``'s parameters, checked; LspsError (-32602, 500, 501, 502) if not."""
    app_name = _app_name(params, request_id)
    if "webhook" not in params:
        raise LspsError(INVALID_PARAMS, "invalid params: webhook is missing", request_id=request_id)
    try:
        webhook = check_webhook(params["webhook"])
    except LspsError as e:
        raise LspsError(e.code, str(e), request_id=request_id) from None
    return SetWebhook(app_name, webhook)


def read_remove_webhook(params: Mapping[str, object], request_id: str) -> str:
    """``remove_webhook``'s app_name; LspsError (-32602, 500) if it cannot be one."""
    return _app_name(params, request_id)


def set_webhook_result(num_webhooks: int, max_webhooks: int, no_change: bool) -> dict[str, object]:
    return {"num_webhooks": num_webhooks, "max_webhooks": max_webhooks, "no_change": no_change}


def list_webhooks_result(app_names: Sequence[str], max_webhooks: int) -> dict[str, object]:
    return {"app_names": list(app_names), "max_webhooks": max_webhooks}


def too_many_webhooks(request_id: str, max_webhooks: int) -> LspsError:
    return LspsError(
        TOO_MANY_WEBHOOKS,
        f"too_many_webhooks: at most {max_webhooks}",
        request_id=request_id,
        data={"max_webhooks": max_webhooks},
    )


def app_name_not_found(request_id: str) -> LspsError:
    return LspsError(APP_NAME_NOT_FOUND, "app_name_not_found", request_id=request_id)


def no_prior_activity(request_id: str) -> LspsError:
    return LspsError(
        NO_PRIOR_ACTIVITY,
        "no prior activity: open a channel with this node first",
        request_id=request_id,
    )


def notification_body(method: NotificationMethod) -> bytes:
    """The POST body: compact JSON, keys in lightning-liquidity's order (its validator signs
    its own serialization of the parsed body, so the order is part of the signature)."""
    text = json.dumps({"jsonrpc": "2.0", "method": method, "params": {}}, separators=(",", ":"))
    return text.encode("ascii")


def notification_timestamp(unix_seconds: float) -> str:
    """The ``x-lsps5-timestamp`` header's text for an instant (see the module docstring)."""
    millis = round(unix_seconds * 1000)
    if millis % 1000 == 0:
        millis += 1
    at = datetime.datetime.fromtimestamp(millis // 1000, datetime.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}+00:00"


def signed_text(timestamp: str, body: bytes) -> bytes:
    """What the node key signs for a notification: bLIP-55's sentence, with the header's
    timestamp and the body verbatim."""
    return SIGNED_TEXT_PREFIX.encode("ascii") + timestamp.encode("ascii") + b" I notify " + body
