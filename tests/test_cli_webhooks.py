"""``mailboxctl webhooks list|remove`` through ``main(argv)`` against the real Redis fixture.

Registrations are written through ``Store.webhooks.set``, as the daemon's LSPS5 service
writes them. Every URL carries a push token in its query: no output, text or JSON, stdout
or stderr, may hold it (nor the URL).
"""

from __future__ import annotations

import pytest

from lndmailbox.cli.render import format_time
from lndmailbox.lsps.webhook_url import webhook_digest, webhook_label
from lndmailbox.store import Store, Webhook
from tests.test_cli import ALICE, BOB, CAROL, NODE, Ctl, Run
from tests.test_cli import _clean_environment as _clean_environment  # autouse fixture
from tests.test_cli import closed_lnd as closed_lnd
from tests.test_cli import config_file as config_file
from tests.test_cli import ctl as ctl
from tests.test_cli import store as store

T0 = 1_790_000_000_000  # 2026-09-21 ... UTC, in ms
TOKEN = "fcm-token-9c1e77d0b3a54f28"
ODD_NAMES = {
    "colour\x1b[31m": "colour\\x1b[31m",
    "\u202eevil.exe": "\\u202eevil.exe",
    "two\nlines": "two\\x0alines",
    " padded ": "\\x20padded\\x20",
    "back\\slash": "back\\\\slash",
    "日本語のアプリ": "日本語のアプリ",
}


def hook(n: int) -> str:
    return f"https://push{n}.example.com/v1/send?device=7&token={TOKEN}"


def assert_secret_kept(*runs: Run) -> None:
    for r in runs:
        for text in (r.out, r.err):
            assert TOKEN not in text
            assert "https://" not in text


async def register(store: Store, peer: bytes, app: str, n: int, at_ms: int) -> None:
    result = await store.webhooks.set(peer, app, hook(n), max_webhooks=10, now_ms=at_ms)
    assert not result.too_many


async def test_list_every_client_with_its_count_and_last_seen(ctl: Ctl, store: Store) -> None:
    await register(store, ALICE, "phone", 1, T0)
    await register(store, ALICE, "tablet", 2, T0 + 60_000)
    await register(store, BOB, "wallet", 3, T0 + 3_600_000)

    r = await ctl("webhooks", "list")

    assert r.code == 0, r.err
    expected = sorted([(ALICE, 2, T0 + 60_000), (BOB, 1, T0 + 3_600_000)], key=lambda row: row[0])
    width = len(ALICE.hex())
    assert r.out.splitlines() == [
        "PEER".ljust(width) + "  WEBHOOKS  LAST SEEN",
        *(f"{peer.hex()}  {n:>8}  {format_time(seen / 1000)}" for peer, n, seen in expected),
    ]
    assert_secret_kept(r)


async def test_list_one_client_shows_labels_and_odd_names_escaped(ctl: Ctl, store: Store) -> None:
    for i, name in enumerate(ODD_NAMES):
        await register(store, CAROL, name, i, T0 + i)
    await register(store, ALICE, "not carol's", 99, T0)

    r = await ctl("webhooks", "list", CAROL.hex())

    assert r.code == 0, r.err
    lines = r.out.splitlines()
    last = T0 + len(ODD_NAMES) - 1
    assert lines[0] == (
        f"{len(ODD_NAMES)} webhooks of {CAROL.hex()}, last seen {format_time(last / 1000)}"
    )
    assert lines[1].split() == ["APP", "WEBHOOK", "REGISTERED"]
    by_name = sorted((name, i) for i, name in enumerate(ODD_NAMES))
    assert len(lines) == 2 + len(by_name), "a name with a line break took one line"
    for line, (name, i) in zip(lines[2:], by_name, strict=True):
        shown, label, registered = ODD_NAMES[name], webhook_label(hook(i)), T0 + i
        assert line.startswith(shown + " ")
        assert line.split()[-3:] == [label, *format_time(registered / 1000).split()]
    # the labels start in one column, wide characters counted twice
    starts = set()
    for line in lines[2:]:
        before = line[: line.index("push")]
        starts.add(sum(2 if "\u3000" <= c <= "\u9fff" else 1 for c in before))
    assert len(starts) == 1
    assert "\x1b" not in r.out
    assert "\u202e" not in r.out
    assert "not carol's" not in r.out
    assert_secret_kept(r)


