"""Logging for the daemon: one line per decision, as text or JSON, with secrets kept out.

A *decision* is what the mailbox did with one message (stored, forwarded, delivered, expired,
dropped...) or one notable state change. :func:`decision` writes it as one record whose fields
render with a stable layout:

text (``--log-format text``)::

    2026-01-02T03:04:05.678Z INFO lndmailbox.daemon.outcomes event=stored peer=02ab... id=9f3c... size=1366

json (``--log-format json``), one object per line::

    {"ts":"2026-01-02T03:04:05.678Z","level":"info","logger":"lndmailbox.daemon.outcomes","event":"stored",...}

The layout is: timestamp (UTC, milliseconds), level, logger name, then ``event``, then the
common fields in a fixed order (:data:`FIELD_ORDER`), then any other field sorted by name. Other
log records (``logger.warning("...")``) render the same way with their text under ``msg``.
Values: ``bytes`` as lowercase hex, ``None`` fields are left out, strings that contain spaces,
quotes, ``=`` or control characters are quoted (JSON string syntax) so a line stays one line.

Secrets never reach the output: :class:`RedactingFilter`, installed on the handler by
:func:`configure_logging`, replaces the value of any field whose name says it holds a secret
(macaroon, secret, password, token, seed, private key, ``key`` / ``*_key`` other than public
keys such as ``path_key``) and scrubs macaroons (hex, base64), PEM private keys and URL
credentials (``redis://:password@host``) from the message text and exception text of every record, including other libraries' records.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Final, Literal, TypeAlias

from lndmailbox.errors import ConfigError

__all__ = [
    "FIELD_ORDER",
    "LEVELS",
    "REDACTED",
    "JsonFormatter",
    "LogFormat",
    "RedactingFilter",
    "TextFormatter",
    "configure_logging",
    "decision",
    "is_secret_name",
    "scrub_text",
]

LogFormat: TypeAlias = Literal["text", "json"]

#: The attribute of a LogRecord that carries a decision's fields.
FIELDS_ATTR: Final = "lndmailbox_fields"

# Set on records whose decision fields were redacted when they were made.
_REDACTED_ATTR: Final = "lndmailbox_redacted"

#: Common fields, rendered in this order after ``event``; the rest follow sorted by name.
FIELD_ORDER: Final = ("node", "peer", "sender", "id", "size", "reason")

#: Names that the line header uses; a decision may not use them as field names.
RESERVED: Final = frozenset({"ts", "level", "logger", "msg", "exc"})

#: ``--log-level`` values.
LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

REDACTED: Final = "<redacted>"

# Libraries that log every request at INFO; they are held at WARNING unless debugging.
_NOISY: Final = ("httpx", "httpcore", "grpc", "asyncio", "redis")

_SECRET_WORDS: Final = (
    "macaroon",
    "secret",
    "password",
    "passwd",
    "token",
    "seed",
    "private",
    "privkey",
    "preimage",
)
# Fields ending in "key" that hold public points, which are fine to log.
_PUBLIC_KEYS: Final = frozenset({"path_key", "pubkey", "public_key", "ephemeral_key"})

# A serialised lnd macaroon begins 02 01 03 "lnd" (version 2, location "lnd").
_MACAROON_HEX: Final = re.compile(r"0201036c6e64[0-9a-fA-F]*")
_MACAROON_B64: Final = re.compile(r"AgEDbG5k[A-Za-z0-9+/=_-]*")
_PEM_PRIVATE: Final = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.DOTALL
)
# Credentials in a URL (redis://user:password@host, up to the authority's last "@": a
# password may hold a raw one), and passwords among its options
# (redis+sentinel://...?sentinel_password=...).
_URL_CREDENTIALS: Final = re.compile(r"(?<=://)[^/\s]*@")
_URL_PASSWORD_OPTION: Final = re.compile(r"(?<=password=)[^&\s]+")
_NEEDS_QUOTES: Final = re.compile(r'[\s"=\\]|[\x00-\x1f\x7f]')


@functools.lru_cache(maxsize=512)
def is_secret_name(name: str) -> bool:
    """Whether a field called ``name`` may hold a secret (and so is redacted)."""
    lowered = name.lower()
    if any(word in lowered for word in _SECRET_WORDS):
        return True
    if lowered in _PUBLIC_KEYS:
        return False
    return lowered == "key" or lowered.endswith(("_key", "key_material"))


def scrub_text(text: str) -> str:
    """``text`` with macaroons (hex or base64), PEM private keys, URL credentials replaced."""
    # Each pattern runs only where its fixed part occurs: this is on every log line.
    if "://" in text:
        text = _URL_CREDENTIALS.sub(REDACTED + "@", text)
        text = _URL_PASSWORD_OPTION.sub(REDACTED, text)
    if "0201036c6e64" in text or "0201036C6E64" in text:
        text = _MACAROON_HEX.sub(REDACTED, text)
    if "AgEDbG5k" in text:
        text = _MACAROON_B64.sub(REDACTED, text)
    if "PRIVATE KEY" in text:
        text = _PEM_PRIVATE.sub(REDACTED, text)
    return text


def _redact_value(name: str, value: object) -> object:
    if is_secret_name(name):
        return REDACTED
    if isinstance(value, Mapping):
        return {str(k): _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return scrub_text(bytes(value).hex())
    return value


class RedactingFilter(logging.Filter):
    """Keeps secrets out of every record that passes through the handler it sits on.

    Decision fields with a secret-sounding name lose their value; macaroons and PEM private
    keys are scrubbed from the message and the exception text (also of other libraries'
    records). It never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, Mapping) and not getattr(record, _REDACTED_ATTR, False):
            setattr(record, FIELDS_ATTR, {k: _redact_value(k, v) for k, v in fields.items()})
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is, never fail logging
            message = str(record.msg)
        record.msg = scrub_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub_text(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub_text(record.stack_info)
        return True


def _plain(value: object) -> object:
    """A JSON-friendly form of a field value."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)


def _text_value(value: object) -> str:
    plain = _plain(value)
    if isinstance(plain, bool):
        return "true" if plain else "false"
    if isinstance(plain, str):
        if plain == "" or _NEEDS_QUOTES.search(plain):
            return json.dumps(plain)
        return plain
    if isinstance(plain, int | float):
        return str(plain)
    return json.dumps(plain, separators=(",", ":"), sort_keys=True)


def _ordered(fields: Mapping[str, object]) -> list[tuple[str, object]]:
    """Fields in the stable layout: event, FIELD_ORDER, then the rest by name; no Nones."""
    items: list[tuple[str, object]] = []
    if fields.get("event") is not None:
        items.append(("event", fields["event"]))
    items.extend((k, fields[k]) for k in FIELD_ORDER if fields.get(k) is not None)
    fixed = {"event", *FIELD_ORDER}
    items.extend((k, fields[k]) for k in sorted(fields) if k not in fixed and fields[k] is not None)
    return items


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _exception_text(record: logging.LogRecord) -> str | None:
    if record.exc_text:
        return record.exc_text
    if record.exc_info:
        return logging.Formatter().formatException(record.exc_info)
    return None


class TextFormatter(logging.Formatter):
    """``TS LEVEL logger key=value ...``; a record that is no decision carries ``msg=``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, FIELDS_ATTR, None)
        head = f"{_timestamp(record)} {record.levelname} {record.name}"
        pairs = _ordered(fields) if isinstance(fields, Mapping) else [("msg", record.getMessage())]
        line = " ".join([head, *(f"{k}={_text_value(v)}" for k, v in pairs)])
        exc = _exception_text(record)
        if exc:
            # The traceback goes on the lines below, indented, so the first line stays parseable.
            line += "\n" + "\n".join("    " + part for part in exc.splitlines())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, then the decision fields (or ``msg``)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, FIELDS_ATTR, None)
        document: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if isinstance(fields, Mapping):
            document.update((k, _plain(v)) for k, v in _ordered(fields))
        else:
            document["msg"] = record.getMessage()
        exc = _exception_text(record)
        if exc:
            document["exc"] = exc
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False, default=str)


