"""Settings: one frozen object built from flags, environment and an optional TOML file.

Every option is declared once, in ``OPTIONS``; flags, ``LNDMAILBOX_<NAME>`` environment
variables and config file keys are derived from it, so the daemon and ``mailboxctl`` read
the same names. Precedence: flag, then environment, then file, then the built-in default.
lnd's connection options keep lncli's names and defaults (``--rpcserver``, ``--lnddir``,
``--network``, ``--tlscertpath``, ``--macaroonpath``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lndmailbox.errors import ConfigError

ENV_PREFIX = "LNDMAILBOX_"
DEFAULT_DATADIR = Path("~/.lndmailbox")
NETWORKS = ("mainnet", "testnet", "testnet4", "signet", "simnet", "regtest")
TRANSPORTS = ("auto", "custom", "native")
LOG_FORMATS = ("text", "json")
MIN_IN_FLIGHT_BYTES = 64 * 1024
"""lnd hands over messages of up to 65,535 bytes: the in-flight cap must hold one."""
REDIS_SOCKET_TIMEOUT = 30.0
"""Seconds a Redis reply may take before the connection is taken for lost."""
CONFIRM_AFTER = 95.0
"""Seconds a peer must stay connected after lnd accepted a message for it before the
message counts as confirmed (``--confirm-after``), unless the peer speaks first. lnd
pings each peer every minute and disconnects it when no pong comes within 30 s
(peer/brontide.go: pingInterval, pingTimeout; no jitter; a write that times out is retried,
not a disconnect), and a peer that connects anew replaces its old connection at once (a
PEER_OFFLINE, then a PEER_ONLINE): so about 90 s is the longest a silently broken clearnet
connection passes for connected. Measured (``make itest-long``, itest/test_frozen_peer.py:
an LDK peer frozen with SIGSTOP as it connects, a whole interval before lnd's first ping,
the slowest moment): PEER_OFFLINE 90.1 s after the freeze on lnd 0.20.2 and 0.21.3. So the
default is 95 s: the 90.1 s measured, and 4.9 s for the event to reach the daemon on a
loaded machine; a window of exactly 90 s would be 0.1 s short in the slowest case. lnd triples both timeouts for
peers it takes for Tor ones, and those include every peer whose address contains
"127.0.0.1" (an lnd behind a proxy on its own host): measured 270.1 s. A phone's visit is
shorter; what a wallet answers (a ``release_held_htlc`` to a ``held_htlc_available``, an
invoice to an ``invoice_request``) confirms at once, and mail that gets no answer is sent
again on the next wake, at most ``MAX_REDELIVERIES`` times (daemon/confirmations.py)."""
MAX_REDELIVERIES = 3
"""Times one message goes back to the queue unconfirmed before it is given up
(``--max-redeliveries``): sent at most 1 + 3 times."""
_MOST_REDELIVERIES = 255
"""The record holds the count in one byte."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
    None: 1,
}


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"`` or ``"250ms"``."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 15m, 24h, 7d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(text: str) -> int:
    """Bytes from ``"1366"``, ``"256KiB"``, ``"64MiB"`` (or KB/MB/GB, powers of 1000)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 256KiB, 64MiB)")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _SIZE_UNITS[unit]


def duration_text(seconds: float) -> str:
    """A duration as it is typed in flags, read back exactly by :func:`parse_duration`:
    ``"24h"``, ``"5m"``, ``"5s"``, ``"250ms"``, else plain seconds."""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1), ("ms", 0.001)):
        count = int(seconds / size)
        if count >= 1 and count * size == seconds:
            return f"{count}{unit}"
    return f"{seconds!r}s"


def size_text(count: int) -> str:
    """A size as it is typed in flags: ``"256MiB"``, ``"256KiB"``, ``"1366"``."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= size and count % size == 0:
            return f"{count // size}{unit}"
    return str(count)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not host:port: {text!r} (example: 127.0.0.1:9185)")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_wait_replicas(text: str) -> int | None:
    """``auto`` (None: as many replicas as the primary has), or a count (0: no wait)."""
    lowered = text.strip().lower()
    if lowered == "auto":
        return None
    if lowered == "off":
        return 0
    if not lowered.isdigit():
        raise ValueError(f"not a replica count: {text!r} (auto, off, 0, 1, 2...)")
    return int(lowered)


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


