"""The daemon's log lines: stable key=value text, JSON lines, and no secrets in either."""

from __future__ import annotations

import importlib
import io
import json
import logging
import pkgutil
import re
from collections.abc import Callable, Iterator
from typing import Literal

import pytest

from lndmailbox.daemon import outcomes
from lndmailbox.errors import ConfigError
from lndmailbox.logs import REDACTED, configure_logging, decision, is_secret_name, scrub_text

PEER = bytes.fromhex("02" + "ab" * 32)
# The start of a real lnd admin macaroon (version 2, location "lnd") plus some body.
MACAROON = bytes.fromhex("0201036c6e6402f801030a10") + bytes(range(40))
PEM_KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBvJ1fW0mOQ2\nsecretstuff==\n-----END EC PRIVATE KEY-----"

Setup = Callable[..., io.StringIO]


@pytest.fixture
def setup_logging() -> Iterator[Setup]:
    """configure_logging into a StringIO; the root logger is put back afterwards."""
    root = logging.getLogger()
    saved_level = root.level
    noisy = {name: logging.getLogger(name).level for name in ("httpx", "grpc", "redis")}
    handlers: list[logging.Handler] = []

    def setup(fmt: Literal["text", "json"] = "text", level: str = "info") -> io.StringIO:
        stream = io.StringIO()
        handlers.append(configure_logging(level, fmt, stream=stream))
        return stream

    yield setup
    for handler in handlers:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(saved_level)
    for name, level in noisy.items():
        logging.getLogger(name).setLevel(level)


TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (?P<level>[A-Z]+) (?P<logger>\S+) (?P<rest>.*)$"
)


def test_text_decision_has_a_stable_layout(setup_logging: Setup) -> None:
    stream = setup_logging("text")
    log = outcomes.log
    # Keyword order at the call site does not change the line.
    decision(log, "stored", size=1366, reason=None, id="m1", peer=PEER, attempts=0)
    decision(log, "stored", attempts=0, peer=PEER, id="m1", size=1366)
    first, second = stream.getvalue().splitlines()
    match = TEXT_LINE.match(first)
    assert match is not None, first
    assert match["level"] == "INFO"
    assert match["logger"] == "lndmailbox.daemon.outcomes"
    assert match["rest"] == f"event=stored peer={PEER.hex()} id=m1 size=1366 attempts=0"
    assert TEXT_LINE.match(second) is not None
    assert first.split(" ", 1)[1] == second.split(" ", 1)[1]


def test_text_values_that_need_it_are_quoted_and_stay_on_one_line(setup_logging: Setup) -> None:
    stream = setup_logging("text")
    log = outcomes.log
    decision(log, "dropped", reason="no next hop", detail='a "b"\nc=d', ok=True, empty="")
    (line,) = stream.getvalue().splitlines()
    rest = line.split(" ", 3)[3]
    assert rest == r'event=dropped reason="no next hop" detail="a \"b\"\nc=d" empty="" ok=true'


def test_text_plain_records_carry_msg(setup_logging: Setup) -> None:
    stream = setup_logging("text")
    logging.getLogger("lndmailbox.lnd.client").warning("stream broke after %d s", 3)
    (line,) = stream.getvalue().splitlines()
    match = TEXT_LINE.match(line)
    assert match is not None
    assert match["level"] == "WARNING"
    assert match["rest"] == 'msg="stream broke after 3 s"'


def test_json_decision_is_one_object_per_line(setup_logging: Setup) -> None:
    stream = setup_logging("json")
    log = outcomes.log
    decision(log, "delivered", id="m2", peer=PEER, size=100, delay=1.5, reason=None)
    decision(log, "expired", level=logging.WARNING, peer=PEER, id="m3")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(first) == ["ts", "level", "logger", "event", "peer", "id", "size", "delay"]
    assert first["level"] == "info"
    assert first["logger"] == "lndmailbox.daemon.outcomes"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert first["event"] == "delivered"
    assert first["peer"] == PEER.hex()
    assert first["size"] == 100
    assert first["delay"] == 1.5
    assert second["level"] == "warning"
    assert second["event"] == "expired"


def test_json_plain_record_and_exception(setup_logging: Setup) -> None:
    stream = setup_logging("json")
    log = outcomes.log
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("delivery loop failed")
    (line,) = stream.getvalue().splitlines()
    document = json.loads(line)
    assert document["level"] == "error"
    assert document["msg"] == "delivery loop failed"
    assert "RuntimeError: boom" in document["exc"]


