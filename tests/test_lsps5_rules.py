"""LSPS5 (bLIP-55) rules: what set_webhook and remove_webhook accept, the errors they
answer, and the exact bytes of a notification, its timestamp and the text signed."""

from __future__ import annotations

import datetime
import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lndmailbox.errors import LspsError
from lndmailbox.lsps.jsonrpc import INVALID_PARAMS, encode_error, encode_result
from lndmailbox.lsps.lsps5 import (
    APP_NAME_NOT_FOUND,
    MAX_APP_NAME_BYTES,
    NO_PRIOR_ACTIVITY,
    ONION_MESSAGE_INCOMING,
    TOO_MANY_WEBHOOKS,
    WEBHOOK_REGISTERED,
    SetWebhook,
    app_name_not_found,
    list_webhooks_result,
    no_prior_activity,
    notification_body,
    notification_timestamp,
    read_remove_webhook,
    read_set_webhook,
    set_webhook_result,
    signed_text,
    too_many_webhooks,
)
from lndmailbox.lsps.webhook_url import (
    MAX_WEBHOOK_CHARS,
    TOO_LONG,
    UNSUPPORTED_PROTOCOL,
    URL_PARSE_ERROR,
    check_webhook,
    webhook_digest,
    webhook_host,
    webhook_label,
)

HOOK = "https://push.example.com/v1/wake?token=0123456789abcdef"
ID = "req-42"


def _set(params: dict[str, object]) -> SetWebhook:
    return read_set_webhook(params, ID)


def _set_refused(params: dict[str, object]) -> LspsError:
    with pytest.raises(LspsError) as caught:
        read_set_webhook(params, ID)
    assert caught.value.request_id == ID
    return caught.value


def _webhook_refused(url: object) -> int:
    """check_webhook's code for ``url``, checked to be read_set_webhook's too, to ID."""
    with pytest.raises(LspsError) as caught:
        check_webhook(url)
    assert _set_refused({"app_name": "a", "webhook": url}).code == caught.value.code
    return caught.value.code


def _url_of_length(length: int) -> str:
    head = "https://push.example.com/?token="
    return head + "t" * (length - len(head))


# app_name: at most 64 bytes of UTF-8, counted as bytes, not characters.


@pytest.mark.parametrize(
    "name",
    [
        "a" * 64,
        "é" * 32,
        "€" * 21 + "a",
        "😀" * 16,
        "My LSPS-Compliant Lightning Client",
        "a",
        'quote " and backslash \\ and \x00 nul',
    ],
)
def test_an_app_name_of_up_to_64_bytes_is_accepted(name: str) -> None:
    assert len(name.encode()) <= MAX_APP_NAME_BYTES
    assert _set({"app_name": name, "webhook": HOOK}) == SetWebhook(name, HOOK)
    assert read_remove_webhook({"app_name": name}, ID) == name


@pytest.mark.parametrize(
    "name",
    [
        "a" * 65,
        "é" * 32 + "a",
        "é" * 33,
        "€" * 22,
        "😀" * 16 + "a",
        "😀" * 17,
        "a" * 10_000,
    ],
)
def test_an_app_name_over_64_bytes_is_too_long(name: str) -> None:
    assert len(name) <= 64 or name.isascii()
    assert _set_refused({"app_name": name, "webhook": HOOK}).code == TOO_LONG
    with pytest.raises(LspsError) as caught:
        read_remove_webhook({"app_name": name}, ID)
    assert (caught.value.code, caught.value.request_id) == (TOO_LONG, ID)


@pytest.mark.parametrize("name", ["\ud800", "a\udfff", "\udc00\ud800", "ok\ud83d"])
def test_an_app_name_with_a_lone_surrogate_is_invalid_params(name: str) -> None:
    assert _set_refused({"app_name": name, "webhook": HOOK}).code == INVALID_PARAMS
    with pytest.raises(LspsError) as caught:
        read_remove_webhook({"app_name": name}, ID)
    assert (caught.value.code, caught.value.request_id) == (INVALID_PARAMS, ID)