@dataclass(frozen=True)
class Option:
    """One setting: its flag, environment variable and file key all come from ``name``."""

    name: str
    parse: Callable[[str], Any]
    help: str
    daemon_only: bool = False
    is_flag: bool = False

    @property
    def default(self) -> Any:
        return _SETTINGS_FIELDS[self.name].default

    @property
    def shown_default(self) -> str | None:
        """The default as it would be typed on the command line (for --help)."""
        value = self.default
        if self.is_flag:
            return "off" if not value else "on"
        if self.parse is parse_wait_replicas:
            return "auto" if value is None else str(value)
        if value is None:
            return None
        if self.parse is parse_duration:
            return duration_text(float(value))
        if self.parse is parse_size:
            return size_text(int(value))
        return str(value)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _path(text: str) -> Path:
    return Path(text).expanduser()


OPTIONS: tuple[Option, ...] = (
    # lnd, with lncli's names and defaults
    Option("rpcserver", str, "lnd's gRPC host:port"),
    Option("lnddir", _path, "lnd's directory (for default cert and macaroon)"),
    Option("network", _choice(NETWORKS), "the network lnd runs on"),
    Option("tlscertpath", _path, "lnd's TLS certificate (default <lnddir>/tls.cert)"),
    Option(
        "macaroonpath",
        _path,
        "macaroon file (default <lnddir>/data/chain/bitcoin/<network>/admin.macaroon)",
    ),
    Option("tlscert", str, "lnd's TLS certificate given inline, PEM"),
    Option("macaroon", str, "the macaroon given inline, hex"),
    Option("lndconnect", str, "an lndconnect:// URI (host, certificate and macaroon)"),
    # Redis and local state
    Option(
        "redis_url",
        str,
        "redis://, rediss:// (TLS) or unix:// URL of one server, redis+cluster:// or "
        "redis+sentinel:// (rediss+...: TLS) of a Cluster or a Sentinel group; "
        "none: an embedded server with its data in --datadir",
    ),
    Option("datadir", _path, "the mailbox's own directory"),
    Option(
        "redis_wait_replicas",
        parse_wait_replicas,
        "replicas that must hold a journal write, a stored message or a removal after "
        "delivery before the daemon goes on (Redis WAIT): auto (as many as the primary has), "
        "off, or a count",
        daemon_only=True,
    ),
    Option(
        "redis_wait_timeout",
        parse_duration,
        "how long such a write waits for its replicas; past it the write stands, counted "
        "as replica_wait_short",
        daemon_only=True,
    ),
    Option(
        "redis_wait_aof",
        parse_bool,
        "wait with WAITAOF instead: the primary's and the replicas' append-only files must "
        "have synced the write (appendonly yes on each)",
        daemon_only=True,
        is_flag=True,
    ),
    # the daemon
    Option(
        "transport",
        _choice(TRANSPORTS),
        "custom (lnd <= 0.20, type 513), native (lnd >= 0.21), or auto from lnd's version",
        daemon_only=True,
    ),
    Option("ttl", parse_duration, "how long a message is kept (e.g. 24h)", daemon_only=True),
    Option("max_messages_per_peer", int, "messages kept per offline peer", daemon_only=True),
    Option("max_bytes_per_peer", parse_size, "bytes kept per offline peer", daemon_only=True),
    Option("max_bytes_total", parse_size, "bytes kept for the whole node", daemon_only=True),
    Option(
        "allow_channel_peers",
        parse_bool,
        "also keep mail for every peer that has a channel with the node",
        daemon_only=True,
        is_flag=True,
    ),
    Option(
        "race_window",
        parse_duration,
        "native transport: a message is left to lnd only if its next hop has been online "
        "this long before lnd may have tried to forward it (else it is kept and sent: a "
        "duplicate if lnd's try worked), and what was left is kept in memory this long in "
        "case its next hop turns out to have gone offline",
        daemon_only=True,
    ),
    Option(
        "confirm_after",
        parse_duration,
        "how long a peer must stay connected after lnd accepted a message for it before the "
        "message is confirmed and deleted (a disconnect before that delivers it again)",
        daemon_only=True,
    ),
    Option(
        "max_redeliveries",
        int,
        "times a message goes back to the queue unconfirmed before it is given up "
        "(removed, counted as unconfirmed)",
        daemon_only=True,
    ),
    Option("sweep_interval", parse_duration, "how often expired mail is swept", daemon_only=True),
    Option(
        "buffer_messages",
        int,
        "messages held in memory while Redis is unreachable",
        daemon_only=True,
    ),
    Option(
        "max_in_flight_bytes",
        parse_size,
        "bytes of messages read from lnd and not yet decided (journaled in Redis, or "
        "waiting for the decider) past which new ones are turned away",
        daemon_only=True,
    ),
    Option("metrics_addr", str, "serve Prometheus metrics on host:port", daemon_only=True),
    Option("notify_url", str, "POST stored/delivered notifications here", daemon_only=True),
    Option("notify_secret", str, "HMAC-SHA256 key that signs notifications", daemon_only=True),
    Option("notify_timeout", parse_duration, "deadline of one notification POST", daemon_only=True),
    Option(
        "notify_give_up",
        parse_duration,
        "how long a notification is retried before it is counted as failed",
        daemon_only=True,
    ),
    # LSPS5: the clients' own wake-up webhooks
    Option(
        "lsps5",
        parse_bool,
        "serve LSPS0 and LSPS5 (bLIP-55): clients register webhooks, and the mailbox POSTs "
        "them a notification signed by the node key when mail is stored for them (the "
        "macaroon needs message:write)",
        daemon_only=True,
        is_flag=True,
    ),
    Option("lsps5_max_webhooks", int, "webhooks one client may register", daemon_only=True),
    Option(
        "lsps5_cooldown",
        parse_duration,
        "least time between two mail notifications to one client (a connect or disconnect ends it)",
        daemon_only=True,
    ),
    Option(
        "lsps5_retention",
        parse_duration,
        "how long a client without a channel that sent no request keeps its webhooks (at least 7d)",
        daemon_only=True,
    ),
    Option("lsps5_timeout", parse_duration, "deadline of one notification POST", daemon_only=True),
    Option(
        "lsps5_give_up",
        parse_duration,
        "how long a notification is retried before it is counted as failed",
        daemon_only=True,
    ),
    Option(
        "lsps5_ca_file",
        _path,
        "PEM file of the CAs webhooks' TLS certificates are checked against (default: the "
        "system's trust store)",
        daemon_only=True,
    ),
    Option(
        "lsps5_allow_private_webhooks",
        parse_bool,
        "let webhooks reach loopback, private and link-local addresses (tests, private "
        "deployments)",
        daemon_only=True,
        is_flag=True,
    ),
    Option(
        "lsps_max_request_bytes",
        parse_size,
        "largest LSPS0 request read; a larger one is answered as invalid",
        daemon_only=True,
    ),
    Option(
        "lsps_requests_per_minute",
        int,
        "LSPS0 requests one peer may send a minute (as many in a burst); more are dropped",
        daemon_only=True,
    ),
    Option("log_level", _choice(("debug", "info", "warning", "error")), "log level"),
    Option("log_format", _choice(LOG_FORMATS), "text (key=value) or json"),
)

_OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """Everything the daemon and mailboxctl are told; see ``OPTIONS`` for meanings."""

    rpcserver: str = "localhost:10009"
    lnddir: Path = Path("~/.lnd")
    network: str = "mainnet"
    tlscertpath: Path | None = None
    macaroonpath: Path | None = None
    tlscert: str | None = None
    macaroon: str | None = None
    lndconnect: str | None = None
    redis_url: str | None = None
    datadir: Path = DEFAULT_DATADIR
    redis_wait_replicas: int | None = None
    redis_wait_timeout: float = 0.1
    redis_wait_aof: bool = False
    transport: str = "auto"
    ttl: float = 86400.0
    max_messages_per_peer: int = 64
    max_bytes_per_peer: int = 256 * 1024
    max_bytes_total: int = 256 * 1024**2
    allow_channel_peers: bool = False
    race_window: float = 5.0
    confirm_after: float = CONFIRM_AFTER
    max_redeliveries: int = MAX_REDELIVERIES
    sweep_interval: float = 60.0
    buffer_messages: int = 10_000
    max_in_flight_bytes: int = 16 * 1024**2
    metrics_addr: str | None = None
    notify_url: str | None = None
    notify_secret: str | None = None
    notify_timeout: float = 5.0
    notify_give_up: float = 300.0
    lsps5: bool = False
    lsps5_max_webhooks: int = 10
    lsps5_cooldown: float = 60.0
    lsps5_retention: float = 30 * 86400.0
    lsps5_timeout: float = 5.0
    lsps5_give_up: float = 60.0
    lsps5_ca_file: Path | None = None
    lsps5_allow_private_webhooks: bool = False
    lsps_max_request_bytes: int = 4096
    lsps_requests_per_minute: int = 60
    log_level: str = "info"
    log_format: str = "text"
    config: Path | None = None

    def __post_init__(self) -> None:
        for name in ("lnddir", "datadir"):
            object.__setattr__(self, name, getattr(self, name).expanduser())
        problems = []
        if self.ttl <= 0:
            problems.append("--ttl must be positive")
        for name in ("max_messages_per_peer", "max_bytes_per_peer", "max_bytes_total"):
            if getattr(self, name) <= 0:
                problems.append(f"--{name.replace('_', '-')} must be positive")
        if self.buffer_messages < 1:
            problems.append("--buffer-messages must be at least 1")
        if self.max_in_flight_bytes < MIN_IN_FLIGHT_BYTES:
            problems.append(
                f"--max-in-flight-bytes must be at least {size_text(MIN_IN_FLIGHT_BYTES)}, "
                "room for the largest onion message lnd can hand over"
            )
        for name in ("lsps5_max_webhooks", "lsps_requests_per_minute", "lsps5_timeout"):
            if getattr(self, name) <= 0:
                problems.append(f"--{name.replace('_', '-')} must be positive")
        if self.lsps5_cooldown < 0 or self.lsps5_give_up < 0:
            problems.append("--lsps5-cooldown and --lsps5-give-up must not be negative")
        if self.lsps5_retention < 7 * 86400:
            problems.append(
                "--lsps5-retention must be at least 7d: bLIP-55 keeps a client's webhooks "
                "that long after its last channel closed"
            )
        if self.lsps_max_request_bytes < 64:
            problems.append("--lsps-max-request-bytes must be at least 64")
        if self.lsps5_ca_file is not None and not self.lsps5_ca_file.is_file():
            problems.append(f"--lsps5-ca-file {self.lsps5_ca_file} is not a file")
        for name in ("sweep_interval", "notify_timeout", "notify_give_up"):
            if getattr(self, name) <= 0:
                problems.append(f"--{name.replace('_', '-')} must be positive")
        if self.redis_wait_timeout <= 0:
            problems.append("--redis-wait-timeout must be positive")
        elif self.redis_wait_timeout >= REDIS_SOCKET_TIMEOUT:
            problems.append(
                f"--redis-wait-timeout must be below the Redis socket timeout "
                f"({REDIS_SOCKET_TIMEOUT:g}s): a longer wait would be cut off as a lost "
                "connection"
            )
        if self.race_window < 0:
            problems.append("--race-window must not be negative")
        if self.confirm_after < 0:
            problems.append("--confirm-after must not be negative")
        if not 0 <= self.max_redeliveries <= _MOST_REDELIVERIES:
            problems.append(f"--max-redeliveries must be from 0 to {_MOST_REDELIVERIES}")
        if self.max_bytes_per_peer > self.max_bytes_total:
            problems.append("--max-bytes-per-peer cannot exceed --max-bytes-total")
        if self.notify_url and not self.notify_secret:
            problems.append("--notify-url needs --notify-secret to sign what it sends")
        if self.metrics_addr is not None:
            try:
                parse_host_port(self.metrics_addr)
            except ValueError as e:
                problems.append(f"--metrics-addr: {e}")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        return parse_host_port(self.metrics_addr) if self.metrics_addr else None

    def redacted(self) -> dict[str, object]:
        """The settings as a dict fit for a log line: secrets are replaced by their presence."""
        shown: dict[str, object] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("macaroon", "notify_secret", "lndconnect") and value:
                value = "<set>"
            elif field.name == "redis_url" and value:
                value = re.sub(r"//[^/]*@", "//<credentials>@", value)
                value = re.sub(r"(?<=password=)[^&]+", "<set>", value)
            shown[field.name] = str(value) if isinstance(value, Path) else value
        return shown


