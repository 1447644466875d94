"""LSPS0's JSON-RPC (bLIP-50): every answer read_request asks for, and the bytes it gets."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lndmailbox.errors import LspsError
from lndmailbox.lsps.jsonrpc import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    Request,
    encode_error,
    encode_result,
    method_not_found,
    read_request,
)


def _payload(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def _refusal(payload: bytes) -> LspsError:
    with pytest.raises(LspsError) as caught:
        read_request(payload)
    return caught.value


def _answer(data: bytes) -> dict[str, object]:
    value = json.loads(data.decode("utf-8"))
    assert isinstance(value, dict)
    return value


GOOD = _payload(jsonrpc="2.0", id="req-1", method="lsps0.list_protocols", params={})


def test_a_request_is_read_with_its_id_method_and_params() -> None:
    payload = _payload(jsonrpc="2.0", id="req-1", method="lsps5.set_webhook", params={"a": [1]})
    assert read_request(payload) == Request("req-1", "lsps5.set_webhook", {"a": [1]})


def test_params_may_be_left_out_and_read_as_empty() -> None:
    request = read_request(_payload(jsonrpc="2.0", id="x", method="lsps5.list_webhooks"))
    assert request == Request("x", "lsps5.list_webhooks", {})


def test_whitespace_around_the_object_is_json_and_accepted() -> None:
    assert read_request(b" \n" + GOOD + b"\t ") == read_request(GOOD)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b'{"jsonrpc":"2.0","id":"1","method":"\xff"}', "not UTF-8"),
        (b"\xc3\x28", "an invalid two-byte sequence"),
        (b'{"jsonrpc":"2.0","id":"\xed\xa0\x80","method":"x"}', "an encoded surrogate"),
        (b"\xef\xbb\xbf" + GOOD, "a byte-order mark is not JSON"),
        (GOOD + b"\x00", "a NUL byte after the object"),
        (b'{"jsonrpc":"2.0","id":"1\x00","method":"x"}', "a NUL byte in a string"),
        (b"", "nothing"),
        (b"{", "cut short"),
        (b'{"jsonrpc":"2.0","id":"1","method":"x"} {}', "two objects"),
        (b"{'jsonrpc':'2.0'}", "single quotes"),
        (b'{"jsonrpc":"2.0","id":"1","method":"x","params":{"a":NaN}}', "NaN"),
        (b'{"jsonrpc":"2.0","id":"1","method":"x","params":{"a":Infinity}}', "Infinity"),
        (b'{"jsonrpc":"2.0","id":"1","method":"x","params":{"a":-Infinity}}', "-Infinity"),
        (b"[" * 100_000 + b"]" * 100_000, "arrays nested too deep"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "objects nested too deep"),
        (b"1" * 5_000, "an integer too long to read"),
    ],
)
def test_a_parse_error_is_answered_with_id_null(payload: bytes, why: str) -> None:
    error = _refusal(payload)
    assert error.code == PARSE_ERROR, why
    assert error.request_id is None, why
    assert _answer(encode_error(error))["id"] is None


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"[]", "an empty batch"),
        (b"[" + GOOD + b"]", "a batch of one"),
        (b"[" + GOOD + b"," + GOOD + b"]", "a batch of two"),
        (b'"lsps0.list_protocols"', "a string"),
        (b"42", "a number"),
        (b"null", "null"),
        (b"true", "true"),
        (b"{}", "an empty object"),
        (_payload(jsonrpc="2.0", id=7, method="x"), "a number id"),
        (_payload(jsonrpc="2.0", id=None, method="x"), "a null id"),
        (_payload(jsonrpc="2.0", id=["1"], method="x"), "an array id"),
        (_payload(jsonrpc="2.0", id={"a": "1"}, method="x"), "an object id"),
        (_payload(jsonrpc="2.0", id=True, method="x"), "a boolean id"),
        (_payload(jsonrpc="2.0", method=5), "no id and a method that is no string"),
    ],
)
def test_an_invalid_request_with_no_usable_id_is_answered_with_id_null(
    payload: bytes, why: str
) -> None:
    error = _refusal(payload)
    assert error.code == INVALID_REQUEST, why
    assert error.request_id is None, why
    assert _answer(encode_error(error))["id"] is None


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"id": "r", "method": "x"}, "no jsonrpc"),
        ({"jsonrpc": "1.0", "id": "r", "method": "x"}, "jsonrpc 1.0"),
        ({"jsonrpc": 2.0, "id": "r", "method": "x"}, "jsonrpc a number"),
        ({"jsonrpc": "2.0 ", "id": "r", "method": "x"}, "jsonrpc with a space"),
        ({"jsonrpc": "2.0", "id": "r"}, "no method"),
        ({"jsonrpc": "2.0", "id": "r", "method": None}, "a null method"),
        ({"jsonrpc": "2.0", "id": "r", "method": 3}, "a number method"),
        ({"jsonrpc": "2.0", "id": "r", "method": ["x"]}, "an array method"),
    ],
)
def test_an_invalid_request_with_a_string_id_is_answered_to_that_id(
    fields: dict[str, object], why: str
) -> None:
    error = _refusal(_payload(**fields))
    assert (error.code, error.request_id) == (INVALID_REQUEST, "r"), why
    assert _answer(encode_error(error))["id"] == "r"


@pytest.mark.parametrize("params", [[], [1, 2], "a", 1, 1.5, True, None])
def test_params_that_are_not_an_object_are_invalid_params(params: object) -> None:
    error = _refusal(_payload(jsonrpc="2.0", id="p", method="x", params=params))
    assert (error.code, error.request_id) == (INVALID_PARAMS, "p")


@pytest.mark.parametrize(
    "fields",
    [
        {"jsonrpc": "2.0", "method": "lsps5.webhook_registered", "params": {}},
        {"jsonrpc": "2.0", "method": "x"},
        {"jsonrpc": "2.0", "id": "r", "result": {}},
        {"jsonrpc": "2.0", "id": "r", "result": None},
        {"jsonrpc": "2.0", "id": "r", "error": {"code": -32601, "message": "no"}},
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "no"}},
        {"jsonrpc": "2.0", "id": 5, "result": 1},
    ],
)
def test_notifications_and_responses_need_no_answer(fields: dict[str, object]) -> None:
    assert read_request(_payload(**fields)) is None


def test_a_message_with_both_a_method_and_a_result_is_a_request() -> None:
    payload = _payload(jsonrpc="2.0", id="r", method="x", result={})
    assert read_request(payload) == Request("r", "x", {})


def test_encode_result_carries_exactly_the_id_and_the_result() -> None:
    data = encode_result("req-7", {"protocols": [5], "name": "é€😀"})
    assert _answer(data) == {
        "jsonrpc": "2.0",
        "id": "req-7",
        "result": {"protocols": [5], "name": "é€😀"},
    }
    # LSPS0: a character that needs no escape is written as itself, compactly.
    assert "é€😀".encode() in data
    assert b" " not in data


def test_encode_result_of_an_empty_result_is_an_empty_object() -> None:
    assert encode_result("r", {}) == b'{"jsonrpc":"2.0","id":"r","result":{}}'


def test_encode_error_without_data_has_no_data_field() -> None:
    answer = _answer(encode_error(LspsError(INVALID_PARAMS, "invalid params: x", request_id="r")))
    assert answer == {
        "jsonrpc": "2.0",
        "id": "r",
        "error": {"code": INVALID_PARAMS, "message": "invalid params: x"},
    }


def test_encode_error_with_data_carries_it() -> None:
    error = LspsError(503, "too_many_webhooks", request_id="r", data={"max_webhooks": 10})
    answer = _answer(encode_error(error))
    assert answer == {
        "jsonrpc": "2.0",
        "id": "r",
        "error": {"code": 503, "message": "too_many_webhooks", "data": {"max_webhooks": 10}},
    }


def test_encode_error_with_empty_data_still_carries_it() -> None:
    error = LspsError(503, "m", request_id="r", data={})
    error_body = _answer(encode_error(error))["error"]
    assert isinstance(error_body, dict)
    assert error_body["data"] == {}


def test_encode_error_with_no_request_id_says_null() -> None:
    data = encode_error(LspsError(PARSE_ERROR, "parse error: not JSON"))
    assert _answer(data) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": PARSE_ERROR, "message": "parse error: not JSON"},
    }


def test_method_not_found_names_the_method_cut_to_64_characters() -> None:
    request = Request("r", "lsps9." + "m" * 200)
    error = method_not_found(request)
    assert (error.code, error.request_id, error.data) == (METHOD_NOT_FOUND, "r", None)
    error_body = _answer(encode_error(error))["error"]
    assert error_body == {
        "code": METHOD_NOT_FOUND,
        "message": f"method not found: {request.method[:64]}",
    }


def test_a_read_request_answered_round_trips_its_id() -> None:
    request = read_request(_payload(jsonrpc="2.0", id='ü-"quoted"\\', method="lsps0.nope"))
    assert request is not None
    assert _answer(encode_result(request.id, {}))["id"] == 'ü-"quoted"\\'
    assert _answer(encode_error(method_not_found(request)))["id"] == 'ü-"quoted"\\'


_PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _outcome(payload: bytes) -> Request | LspsError | None:
    """What read_request makes of ``payload``: anything else it raises fails the test."""
    try:
        return read_request(payload)
    except LspsError as e:
        return e


@_PROPERTY
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_nothing_but_lsps_error(payload: bytes) -> None:
    outcome = _outcome(payload)
    if isinstance(outcome, LspsError):
        assert outcome.code in {PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS}


@pytest.mark.parametrize("request_id", ["\ud800", "a\udfff", "\udc00\ud83d"])
def test_an_id_with_a_lone_surrogate_is_invalid_and_answered_with_id_null(
    request_id: str,
) -> None:
    # JSON lets a \ud800 escape stand alone; no UTF-8 answer could echo that id.
    error = _refusal(_payload(jsonrpc="2.0", id=request_id, method="lsps0.list_protocols"))
    assert (error.code, error.request_id) == (INVALID_REQUEST, None)
    assert _answer(encode_error(error))["id"] is None


@pytest.mark.parametrize("method", ["\ud800", "lsps5.\udfff"])
def test_a_method_with_a_lone_surrogate_is_invalid_and_answered_to_its_id(method: str) -> None:
    error = _refusal(_payload(jsonrpc="2.0", id="r", method=method))
    assert (error.code, error.request_id) == (INVALID_REQUEST, "r")
    assert _answer(encode_error(error))["id"] == "r"


# Any string JSON can carry, lone surrogates included (json.dumps escapes them).
_STRINGS = st.text(st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=12)
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _STRINGS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_STRINGS, inner, max_size=3),
    max_leaves=12,
)
_MESSAGES = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.just("2.0") | _VALUES,
        "id": _STRINGS | _VALUES,
        "method": st.sampled_from(["lsps5.set_webhook", "lsps0.list_protocols"]) | _STRINGS,
        "params": st.dictionaries(_STRINGS, _VALUES, max_size=3) | _VALUES,
        "result": _VALUES,
        "error": _VALUES,
    },
)


@_PROPERTY
@given(_MESSAGES)
def test_every_message_read_can_be_answered(message: dict[str, object]) -> None:
    outcome = _outcome(json.dumps(message, allow_nan=False).encode("ascii"))
    if outcome is None:
        return
    if isinstance(outcome, LspsError):
        assert _answer(encode_error(outcome))["id"] == outcome.request_id
        return
    assert _answer(encode_result(outcome.id, {}))["id"] == outcome.id
    assert _answer(encode_error(method_not_found(outcome)))["id"] == outcome.id