def test_level_filters_and_chatty_libraries_are_held_back(setup_logging: Setup) -> None:
    stream = setup_logging("text", level="INFO")
    decision(outcomes.log, "peeled", level=logging.DEBUG, id="x")
    logging.getLogger("httpx").info("HTTP Request: POST http://example/ 200")
    logging.getLogger("httpx").warning("something httpx worries about")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert "something httpx worries about" in lines[0]

    stream = setup_logging("text", level="debug")
    decision(outcomes.log, "peeled", level=logging.DEBUG, id="x")
    logging.getLogger("httpx").debug("detail")
    assert len(stream.getvalue().splitlines()) == 2


def test_reconfiguring_replaces_the_handler(setup_logging: Setup) -> None:
    first = setup_logging("text")
    second = setup_logging("json")
    logging.getLogger("lndmailbox").info("hello")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["msg"] == "hello"


def test_bad_settings_and_reserved_names() -> None:
    with pytest.raises(ConfigError, match="log level"):
        configure_logging("verbose", "text")
    with pytest.raises(ConfigError, match="log format"):
        configure_logging("info", "xml")
    with pytest.raises(ValueError, match="reserved"):
        decision(logging.getLogger("lndmailbox"), "stored", msg="x")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_fields_are_redacted(setup_logging: Setup, fmt: Literal["text", "json"]) -> None:
    stream = setup_logging(fmt)
    decision(
        logging.getLogger("lndmailbox.lnd.client"),
        "connected",
        macaroon=MACAROON,
        admin_macaroon_hex=MACAROON.hex(),
        notify_secret=b"hunter2-hunter2",
        tls_key=PEM_KEY,
        session_key=b"\x11" * 32,
        key=b"\x22" * 32,
        settings={"rpcserver": "localhost:10009", "password": "pw"},
        path_key=b"\x03" + b"\x44" * 32,
        peer=PEER,
    )
    output = stream.getvalue()
    assert len(output.splitlines()) == 1
    for secret in (MACAROON.hex(), "hunter2", "secretstuff", "11" * 32, "22" * 32, '"pw"'):
        assert secret not in output
    assert REDACTED in output
    # Public material stays readable.
    assert ("03" + "44" * 32) in output
    assert PEER.hex() in output
    assert "localhost:10009" in output


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_scrubbed_from_any_record(
    setup_logging: Setup, fmt: Literal["text", "json"]
) -> None:
    """Even a careless message or a library's exception text loses macaroons and PEM keys."""
    stream = setup_logging(fmt)
    other = logging.getLogger("grpc._channel")
    other.warning("metadata macaroon=%s", MACAROON.hex())
    other.warning("lndconnect://host:10009?macaroon=AgEDbG5kAvgBAwoQ_abc-def&cert=x")
    try:
        raise ValueError(f"bad key file:\n{PEM_KEY}")
    except ValueError:
        logging.getLogger("lndmailbox.config").exception("cannot read settings")
    output = stream.getvalue()
    assert MACAROON.hex() not in output
    assert "AgEDbG5k" not in output
    assert "secretstuff" not in output
    assert "BEGIN EC PRIVATE KEY" not in output
    assert output.count(REDACTED) == 3
    assert "cannot read settings" in output


def test_secret_name_rules() -> None:
    for name in ("macaroon", "macaroon_hex", "notify_secret", "tls_key", "key", "seed", "token"):
        assert is_secret_name(name), name
    for name in ("peer", "path_key", "pubkey", "id", "reason", "size", "node", "ephemeral_key"):
        assert not is_secret_name(name), name
    assert scrub_text("nothing to hide 0201") == "nothing to hide 0201"
    assert scrub_text("redis://:pw@db:6379/0 up") == f"redis://{REDACTED}@db:6379/0 up"
    assert scrub_text("http://example.com/a@b") == "http://example.com/a@b"
    # A raw "@" in a password: hidden up to the authority's last one.
    assert (
        scrub_text("redis+cluster://mailbox:p@ssw0rd@h:7000 up")
        == f"redis+cluster://{REDACTED}@h:7000 up"
    )


def test_every_daemon_module_logs_under_its_own_name() -> None:
    """Operators filter on the ``logger`` field: it names the module that wrote the line."""
    import lndmailbox.daemon as daemon

    loggers: dict[str, int] = {}
    for info in pkgutil.iter_modules(daemon.__path__):
        module = importlib.import_module(f"{daemon.__name__}.{info.name}")
        found = [v for v in vars(module).values() if isinstance(v, logging.Logger)]
        for logger in found:
            assert logger.name == module.__name__, (module.__name__, logger.name)
        loggers[module.__name__] = len(found)
    assert loggers["lndmailbox.daemon.outcomes"] == 1
    assert loggers["lndmailbox.daemon.deliverer"] == 1