@pytest.mark.parametrize("name", [None, 5, 1.5, True, ["a"], {"a": "b"}])
def test_an_app_name_that_is_no_string_is_invalid_params(name: object) -> None:
    assert _set_refused({"app_name": name, "webhook": HOOK}).code == INVALID_PARAMS
    with pytest.raises(LspsError) as caught:
        read_remove_webhook({"app_name": name}, ID)
    assert (caught.value.code, caught.value.request_id) == (INVALID_PARAMS, ID)


@pytest.mark.parametrize(
    "params",
    [{}, {"webhook": HOOK}, {"app_name": "a"}, {"appname": "a", "webhook": HOOK}],
)
def test_set_webhook_with_a_parameter_missing_is_invalid_params(params: dict[str, object]) -> None:
    assert _set_refused(params).code == INVALID_PARAMS


def test_remove_webhook_without_an_app_name_is_invalid_params() -> None:
    with pytest.raises(LspsError) as caught:
        read_remove_webhook({"webhook": HOOK}, ID)
    assert (caught.value.code, caught.value.request_id) == (INVALID_PARAMS, ID)


def test_unknown_parameters_are_ignored() -> None:
    params: dict[str, object] = {"app_name": "a", "webhook": HOOK, "color": "blue", "n": [1]}
    assert _set(params) == SetWebhook("a", HOOK)
    assert read_remove_webhook({"app_name": "a", "extra": None}, ID) == "a"


def test_a_bad_app_name_is_reported_before_a_bad_webhook() -> None:
    assert _set_refused({"app_name": "a" * 65, "webhook": "http://x/"}).code == TOO_LONG


# webhook: at most 1024 printable ASCII characters, an absolute https URL.


def test_a_webhook_of_1024_characters_is_accepted_and_1025_is_too_long() -> None:
    assert check_webhook(_url_of_length(MAX_WEBHOOK_CHARS)) == _url_of_length(1024)
    assert _set({"app_name": "a", "webhook": _url_of_length(1024)}).webhook == _url_of_length(1024)
    assert _webhook_refused(_url_of_length(MAX_WEBHOOK_CHARS + 1)) == TOO_LONG
    assert _webhook_refused(_url_of_length(100_000)) == TOO_LONG


def test_length_is_checked_before_the_characters() -> None:
    assert _webhook_refused("https://push.example.com/" + "é" * 1000) == TOO_LONG


@pytest.mark.parametrize(
    "url",
    [
        HOOK,
        "https://www.example.org/push?l=1234567890abcdefghijklmnopqrstuv&c=best",
        "https://push.example.com",
        "https://push.example.com/",
        "https://push.example.com.",
        "https://push.example.com:8443/wake?token=x",
        "https://push.example.com:65535/",
        "https://push.example.com:1/",
        "https://push.example.com:/",
        "https://[2001:db8::1]/wake?token=x",
        "https://[::1]:8443/",
        "https://[::ffff:192.0.2.1]/",
        "https://192.0.2.1:443/x",
        "https://localhost/",
        "HTTPS://Push.Example.COM/Path?Token=X",
        "https://xn--bcher-kva.example/",
        "https://user:secret@push.example.com/",
        "https://push.example.com/a%20b?q=%E2%82%AC#fragment",
        "https://" + "a" * 63 + ".example/",
        "https://push-1.example-2.com/",
        "https://" + ".".join(["a" * 63] * 3 + ["b" * 61]) + "/",
    ],
)
def test_a_good_webhook_is_accepted_unchanged(url: str) -> None:
    assert check_webhook(url) == url
    assert _set({"app_name": "a", "webhook": url}) == SetWebhook("a", url)


@pytest.mark.parametrize(
    "url",
    [
        "https://bücher.example/",
        "https://push.example.com/wake?token=é",
        "https://push.example.com/a b",
        " https://push.example.com/",
        "https://push.example.com/\t",
        "https://push.example.com/\n",
        "https://push.example.com/\r\nHost: evil",
        "https://push.example.com/\x00",
        "https://push.example.com/\x7f",
        "https://push.example.com/\x1b[0m",
        "https://push.example.com/\u200b",
        "",
    ],
)
def test_a_webhook_that_is_not_printable_ascii_is_a_url_parse_error(url: str) -> None:
    assert _webhook_refused(url) == URL_PARSE_ERROR


