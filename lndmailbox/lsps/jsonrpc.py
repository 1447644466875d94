"""LSPS0's JSON-RPC 2.0 (bLIP-50): one request in, one answer out, as bytes.

A custom message of type 37913 carries exactly one JSON-RPC object, UTF-8, without NUL
bytes. :func:`read_request` turns a peer's payload into a :class:`Request`, or None for
what needs no answer (a notification, or a response: the mailbox sends no requests), or
raises :class:`~lndmailbox.errors.LspsError` with the error to answer:

- -32700 (parse error, ``"id": null``): not UTF-8, a NUL byte, not JSON, nested too deep;
- -32600 (invalid request): not one object (LSPS0 has no batches), ``jsonrpc`` not
  ``"2.0"``, no string ``method``, an ``id`` that is not a string (LSPS0 asks clients for
  string ids; the answer then carries ``"id": null``, since the id cannot be echoed
  faithfully). An id or method holding a lone surrogate (JSON allows a ``\\ud800``
  escape alone) counts as none: no UTF-8 answer could carry it;
- -32602 (invalid params): ``params`` present and not an object.

An unknown method (-32601) is the caller's to answer: only it knows the methods.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from lndmailbox.errors import LspsError

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "Request",
    "encode_error",
    "encode_result",
    "method_not_found",
    "read_request",
]

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603

_VERSION: Final = "2.0"


@dataclass(frozen=True, slots=True)
class Request:
    """One request a peer sent: its ``id`` (echoed in the answer), ``method``, ``params``."""

    id: str
    method: str
    params: Mapping[str, object] = field(default_factory=dict)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _is_text(value: str) -> bool:
    """Whether UTF-8 can carry ``value``: it holds no lone surrogate."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_request(payload: bytes) -> Request | None:
    """The request in ``payload``; None when it needs no answer. Raises LspsError."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LspsError(PARSE_ERROR, "parse error: not UTF-8") from e
    if "\x00" in text:
        raise LspsError(PARSE_ERROR, "parse error: a NUL byte")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise LspsError(PARSE_ERROR, "parse error: not JSON") from e
    if not isinstance(value, dict):
        raise LspsError(INVALID_REQUEST, "invalid request: not one JSON-RPC object")
    request_id = value.get("id")
    is_answer = "method" not in value and ("result" in value or "error" in value)
    if is_answer or ("id" not in value and isinstance(value.get("method"), str)):
        return None
    if not isinstance(request_id, str) or not _is_text(request_id):
        raise LspsError(INVALID_REQUEST, "invalid request: the id must be a string")
    if value.get("jsonrpc") != _VERSION:
        raise LspsError(
            INVALID_REQUEST, 'invalid request: jsonrpc must be "2.0"', request_id=request_id
        )
    method = value.get("method")
    if not isinstance(method, str) or not _is_text(method):
        raise LspsError(INVALID_REQUEST, "invalid request: no method name", request_id=request_id)
    params = value.get("params", {})
    if not isinstance(params, dict):
        raise LspsError(
            INVALID_PARAMS, "invalid params: params must be an object", request_id=request_id
        )
    return Request(id=request_id, method=method, params=params)


def method_not_found(request: Request) -> LspsError:
    """The -32601 error for a method this server does not have."""
    return LspsError(
        METHOD_NOT_FOUND, f"method not found: {request.method[:64]}", request_id=request.id
    )


def _encode(value: Mapping[str, object]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def encode_result(request_id: str, result: Mapping[str, object]) -> bytes:
    """The answer carrying ``result`` to request ``request_id``."""
    return _encode({"jsonrpc": _VERSION, "id": request_id, "result": dict(result)})


def encode_error(error: LspsError) -> bytes:
    """The answer carrying ``error`` (its code, text and data) to its request's id."""
    body: dict[str, object] = {"code": error.code, "message": str(error)}
    if error.data is not None:
        body["data"] = error.data
    return _encode({"jsonrpc": _VERSION, "id": error.request_id, "error": body})
