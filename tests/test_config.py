"""Settings from flags, environment and file; and the daemon's entry point on bad ones."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
from simnet import SimNode

from lndmailbox.config import (
    OPTIONS,
    Option,
    Settings,
    add_arguments,
    duration_text,
    parse_duration,
    parse_size,
    parse_wait_replicas,
    settings_from_args,
    size_text,
)
from lndmailbox.daemon import main
from lndmailbox.daemon.entry import lsps_options_for, wakeup_options_for
from lndmailbox.errors import ConfigError


def settings(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser, daemon=True)
    return settings_from_args(parser.parse_args(argv), env or {})


def test_defaults_are_lncli_and_the_documented_ones() -> None:
    s = settings([])
    assert s.rpcserver == "localhost:10009"
    assert s.lnddir == Path("~/.lnd").expanduser()
    assert s.network == "mainnet"
    assert s.ttl == 86400
    assert s.redis_url is None


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    config = tmp_path / "mailbox.toml"
    config.write_text('ttl = "1h"\nnetwork = "regtest"\nmax-messages-per-peer = 7\n')
    env = {"LNDMAILBOX_CONFIG": str(config), "LNDMAILBOX_TTL": "2h"}
    s = settings(["--ttl", "3h"], env)
    assert s.ttl == 3 * 3600
    assert s.network == "regtest"
    assert s.max_messages_per_peer == 7
    assert settings([], env).ttl == 2 * 3600
    assert settings([], {"LNDMAILBOX_CONFIG": str(config)}).ttl == 3600


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("24h", 86400), ("250ms", 0.25)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [("1366", 1366), ("256KiB", 262144), ("1MB", 10**6)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("text", "count"), [("auto", None), ("off", 0), ("0", 0), ("2", 2)])
def test_replica_counts(text: str, count: int | None) -> None:
    assert parse_wait_replicas(text) == count


def test_the_replica_wait_from_flags_and_environment() -> None:
    s = settings(["--redis-wait-replicas", "1", "--redis-wait-aof"], {})
    assert (s.redis_wait_replicas, s.redis_wait_aof) == (1, True)
    s = settings([], {"LNDMAILBOX_REDIS_WAIT_TIMEOUT": "250ms"})
    assert (s.redis_wait_replicas, s.redis_wait_timeout, s.redis_wait_aof) == (None, 0.25, False)


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (["--ttl", "forever"], {}, "--ttl"),
        (["--network", "moon"], {}, "--network"),
        ([], {"LNDMAILBOX_MAX_BYTES_TOTAL": "lots"}, "LNDMAILBOX_MAX_BYTES_TOTAL"),
        (["--notify-url", "http://127.0.0.1:9/hook"], {}, "--notify-secret"),
        (["--max-bytes-per-peer", "2MiB", "--max-bytes-total", "1MiB"], {}, "cannot exceed"),
        (["--redis-wait-replicas", "some"], {}, "--redis-wait-replicas"),
        (["--redis-wait-timeout", "0"], {}, "--redis-wait-timeout must be positive"),
        (["--redis-wait-timeout", "30s"], {}, r"below the Redis socket timeout \(30s\)"),
        (["--lsps5-retention", "6d"], {}, "--lsps5-retention must be at least 7d"),
        (["--lsps5-ca-file", "/nonexistent/ca.pem"], {}, "--lsps5-ca-file .* is not a file"),
        (["--lsps5-max-webhooks", "0"], {}, "--lsps5-max-webhooks must be positive"),
        (["--lsps-requests-per-minute", "0"], {}, "--lsps-requests-per-minute must be"),
        (["--lsps-max-request-bytes", "10"], {}, "--lsps-max-request-bytes must be at least 64"),
    ],
)
def test_bad_settings_say_which(argv: list[str], env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        settings(argv, env)


def test_unknown_file_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "mailbox.toml"
    config.write_text("ttll = 5\n")
    with pytest.raises(ConfigError, match="unknown settings ttll"):
        settings(["--config", str(config)])


def test_secrets_are_redacted_for_logs() -> None:
    s = Settings(
        macaroon="0201abcdef",
        notify_url="http://hook",
        notify_secret="s3cret",
        redis_url="redis://user:pw@host:6379/0",
    )
    shown = repr(s.redacted())
    for secret in ("0201abcdef", "s3cret", "user:pw"):
        assert secret not in shown
    raw_at = Settings(redis_url="redis+cluster://mailbox:p@ssw0rd@h:7000")
    assert "ssw0rd" not in repr(raw_at.redacted())


def test_every_option_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [o.flag for o in OPTIONS if f"`{o.flag}`" not in readme]
    assert missing == []


def test_daemon_exits_2_on_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--ttl", "forever"]) == 2
    assert "--ttl" in capsys.readouterr().err


def test_daemon_exits_3_when_the_embedded_redis_does_not_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a settings problem (2): a supervisor should tell the two apart."""
    cert, macaroon = SimNode().write_credentials(tmp_path / "lnd")
    # No unix socket can be bound at a path this long (the limit is about 107 bytes).
    datadir = tmp_path / ("d" * 120)
    argv = ["--rpcserver", "127.0.0.1:1", "--tlscertpath", str(cert)]
    argv += ["--macaroonpath", str(macaroon), "--datadir", str(datadir)]
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert main(argv) == 3
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
    assert "the embedded Redis server did not start" in caplog.text


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.shown_default], ids=lambda o: o.name)
def test_help_shows_each_default_as_it_would_be_typed(option: Option) -> None:
    """--help writes defaults the way the README's table does (24h, 256KiB, off); typed
    back in, each means the default."""
    shown = option.shown_default
    assert shown is not None
    if option.is_flag:
        assert shown == ("on" if option.default else "off")
    else:
        default = option.default
        expected = default.expanduser() if isinstance(default, Path) else default
        assert option.parse(shown) == expected


@pytest.mark.parametrize(
    "seconds", [86400.0, 300.0, 60.0, 5.0, 1.5, 0.25, 0.001, 0.0005, 1.0005, 0.3 * 3]
)
def test_a_duration_is_written_so_that_it_reads_back_exactly(seconds: float) -> None:
    assert parse_duration(duration_text(seconds)) == seconds


@pytest.mark.parametrize("count", [1, 1366, 1024, 262144, 268435456, 3 * 1024**3, 1025])
def test_a_size_is_written_so_that_it_reads_back_exactly(count: int) -> None:
    assert parse_size(size_text(count)) == count


def test_lsps5_settings_reach_the_daemons_options(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    argv = ["--lsps5", "--lsps5-cooldown", "2m", "--lsps5-ca-file", str(ca)]
    s = settings(argv, {"LNDMAILBOX_LSPS5_ALLOW_PRIVATE_WEBHOOKS": "true"})
    lsps = lsps_options_for(s)
    assert lsps is not None
    assert (lsps.max_webhooks, lsps.max_request_bytes, lsps.requests_per_minute) == (10, 4096, 60)
    assert lsps.retention == 30 * 86400
    wakeups = wakeup_options_for(s)
    assert (wakeups.cooldown, wakeups.timeout, wakeups.give_up_after) == (120, 5, 60)
    assert (wakeups.ca_file, wakeups.allow_private) == (ca, True)
    assert lsps_options_for(settings([], {})) is None