@pytest.mark.parametrize("url", [None, 5, 1.5, True, ["https://a/"], {"url": "https://a/"}])
def test_a_webhook_that_is_no_string_is_a_url_parse_error(url: object) -> None:
    assert _webhook_refused(url) == URL_PARSE_ERROR


@pytest.mark.parametrize(
    "url",
    [
        "http://push.example.com/wake",
        "ftp://push.example.com/wake",
        "wss://push.example.com/wake",
        "file://push.example.com/etc/passwd",
        "gopher://push.example.com/",
        "httpsx://push.example.com/",
        "HTTP://push.example.com/",
    ],
)
def test_a_webhook_with_another_scheme_is_an_unsupported_protocol(url: str) -> None:
    assert _webhook_refused(url) == UNSUPPORTED_PROTOCOL


@pytest.mark.parametrize(
    "url",
    [
        "push.example.com/wake",
        "//push.example.com/wake",
        "/wake",
        "https:push.example.com",
        "https:/push.example.com",
        "http:push.example.com",
        "mailto:push@example.com",
        "data:text/plain,hi",
    ],
)
def test_a_webhook_that_is_no_absolute_url_is_a_url_parse_error(url: str) -> None:
    assert _webhook_refused(url) == URL_PARSE_ERROR


@pytest.mark.parametrize(
    "url",
    [
        "https:///wake",
        "https://:443/",
        "https://user@/",
        "https://./",
        "https://-push.example.com/",
        "https://push-.example.com/",
        "https://push..example.com/",
        "https://.push.example.com/",
        "https://push_1.example.com/",
        "https://push%2eexample.com/",
        "https://push.exa!mple.com/",
        "https://" + "a" * 64 + ".example/",
        "https://" + ".".join(["a" * 63] * 3 + ["b" * 62]) + "/",
        "https://[::1/",
        "https://[::1]x/",
        "https://[not-ipv6]/",
        "https://[192.0.2.1]/",
        "https://[::1::2]/",
        "https://::1/",
    ],
)
def test_a_webhook_with_a_bad_host_is_a_url_parse_error(url: str) -> None:
    assert _webhook_refused(url) == URL_PARSE_ERROR


@pytest.mark.parametrize(
    "port", ["0", "65536", "99999", "abc", "-1", "+80", "80:90", "1_0", "0x50", "443.0"]
)
def test_a_webhook_with_a_bad_port_is_a_url_parse_error(port: str) -> None:
    assert _webhook_refused(f"https://push.example.com:{port}/wake") == URL_PARSE_ERROR
    assert _webhook_refused(f"https://[2001:db8::1]:{port}/wake") == URL_PARSE_ERROR


# The results and the errors the store's answers turn into.


def test_set_webhook_result_has_bLIP55_fields() -> None:
    assert set_webhook_result(2, 4, False) == {
        "num_webhooks": 2,
        "max_webhooks": 4,
        "no_change": False,
    }
    assert encode_result(ID, set_webhook_result(1, 10, True)) == (
        b'{"jsonrpc":"2.0","id":"req-42","result":'
        b'{"num_webhooks":1,"max_webhooks":10,"no_change":true}}'
    )


def test_list_webhooks_result_lists_the_names_in_order() -> None:
    names = ("zeta", "Älpha", "😀")
    assert list_webhooks_result(names, 10) == {
        "app_names": ["zeta", "Älpha", "😀"],
        "max_webhooks": 10,
    }
    assert encode_result(ID, list_webhooks_result([], 3)) == (
        b'{"jsonrpc":"2.0","id":"req-42","result":{"app_names":[],"max_webhooks":3}}'
    )


def test_too_many_webhooks_carries_max_webhooks_as_data() -> None:
    error = too_many_webhooks(ID, 7)
    assert (error.code, error.request_id, error.data) == (
        TOO_MANY_WEBHOOKS,
        ID,
        {"max_webhooks": 7},
    )
    assert TOO_MANY_WEBHOOKS == 503
    assert encode_error(error) == (
        b'{"jsonrpc":"2.0","id":"req-42","error":{"code":503,'
        b'"message":"too_many_webhooks: at most 7","data":{"max_webhooks":7}}}'
    )