def decision(
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    event: str,
    *,
    level: int = logging.INFO,
    **fields: object,
) -> None:
    """Log one decision: ``event`` (``"stored"``, ``"dropped"``...) and its fields.

    Typical fields: ``peer`` (bytes, logged as hex), ``id`` (message id), ``size``,
    ``reason``. ``None`` values are left out. Field names ``ts``, ``level``, ``logger``,
    ``msg`` and ``exc`` are taken by the line header and raise ValueError.
    """
    clash = RESERVED.intersection(fields)
    if clash:
        raise ValueError(f"decision field names reserved by the log layout: {sorted(clash)}")
    if not logger.isEnabledFor(level):
        return
    record_fields: dict[str, object] = {"event": event, **fields}
    redacted = {k: _redact_value(k, v) for k, v in record_fields.items()}
    # The message is the text rendering, so handlers other than ours (pytest's caplog, a
    # library user's own handler) still show something useful and secret-free.
    message = " ".join(f"{k}={_text_value(v)}" for k, v in _ordered(redacted))
    # The fields travel redacted already: the handler's filter need not do it again.
    logger.log(
        level, "%s", message, extra={FIELDS_ATTR: redacted, _REDACTED_ATTR: True}, stacklevel=2
    )


_installed: logging.Handler | None = None


def configure_logging(
    level: str, fmt: LogFormat | str, *, stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) as text or JSON lines at ``level``.

    ``level`` is one of :data:`LEVELS` (any case), ``fmt`` ``"text"`` or ``"json"``.
    Calling it again replaces the handler it installed before. Chatty libraries (httpx,
    grpc, redis, asyncio) are held at WARNING unless ``level`` is ``debug``. Raises
    ConfigError for an unknown level or format. Returns the installed handler.
    """
    global _installed
    try:
        numeric = LEVELS[level.lower()]
    except KeyError as e:
        raise ConfigError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}") from e
    formatter: logging.Formatter
    if fmt == "text":
        formatter = TextFormatter()
    elif fmt == "json":
        formatter = JsonFormatter()
    else:
        raise ConfigError(f"unknown log format {fmt!r}; use text or json")

    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
        _installed.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _NOISY:
        logging.getLogger(name).setLevel(
            logging.NOTSET if numeric <= logging.DEBUG else logging.WARNING
        )
    _installed = handler
    return handler
