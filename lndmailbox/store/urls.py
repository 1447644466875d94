"""What a ``--redis-url`` names: one server, a Redis Cluster, or a Sentinel group.

One server: ``redis://``, ``rediss://`` (TLS) and ``unix://``, read by redis-py itself.

A Cluster: ``redis+cluster://[user[:password]@]host:port[,host:port...][?options]``
(``rediss+cluster://`` for TLS). The hosts are where the client first asks for the slot
map; one reachable node is enough, more survive one being down at start.

A Sentinel group:
``redis+sentinel://[user[:password]@]host:port[,host:port...]/<service>[/db][?options]``
(``rediss+sentinel://`` for TLS, to the sentinels and the primary alike). The hosts are
sentinels; ``service`` is the name they monitor. The credentials in front are the
primary's; the sentinels' own are the options ``sentinel_username`` and
``sentinel_password``.

Options of both: ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``
(``none``, ``optional``, ``required``); anything else is refused. Credentials and options
are percent-decoded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from lndmailbox.errors import ConfigError

log = logging.getLogger(__name__)

Kind = Literal["server", "cluster", "sentinel"]

_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("server", False),
    "rediss": ("server", True),
    "unix": ("server", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_TLS_OPTIONS = frozenset({"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"})
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password"})
_CERT_REQS = frozenset({"none", "optional", "required"})


@dataclass(frozen=True)
class RedisTarget:
    """A parsed ``--redis-url`` (for ``server``, only ``url`` and ``tls`` are read)."""

    kind: Kind
    url: str
    tls: bool
    hosts: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    service: str | None = None
    db: int = 0
    tls_options: dict[str, str] = field(default_factory=dict)
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def parse_redis_url(url: str) -> RedisTarget:
    """The target ``url`` names; :class:`ConfigError` saying what is wrong with it."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        known = ", ".join(f"{s}://" for s in _SCHEMES)
        raise ConfigError(f"bad Redis URL: the scheme must be one of {known}")
    kind, tls = _SCHEMES[scheme.lower()]
    if kind == "server":
        return RedisTarget(kind, url, tls)
    parts = urlsplit(url)
    if parts.fragment:
        raise ConfigError("bad Redis URL: a fragment (#...) means nothing here")
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts = tuple(_host_port(h) for h in hostlist.split(","))
    options = _options(parts.query, sentinel=kind == "sentinel")
    if options.get("ssl_cert_reqs", "required") not in _CERT_REQS:
        raise ConfigError("bad Redis URL: ssl_cert_reqs must be none, optional or required")
    if not tls and options.keys() & _TLS_OPTIONS:
        raise ConfigError(f"bad Redis URL: ssl_* options need {scheme.replace('redis', 'rediss')}")
    tls_options = {k: v for k, v in options.items() if k in _TLS_OPTIONS}
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if kind == "cluster":
        if any(path) and path != ["0"]:
            raise ConfigError("bad Redis URL: a Cluster has database 0 only (no /db)")
        return RedisTarget(kind, url, tls, hosts, username, password, tls_options=tls_options)
    if not path or not path[0] or len(path) > 2:
        raise ConfigError("bad Redis URL: a Sentinel URL ends in /<service> or /<service>/<db>")
    db = _db(path[1]) if len(path) == 2 else 0
    return RedisTarget(
        kind,
        url,
        tls,
        hosts,
        username,
        password,
        service=path[0],
        db=db,
        tls_options=tls_options,
        sentinel_username=options.get("sentinel_username"),
        sentinel_password=options.get("sentinel_password"),
    )


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, close, rest = text[1:].partition("]")
        port = rest[1:] if close and rest.startswith(":") else ""
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        # Not echoed: a password holding a raw "/", "?" or "#" ends the authority early and
        # lands here.
        raise ConfigError(
            "bad Redis URL: a host is not host:port (percent-encode any /, ?, # or @ in a"
            " user name or password)"
        )
    return host, int(port)


def _options(query: str, *, sentinel: bool) -> dict[str, str]:
    allowed = _TLS_OPTIONS | (_SENTINEL_OPTIONS if sentinel else frozenset())
    options: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as e:
        raise ConfigError(f"bad Redis URL: unreadable options: {e}") from e
    for name, value in pairs:
        if name not in allowed:
            raise ConfigError(
                f"bad Redis URL: unknown option {name!r} (known: {', '.join(sorted(allowed))})"
            )
        options[name] = value
    return options


def _db(text: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"bad Redis URL: database {text!r} is not a number")
    return int(text)
