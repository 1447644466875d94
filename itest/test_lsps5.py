"""LSPS5 end to end: a real LDK phone registers its webhook with the LSP through real lnd,
and the mailbox wakes it over HTTPS when mail is stored for it.

    phone (LDK, lightning-liquidity's LSPS5 client) ── LSPS0 in custom messages 37913 ── LSP (lnd + mailbox --lsps5)
                                                                                           │ POST, signed by the LSP's key
                                                                                           ▼
                                                                      the test's HTTPS endpoint (its own CA)

The wallets are test_ldk_wallets.py's (its ``wallets`` fixture: a phone and a payer, each
with a zero-conf private channel from the LSP), one pair per lnd generation. Each
notification the endpoint receives is checked three ways: lightning-liquidity's
``LSPS5Validator`` (what a wallet's notification proxy runs), the LSP lnd's own
VerifyMessage over bLIP-55's sentence, and what changes when the timestamp header's text
is rewritten in bLIP-55's ``...Z`` form.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from itest import test_ldk_wallets as ldk_wallets
from itest.daemon import MailboxDaemon
from itest.ldknode import LdkError, LdkNode
from itest.lndnode import LndNode
from itest.network import Network
from itest.test_ldk_wallets import (
    StartMailbox,
    Wallets,
    ensure_online,
    go_to_sleep,
    payer_sends,
    phone_path,
    stored_for,
    wake_up,
)
from lndmailbox.store import RedisServer, Store
from tests.http_endpoint import Request, endpoints
from tests.local_ca import LocalCa

pytestmark = pytest.mark.timeout(900)

# The phone and payer of test_ldk_wallets.py, built anew for this module.
wallets = ldk_wallets.wallets

SIGNED_TEXT = "LSPS5: DO NOT SIGN THIS MESSAGE MANUALLY: LSP: At {} I notify {}"
WEBHOOK_PATH = "/wake/phone?token=phone-push-token"
APP_NAME = "itest"
# lightning-liquidity's LSPS5ClientError codes (lsps5/msgs.rs): base 100000.
REPLAY_ATTACK = 100_002
INVALID_SIGNATURE = 100_001
APP_NAME_NOT_FOUND = 1010


def lnd_verify(lsp: LndNode, timestamp: str, body: bytes, signature: str) -> dict[str, Any]:
    """The LSP lnd's VerifyMessage over bLIP-55's sentence with this exact timestamp text."""
    text = SIGNED_TEXT.format(timestamp, body.decode())
    verified: dict[str, Any] = lsp.lncli("verifymessage", "--msg", text, "--sig", signature)
    return verified


def in_z_form(timestamp: str) -> str:
    """The same instant in bLIP-55's own spelling, ``...Z`` instead of ``+00:00``."""
    assert timestamp.endswith("+00:00"), timestamp
    return timestamp.removesuffix("+00:00") + "Z"


async def check_notification(
    network: Network, phone: LdkNode, request: Request, method: str
) -> None:
    """One POST of the mailbox: its method, and who accepts its signature for which text."""
    lsp = network.lsp
    timestamp = request.headers["x-lsps5-timestamp"]
    signature = request.headers["x-lsps5-signature"]
    assert request.method == "POST"
    assert request.path == WEBHOOK_PATH
    assert json.loads(request.body) == {"jsonrpc": "2.0", "method": method, "params": {}}

    # (a) The wallet's validator accepts it, over the header's own text.
    accepted = await asyncio.to_thread(
        phone.lsps5_validate, lsp, timestamp, signature, request.body
    )
    assert accepted["method"] == method
    assert accepted["rendered_timestamp"] == timestamp

    # (b) lnd recovers the LSP's key from the signature over the header's text.
    verified = await asyncio.to_thread(lnd_verify, lsp, timestamp, request.body, signature)
    assert verified == {"valid": True, "pubkey": lsp.pubkey_hex}, verified

    # (c) The signature covers the exact text: in the ...Z form lnd recovers another key...
    z_form = in_z_form(timestamp)
    rewritten = await asyncio.to_thread(lnd_verify, lsp, z_form, request.body, signature)
    assert rewritten["pubkey"] != lsp.pubkey_hex, rewritten
    assert rewritten["valid"] is False, rewritten
    # ...while lightning-liquidity's validator never sees the header's text: it parses the
    # timestamp and renders it again, back to +00:00, so the rewritten header passes a
    # validator that has not seen this signature, and the node's own one calls it a replay.
    again = await asyncio.to_thread(
        phone.lsps5_validate, lsp, z_form, signature, request.body, fresh=True
    )
    assert again == {**again, "method": method, "rendered_timestamp": timestamp}
    with pytest.raises(LdkError) as replayed:
        await asyncio.to_thread(phone.lsps5_validate, lsp, z_form, signature, request.body)
    assert replayed.value.code == REPLAY_ATTACK, replayed.value


