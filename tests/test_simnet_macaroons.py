"""simnet's macaroons are lnd's: same bytes, same signature chain, same refusals.

The vectors below were baked by lnd's own libraries (gopkg.in/macaroon-bakery.v2 v2.0.1
and gopkg.in/macaroon.v2 v2.0.0, the versions lnd v0.21.2-beta pins) through
``Oven.NewMacaroon(ctx, LatestVersion, nil, ops...)`` with location "lnd" and root key id
"0", which is what ``macaroons.BakeFromRootKey`` does, with the root key below.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from simnet.macaroons import (
    ADMIN_PERMISSIONS,
    Caveat,
    Macaroon,
    MacaroonError,
    MacaroonId,
    MacaroonService,
    Op,
    encode_macaroon_id,
    time_before_caveat,
)

ROOT_KEY = hashlib.sha256(b"lndmailbox simnet test root key").digest()

# Admin permissions (lnd.go adminPermissions), baked by the bakery.
GO_ADMIN = bytes.fromhex(
    "0201036c6e6402f801030a10329bd8f1198d93582a495fb20295f89e1201301a160a0761646472657373"
    "120472656164120577726974651a130a04696e666f120472656164120577726974651a170a08696e766f"
    "69636573120472656164120577726974651a210a086d616361726f6f6e120867656e6572617465120472"
    "656164120577726974651a160a076d657373616765120472656164120577726974651a170a086f666663"
    "6861696e120472656164120577726974651a160a076f6e636861696e120472656164120577726974651a"
    "140a057065657273120472656164120577726974651a180a067369676e6572120867656e657261746512"
    "047265616400000620b0110e67bf579bffe2f01366586536c74dd80177ed171bc08501dabcae2a9183"
)
# peers:read info:read offchain:read
GO_READ = bytes.fromhex(
    "0201036c6e640245030a10339bd8f1198d93582a495fb20295f89e1201301a0c0a04696e666f12047265"
    "61641a100a086f6666636861696e1204726561641a0d0a05706565727312047265616400000620fe59f7"
    "c5d8c6aaa5c36a4ff00ceeb80da676bab059a616327ead1cd854b85599"
)
# uri:/lnrpc.Lightning/GetInfo (lncli bakemacaroon uri:/lnrpc.Lightning/GetInfo)
GO_URI = bytes.fromhex(
    "0201036c6e640237030a10349bd8f1198d93582a495fb20295f89e1201301a1f0a0375726912182f6c6e"
    "7270632e4c696768746e696e672f476574496e666f000006201bf4553ad8e00cf795e3146f682c6f6049"
    "d739791db05a2b90377ac8cab8b7e2"
)

GET_INFO = "/lnrpc.Lightning/GetInfo"


def ops(*perms: str) -> list[Op]:
    return [Op.parse(p) for p in perms]


def check(
    service: MacaroonService, mac: bytes | None, need: list[Op], method: str = GET_INFO
) -> str:
    try:
        service.check([] if mac is None else [mac.hex()], need, method)
    except MacaroonError as e:
        return str(e)
    return "ok"


def test_go_vectors_use_the_admin_permission_list() -> None:
    # A mistyped hex constant above would fail here rather than look like a format bug.
    mac = Macaroon.decode(GO_ADMIN)
    assert set(MacaroonId.decode(mac.identifier).ops) == set(ops(*ADMIN_PERMISSIONS))


@pytest.mark.parametrize("vector", [GO_ADMIN, GO_READ, GO_URI])
def test_go_baked_macaroons_reencode_byte_for_byte(vector: bytes) -> None:
    mac = Macaroon.decode(vector)
    assert mac.location == "lnd"
    assert mac.caveats == ()
    assert mac.encode() == vector
    # Our identifier encoding and signature chain give the bakery's exact bytes.
    mac_id = MacaroonId.decode(mac.identifier)
    assert mac_id.storage_id == b"0"
    assert len(mac_id.nonce) == 16
    assert encode_macaroon_id(mac_id.nonce, b"0", mac_id.ops) == mac.identifier
    assert Macaroon.mint(ROOT_KEY, mac.identifier) == mac


def test_go_baked_macaroons_are_checked_like_lnd() -> None:
    service = MacaroonService(ROOT_KEY)
    assert check(service, GO_ADMIN, ops("offchain:write", "signer:generate")) == "ok"
    assert check(service, GO_READ, ops("info:read")) == "ok"
    assert check(service, GO_READ, ops("offchain:write")) == "permission denied"
    assert check(service, GO_URI, ops("info:read")) == "ok"
    assert check(service, GO_URI, ops("peers:read"), "/lnrpc.Lightning/ListPeers") == (
        "permission denied"
    )
    stranger = MacaroonService(bytes(32))
    assert check(stranger, GO_READ, ops("info:read")) == (
        "verification failed: signature mismatch after caveat verification"
    )


def test_baked_macaroon_layout() -> None:
    service = MacaroonService(ROOT_KEY)
    raw = service.bake(["peers:read", "info:read", "peers:read", "offchain:write"])
    assert raw[0] == 2  # V2 binary format
    mac = Macaroon.decode(raw)
    assert mac.location == "lnd"
    assert mac.identifier[0] == 3  # bakery version 3: the ops are in the id
    mac_id = MacaroonId.decode(mac.identifier)
    # Sorted by entity then action, duplicates gone, as the bakery stores them.
    assert list(mac_id.ops) == ops("info:read", "offchain:write", "peers:read")
    assert mac_id.storage_id == b"0"
    assert check(service, raw, ops("offchain:write")) == "ok"


def test_each_bake_has_a_fresh_nonce() -> None:
    service = MacaroonService(ROOT_KEY)
    assert service.bake(["info:read"]) != service.bake(["info:read"])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "expected 1 macaroon, got 0"),
        ("abc", "encoding/hex: odd length hex string"),
        ("zz", "encoding/hex: invalid byte: U+007A 'z'"),
        ("0102", "cannot determine data format of binary-encoded macaroon"),
        ("02ff", "unmarshal v2: varint value extends past end of buffer"),
        ("", "empty macaroon data"),
    ],
)
def test_unreadable_headers(header: str | None, expected: str) -> None:
    service = MacaroonService(ROOT_KEY)
    values = [] if header is None else [header]
    with pytest.raises(MacaroonError) as e:
        service.check(values, ops("info:read"), GET_INFO)
    assert str(e.value) == expected


def test_two_macaroon_headers_are_refused() -> None:
    service = MacaroonService(ROOT_KEY)
    mac = service.bake_admin().hex()
    with pytest.raises(MacaroonError, match=r"^expected 1 macaroon, got 2$"):
        service.check([mac, mac], ops("info:read"), GET_INFO)


def test_identifier_problems() -> None:
    service = MacaroonService(ROOT_KEY)
    old_style = Macaroon.mint(ROOT_KEY, b"\x02" + bytes(20)).encode()
    assert check(service, old_style, ops("info:read")) == "invalid ID"
    garbled = Macaroon.mint(ROOT_KEY, b"\x03\xff\xff").encode()
    assert check(service, garbled, ops("info:read")) == (
        "cannot retrieve macaroon: cannot unmarshal macaroon id: "
        "proto: cannot parse invalid wire-format data"
    )
    no_ops = Macaroon.mint(ROOT_KEY, encode_macaroon_id(b"n", b"0", [])).encode()
    assert check(service, no_ops, ops("info:read")) == (
        "cannot retrieve macaroon: no operations found in macaroon"
    )
    other_root = Macaroon.mint(ROOT_KEY, encode_macaroon_id(b"n", b"1", ops("info:read")))
    assert check(service, other_root.encode(), ops("info:read")) == (
        "cannot retrieve macaroon: cannot get macaroon: root key with id 1 doesn't exist"
    )


def test_tampering_breaks_the_signature() -> None:
    service = MacaroonService(ROOT_KEY)
    mac = Macaroon.decode(service.bake(["info:read"]))
    widened = Macaroon(
        mac.location,
        encode_macaroon_id(b"n" * 16, b"0", ops("info:read", "offchain:write")),
        mac.caveats,
        mac.signature,
    )
    assert check(service, widened.encode(), ops("offchain:write")) == (
        "verification failed: signature mismatch after caveat verification"
    )
    # A caveat appended without extending the chain is caught too.
    smuggled = Macaroon(mac.location, mac.identifier, (Caveat(b"lnd-custom x y"),), mac.signature)
    assert check(service, smuggled.encode(), ops("info:read")).startswith("verification failed")


def test_first_party_caveats() -> None:
    service = MacaroonService(ROOT_KEY)
    now = datetime.now(UTC)
    live = service.bake(["info:read"], caveats=[time_before_caveat(now + timedelta(minutes=5))])
    assert check(service, live, ops("info:read")) == "ok"
    dead_at = time_before_caveat(now - timedelta(seconds=30))
    dead = service.bake(["info:read"], caveats=[dead_at])
    assert check(service, dead, ops("info:read")) == (
        f'caveat "{dead_at}" not satisfied: macaroon has expired'
    )
    odd = service.bake(["info:read"], caveats=["ipaddr-ish 1.2.3.4"])
    assert check(service, odd, ops("info:read")) == (
        'caveat "ipaddr-ish 1.2.3.4" not satisfied: caveat not recognized'
    )
    # The caveat extends the signature chain: dropping it invalidates the macaroon.
    mac = Macaroon.decode(live)
    stripped = Macaroon(mac.location, mac.identifier, (), mac.signature)
    assert check(service, stripped.encode(), ops("info:read")).startswith("verification failed")


@pytest.mark.parametrize(
    "permission", ["info", "info:", ":read", "wallet:read", "info:delete", "uri"]
)
def test_permission_strings_are_validated(permission: str) -> None:
    with pytest.raises(ValueError, match="permission"):
        Op.parse(permission)


def test_uri_permissions_keep_the_method() -> None:
    assert Op.parse("uri:/lnrpc.Lightning/GetInfo") == Op("uri", "/lnrpc.Lightning/GetInfo")


def test_a_macaroon_verified_once_is_still_checked_on_every_call() -> None:
    service = MacaroonService(ROOT_KEY)
    now = datetime.now(UTC)
    expires = now + timedelta(minutes=5)
    mac = service.bake(["info:read"], caveats=[time_before_caveat(expires)])
    assert check(service, mac, ops("info:read")) == "ok"
    # remembered as authentic, but its caveat and its permissions still count each time
    later = expires + timedelta(seconds=1)
    with pytest.raises(MacaroonError, match="macaroon has expired"):
        service.check([mac.hex()], ops("info:read"), GET_INFO, now=later)
    assert check(service, mac, ops("offchain:write")) == "permission denied"
    # a forged sibling of a remembered macaroon is verified afresh
    genuine = Macaroon.decode(mac)
    forged = Macaroon(genuine.location, genuine.identifier, (), genuine.signature)
    assert check(service, forged.encode(), ops("info:read")).startswith("verification failed")
    # a new root key voids what was verified under the old one
    service.root_key = bytes(32)
    assert check(service, mac, ops("info:read")).startswith("verification failed")


def test_remembered_caveats_are_evaluated_on_every_call_in_order() -> None:
    service = MacaroonService(ROOT_KEY)
    now = datetime.now(UTC)
    deadline = now + timedelta(minutes=5)
    timed = service.bake(["info:read"], caveats=[time_before_caveat(deadline)])
    # the time counts at each call, whichever way it moves
    expired = f'caveat "{time_before_caveat(deadline)}" not satisfied: macaroon has expired'
    for when, expected in [(now, None), (deadline, expired), (now, None), (deadline, expired)]:
        try:
            service.check([timed.hex()], ops("info:read"), GET_INFO, now=when)
            outcome = None
        except MacaroonError as e:
            outcome = str(e)
        assert outcome == expected
    # caveats that never hold are refused every time, the first failing one named
    never = service.bake(
        ["info:read"],
        caveats=[time_before_caveat(deadline), "time-before yesterday", "odd 1"],
    )
    for _ in range(2):
        assert check(service, never, ops("info:read")).startswith(
            'caveat "time-before yesterday" not satisfied: '
        )
    unknown = service.bake(["info:read"], caveats=["odd 1"])
    for _ in range(2):
        assert check(service, unknown, ops("info:read")) == (
            'caveat "odd 1" not satisfied: caveat not recognized'
        )
    # a macaroon with a wrong signature is refused every time, and never remembered
    genuine = Macaroon.decode(service.bake_admin())
    bad = Macaroon(genuine.location, genuine.identifier, (), bytes(32)).encode()
    for _ in range(2):
        assert check(service, bad, ops("info:read")) == (
            "verification failed: signature mismatch after caveat verification"
        )
    assert all(key[0] != bad.hex() for key in service._verified)