_SETTINGS_FIELDS = {field.name: field for field in dataclasses.fields(Settings)}


def add_arguments(parser: argparse.ArgumentParser, *, daemon: bool) -> None:
    """Adds the shared options (and the daemon's own when ``daemon``) to ``parser``.

    Every default is ``None`` so that :func:`settings_from_args` can tell a flag the
    user gave from one left to the environment, the file or the built-in default.
    """
    parser.add_argument(
        "--config",
        type=_path,
        default=None,
        help=f"TOML file with any of these settings (env {ENV_PREFIX}CONFIG; "
        f"default {DEFAULT_DATADIR}/lndmailbox.toml if it exists)",
    )
    for option in OPTIONS:
        if option.daemon_only and not daemon:
            continue
        shown = option.shown_default
        help_text = f"{option.help} (env {option.env}"
        help_text += f"; default {shown})" if shown is not None else ")"
        if option.is_flag:
            parser.add_argument(
                option.flag,
                dest=option.name,
                action="store_const",
                const="true",
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(option.flag, dest=option.name, default=None, help=help_text)


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Settings:
    """Builds the settings from parsed flags, the environment and the config file."""
    env = os.environ if environ is None else environ
    config_path: Path | None = args.config
    if config_path is None and env.get(ENV_PREFIX + "CONFIG"):
        config_path = _path(env[ENV_PREFIX + "CONFIG"])
    explicit_config = config_path is not None
    if config_path is None:
        config_path = DEFAULT_DATADIR.expanduser() / "lndmailbox.toml"
    file_values = _read_config_file(config_path, required=explicit_config)

    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw, source = _first_given(
            (getattr(args, option.name, None), option.flag),
            (env.get(option.env), option.env),
            (file_values.get(option.name), f"{config_path}: {option.name}"),
        )
        if raw is None:
            continue
        values[option.name] = _parse_value(option, raw, source)
    if explicit_config or file_values:
        values["config"] = config_path
    return Settings(**values)


def _first_given(*candidates: tuple[Any, str]) -> tuple[Any, str]:
    for value, source in candidates:
        if value is not None:
            return value, source
    return None, ""


def _parse_value(option: Option, raw: Any, source: str) -> Any:
    if isinstance(raw, bool) and option.parse is parse_bool:
        return raw
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise ConfigError(f"{source}: expected a string or number, got {type(raw).__name__}")
    try:
        return option.parse(raw)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from e


def _read_config_file(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as e:
        if required:
            raise ConfigError(f"config file {path} does not exist") from e
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {path}: {e}") from e
    normalised = {key.replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(normalised) - set(_OPTIONS_BY_NAME))
    if unknown:
        raise ConfigError(f"config file {path}: unknown settings {', '.join(unknown)}")
    return normalised