def test_app_name_not_found_is_1010_without_data() -> None:
    error = app_name_not_found(ID)
    assert (error.code, error.request_id, error.data) == (APP_NAME_NOT_FOUND, ID, None)
    assert APP_NAME_NOT_FOUND == 1010
    assert encode_error(error) == (
        b'{"jsonrpc":"2.0","id":"req-42","error":{"code":1010,"message":"app_name_not_found"}}'
    )


def test_no_prior_activity_is_1003_to_the_request() -> None:
    error = no_prior_activity(ID)
    assert (error.code, error.request_id, error.data) == (NO_PRIOR_ACTIVITY, ID, None)
    assert NO_PRIOR_ACTIVITY == 1003


def test_the_webhook_error_codes_are_bLIP55s() -> None:
    assert (TOO_LONG, URL_PARSE_ERROR, UNSUPPORTED_PROTOCOL) == (500, 501, 502)


# Notifications: the body, the timestamp header and the text the node key signs.


def test_notification_bodies_are_exact() -> None:
    assert notification_body(WEBHOOK_REGISTERED) == (
        b'{"jsonrpc":"2.0","method":"lsps5.webhook_registered","params":{}}'
    )
    assert notification_body(ONION_MESSAGE_INCOMING) == (
        b'{"jsonrpc":"2.0","method":"lsps5.onion_message_incoming","params":{}}'
    )


_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+00:00")
#: 2023-11-14T22:13:20Z
_T0 = 1_700_000_000


@pytest.mark.parametrize(
    ("unix_seconds", "text"),
    [
        (_T0 + 0.123, "2023-11-14T22:13:20.123+00:00"),
        (_T0 + 0.999, "2023-11-14T22:13:20.999+00:00"),
        (_T0 + 0.0014, "2023-11-14T22:13:20.001+00:00"),
        (_T0 + 0.0016, "2023-11-14T22:13:20.002+00:00"),
        (_T0 + 0.0, "2023-11-14T22:13:20.001+00:00"),
        (_T0 + 0.0004, "2023-11-14T22:13:20.001+00:00"),
        (_T0 - 0.0004, "2023-11-14T22:13:20.001+00:00"),
        (_T0 - 0.0006, "2023-11-14T22:13:19.999+00:00"),
        (_T0 + 0.9996, "2023-11-14T22:13:21.001+00:00"),
        (0.0, "1970-01-01T00:00:00.001+00:00"),
        (951_782_400.5, "2000-02-29T00:00:00.500+00:00"),
        (4_102_444_799.25, "2099-12-31T23:59:59.250+00:00"),
    ],
)
def test_notification_timestamp_is_exact(unix_seconds: float, text: str) -> None:
    assert notification_timestamp(unix_seconds) == text


_INSTANTS = st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(_INSTANTS)
def test_notification_timestamp_is_utc_milliseconds_never_dot_000(unix_seconds: float) -> None:
    text = notification_timestamp(unix_seconds)
    assert _TIMESTAMP.fullmatch(text), text
    assert not text.endswith(".000+00:00")
    parsed = datetime.datetime.fromisoformat(text)
    assert parsed.utcoffset() == datetime.timedelta(0)
    # It reads back as itself, to the millisecond (what chrono renders back, too).
    assert parsed.isoformat(timespec="milliseconds") == text
    # Rounded to the nearest millisecond, and a whole second pushed 1 ms later: at most
    # half a millisecond early, at most one and a half late.
    drift = parsed.timestamp() - unix_seconds
    assert -0.0005 - 1e-6 <= drift <= 0.0015 + 1e-6, drift


@settings(max_examples=300, deadline=None)
@given(_INSTANTS, _INSTANTS)
def test_notification_timestamp_never_goes_backwards(a: float, b: float) -> None:
    early, late = sorted((a, b))
    assert notification_timestamp(early) <= notification_timestamp(late)


def test_signed_text_is_exact() -> None:
    body = notification_body(ONION_MESSAGE_INCOMING)
    assert signed_text("2023-11-14T22:13:20.123+00:00", body) == (
        b"LSPS5: DO NOT SIGN THIS MESSAGE MANUALLY: LSP: At 2023-11-14T22:13:20.123+00:00"
        b' I notify {"jsonrpc":"2.0","method":"lsps5.onion_message_incoming","params":{}}'
    )