async def test_list_json_forms_give_host_and_digest_never_the_url(ctl: Ctl, store: Store) -> None:
    await register(store, ALICE, "colour\x1b[31m", 1, T0)
    await register(store, ALICE, "phone", 2, T0 + 5)
    await register(store, BOB, "wallet", 3, T0 + 7)

    every = await ctl("webhooks", "list", "--json")
    one = await ctl("--json", "webhooks", "list", ALICE.hex())

    assert every.json() == {
        "node": NODE.hex(),
        "clients": sorted(
            [
                {"peer": ALICE.hex(), "webhooks": 2, "last_seen": (T0 + 5) / 1000},
                {"peer": BOB.hex(), "webhooks": 1, "last_seen": (T0 + 7) / 1000},
            ],
            key=lambda c: str(c["peer"]),
        ),
    }
    assert one.json() == {
        "peer": ALICE.hex(),
        "last_seen": (T0 + 5) / 1000,
        "webhooks": [
            {
                "app_name": "colour\x1b[31m",
                "host": "push1.example.com",
                "digest": webhook_digest(hook(1)),
                "label": f"push1.example.com#{webhook_digest(hook(1))}",
                "registered_at": T0 / 1000,
            },
            {
                "app_name": "phone",
                "host": "push2.example.com",
                "digest": webhook_digest(hook(2)),
                "label": webhook_label(hook(2)),
                "registered_at": (T0 + 5) / 1000,
            },
        ],
    }
    assert "\x1b" not in one.out, "JSON escapes control characters"
    assert_secret_kept(every, one)


async def test_remove_one_webhook_leaves_the_rest_and_the_last_seen(ctl: Ctl, store: Store) -> None:
    await register(store, ALICE, "phone", 1, T0)
    await register(store, ALICE, "tablet", 2, T0 + 10)
    await register(store, BOB, "phone", 3, T0)

    r = await ctl("webhooks", "remove", ALICE.hex(), "phone")

    assert (r.code, r.out) == (0, f"removed the webhook of app phone of {ALICE.hex()}\n")
    assert await store.webhooks.list(ALICE) == (Webhook("tablet", hook(2), T0 + 10),)
    assert await store.webhooks.last_seen(ALICE) == T0 + 10, "the operator is not the client"
    assert len(await store.webhooks.list(BOB)) == 1

    r2 = await ctl("webhooks", "remove", ALICE.hex(), "tablet", "--json")
    assert r2.json() == {"peer": ALICE.hex(), "app_name": "tablet", "removed": True}
    assert [c.peer for c in await store.webhooks.summaries()] == [BOB]
    assert await store.webhooks.last_seen(ALICE) is None
    assert_secret_kept(r, r2)


@pytest.mark.parametrize("name", list(ODD_NAMES))
async def test_remove_an_odd_name_as_given_or_as_listed(ctl: Ctl, store: Store, name: str) -> None:
    for typed in (name, ODD_NAMES[name]):
        await register(store, ALICE, name, 1, T0)
        r = await ctl("webhooks", "remove", ALICE.hex(), typed)
        assert r.code == 0, r.err
        assert r.out == f"removed the webhook of app {ODD_NAMES[name]} of {ALICE.hex()}\n"
        assert await store.webhooks.list(ALICE) == ()


async def test_remove_an_unknown_app_says_so_and_exits_1(ctl: Ctl, store: Store) -> None:
    await register(store, ALICE, "phone", 1, T0)
    await register(store, ALICE, "colour\x1b[31m", 2, T0)

    r = await ctl("webhooks", "remove", ALICE.hex(), "pager\x07")
    none = await ctl("webhooks", "remove", BOB.hex(), "phone", "--json")

    assert (r.code, r.out) == (1, "")
    assert r.err == (
        f"mailboxctl: {ALICE.hex()} has no webhook of app pager\\x07 "
        "(it has colour\\x1b[31m, phone)\n"
    )
    assert (none.code, none.out) == (1, "")
    assert none.err == f"mailboxctl: {BOB.hex()} has no webhook of app phone (it has none)\n"
    assert len(await store.webhooks.list(ALICE)) == 2
    assert await store.webhooks.last_seen(ALICE) == T0
    assert_secret_kept(r, none)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["webhooks", "list", "03abcd"], "argument PEER: '03abcd' is not a node pubkey"),
        (["webhooks", "remove", "04" + "11" * 32, "phone"], "a compressed key starts with 02"),
        (["webhooks", "remove", ALICE.hex()], "the following arguments are required: APP"),
        (["webhooks", "remove", ALICE.hex(), "é" * 33], "at most 64 bytes of UTF-8, got 66"),
        (["webhooks", "remove", ALICE.hex(), "\udcff"], "an app name must be UTF-8"),
        (["webhooks"], "the following arguments are required: ACTION"),
    ],
)
async def test_bad_arguments_exit_2(ctl: Ctl, argv: list[str], message: str) -> None:
    r = await ctl(*argv)
    assert (r.code, r.out) == (2, "")
    assert message in r.err
    assert r.err.startswith("usage: mailboxctl webhooks")


async def test_an_empty_mailbox_has_no_clients(ctl: Ctl) -> None:
    every = await ctl("webhooks", "list")
    every_json = await ctl("webhooks", "list", "--json")
    one = await ctl("webhooks", "list", ALICE.hex())
    one_json = await ctl("webhooks", "list", ALICE.hex(), "--json")

    assert (every.code, every.out) == (0, "no client has webhooks\n")
    assert every_json.json() == {"node": NODE.hex(), "clients": []}
    assert (one.code, one.out) == (0, f"{ALICE.hex()} has no webhooks\n")
    assert one_json.json() == {"peer": ALICE.hex(), "last_seen": None, "webhooks": []}