async def test_an_ldk_phone_registers_its_webhook_and_is_woken_for_its_mail(
    network: Network,
    wallets: Wallets,
    redis_server: RedisServer,
    mailbox: StartMailbox,
    tmp_path: Path,
) -> None:
    """lightning-liquidity's LSPS5 client registers a webhook through real lnd; the mailbox
    POSTs webhook_registered and, once mail is stored for the sleeping phone,
    onion_message_incoming; the phone lists and removes its webhook."""
    phone, lsp = wallets.phone, network.lsp
    ca = LocalCa.create(tmp_path / "ca")
    async with asynccontextmanager(endpoints)() as make_endpoint:
        endpoint = await make_endpoint(tls=ca, path=WEBHOOK_PATH)
        await asyncio.to_thread(ensure_online, network, phone)
        daemon: MailboxDaemon = await asyncio.to_thread(
            mailbox,
            "--lsps5",
            "--lsps5-allow-private-webhooks",
            "--lsps5-ca-file",
            str(ca.cert_path),
        )
        registered = await asyncio.to_thread(phone.lsps5_set_webhook, lsp, APP_NAME, endpoint.url)
        assert {k: registered[k] for k in ("num_webhooks", "max_webhooks", "no_change")} == {
            "num_webhooks": 1,
            "max_webhooks": 10,
            "no_change": False,
        }
        await endpoint.wait_for(1)
        listed = await asyncio.to_thread(phone.lsps5_list_webhooks, lsp)
        assert (listed["app_names"], listed["max_webhooks"]) == ([APP_NAME], 10)

        path = await asyncio.to_thread(phone_path, network, wallets)
        await asyncio.to_thread(ensure_online, network, wallets.payer)
        await asyncio.to_thread(go_to_sleep, network, phone)
        store = Store.from_url(redis_server.url, lsp.pubkey)
        try:
            await asyncio.to_thread(payer_sends, wallets, path)
            await stored_for(store, phone, daemon)
            await endpoint.wait_for(2)
        finally:
            await store.aclose()

        methods = ["lsps5.webhook_registered", "lsps5.onion_message_incoming"]
        assert len(endpoint.requests) == len(methods), endpoint.requests
        for request, method in zip(endpoint.requests, methods, strict=True):
            await check_notification(network, phone, request, method)

        await asyncio.to_thread(wake_up, network, phone)
        await asyncio.to_thread(phone.lsps5_remove_webhook, lsp, APP_NAME)
        listed = await asyncio.to_thread(phone.lsps5_list_webhooks, lsp)
        assert listed["app_names"] == []
        with pytest.raises(LdkError) as unknown:
            await asyncio.to_thread(phone.lsps5_remove_webhook, lsp, APP_NAME)
        assert unknown.value.code == APP_NAME_NOT_FOUND, unknown.value
        # The URL is the client's secret (it carries its push token): never in the log.
        assert "phone-push-token" not in daemon.process.log_tail(10_000)


async def test_the_validator_accepts_an_old_timestamp_and_refuses_a_foreign_key(
    network: Network, wallets: Wallets
) -> None:
    """What lightning-liquidity 0.2.7's ``LSPS5Validator.validate`` checks: the signature
    and replays, not the timestamp's age. A notification the LSP's key signed an hour ago
    passes; the same text signed by another node's key does not."""
    phone, lsp = wallets.phone, network.lsp
    an_hour_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    # A nonzero fraction: chrono drops a zero one, and the text would no longer match.
    an_hour_ago = an_hour_ago.replace(microsecond=123_000)
    timestamp = an_hour_ago.isoformat(timespec="milliseconds")
    assert timestamp.endswith("+00:00"), timestamp
    body = json.dumps(
        {"jsonrpc": "2.0", "method": "lsps5.onion_message_incoming", "params": {}},
        separators=(",", ":"),
    ).encode()
    text = SIGNED_TEXT.format(timestamp, body.decode())
    by_lsp = (await asyncio.to_thread(lsp.lncli, "signmessage", "--msg", text))["signature"]
    by_sender = (await asyncio.to_thread(network.sender.lncli, "signmessage", "--msg", text))[
        "signature"
    ]

    accepted = await asyncio.to_thread(
        phone.lsps5_validate, lsp, timestamp, by_lsp, body, fresh=True
    )
    assert accepted["method"] == "lsps5.onion_message_incoming"
    with pytest.raises(LdkError) as foreign:
        await asyncio.to_thread(phone.lsps5_validate, lsp, timestamp, by_sender, body, fresh=True)
    assert foreign.value.code == INVALID_SIGNATURE, foreign.value