def test_signed_text_matches_bLIP55s_hex_dump() -> None:
    # bLIP-55's own example, with its timestamp and body: the header's text verbatim.
    expected = bytes.fromhex(
        "4c535053353a20444f204e4f54205349474e2054484953204d455353414745204d414e55414c4c59"
        "3a204c53503a20417420323032332d30352d30345431303a35323a35382e3339355a2049206e6f74"
        "696679207b226a736f6e727063223a22322e30222c226d6574686f64223a226c737073352e676f6f"
        "64627965222c22706172616d73223a7b7d7d"
    )
    body = b'{"jsonrpc":"2.0","method":"lsps5.goodbye","params":{}}'
    assert signed_text("2023-05-04T10:52:58.395Z", body) == expected


# How a webhook is shown: its host and a digest, never its path or query.


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://push.example.com/v1/wake?token=SECRET", "push.example.com"),
        ("https://PUSH.Example.COM:8443/SECRET?SECRET", "push.example.com"),
        ("https://SECRET:SECRET@push.example.com/", "push.example.com"),
        ("https://[2001:db8::1]:8443/SECRET#SECRET", "2001:db8::1"),
        ("https://push.example.com?token=SECRET", "push.example.com"),
        ("https://push.example.com#SECRET", "push.example.com"),
        ("SECRET", "?"),
        ("https:///SECRET", "?"),
        ("https://[SECRET/", "?"),
    ],
)
def test_a_webhook_label_is_its_host_and_digest(url: str, host: str) -> None:
    assert webhook_host(url) == host
    label = webhook_label(url)
    assert label == f"{host}#{webhook_digest(url)}"
    assert "secret" not in label.lower()


def test_webhook_digest_is_the_first_8_hex_digits_of_sha256_and_stable() -> None:
    assert webhook_digest(HOOK) == hashlib.sha256(HOOK.encode()).hexdigest()[:8]
    assert webhook_digest(HOOK) == webhook_digest(str(HOOK))
    assert webhook_digest(HOOK) != webhook_digest(HOOK + "x")
    assert webhook_digest("https://push.example.com/") == "859cb7da"
    assert re.fullmatch(r"[0-9a-f]{8}", webhook_digest("\ud800 any text at all"))


_TOKEN = st.text(alphabet="ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ_~", min_size=12, max_size=40)
_HOST_LABEL = st.from_regex(r"[a-f0-9]([a-f0-9-]{0,10}[a-f0-9])?", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(
    hosts=st.lists(_HOST_LABEL, min_size=1, max_size=4),
    port=st.none() | st.integers(1, 65535),
    path_token=_TOKEN,
    query_token=_TOKEN,
)
def test_a_label_never_shows_the_path_or_query(
    hosts: list[str], port: int | None, path_token: str, query_token: str
) -> None:
    # Hosts and digests are drawn from [a-f0-9.-]; the tokens from letters outside it.
    authority = ".".join(hosts) + ("" if port is None else f":{port}")
    url = f"https://{authority}/{path_token}/wake?token={query_token}"
    assert check_webhook(url) == url
    label = webhook_label(url)
    assert path_token.lower() not in label.lower()
    assert query_token.lower() not in label.lower()
    assert label == f"{'.'.join(hosts)}#{webhook_digest(url)}"
    assert webhook_label(url) == label


@pytest.mark.parametrize(
    "url",
    [
        "https://push.example.com:SECRET/wake",
        "https://push.example.com:SECRET",
        "https://[2001:db8::1]:SECRET/",
        "https://[SECRET/wake",
        "https://[SECRET]/wake",
        "https://SECRET_host/wake",
        "https://push.example.com:99999/SECRET",
        "http://push.example.com/SECRET",
        "https://push.example.com/SECRET wake",
        "https://push.example.com/" + "SECRET" * 200,
    ],
)
def test_a_refused_webhooks_error_never_repeats_any_of_it(url: str) -> None:
    # The error's text is answered, counted and logged: like a label, it must not carry
    # a token, even one misplaced where the port goes.
    with pytest.raises(LspsError) as caught:
        check_webhook(url)
    assert "secret" not in str(caught.value).lower()
    assert "secret" not in str(_set_refused({"app_name": "a", "webhook": url})).lower()
