"""--redis-url: the forms for one server, a Cluster and a Sentinel group, and the refusals."""

from __future__ import annotations

import pytest
import redis.exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool

from lndmailbox.config import Settings
from lndmailbox.daemon import run
from lndmailbox.errors import ConfigError
from lndmailbox.logs import scrub_text
from lndmailbox.store.client import connect
from lndmailbox.store.urls import RedisTarget, parse_redis_url


def test_one_server_urls_are_left_to_redis_py() -> None:
    for url in ("redis://h:1/0", "rediss://u:p@h:1/2", "unix:///run/r.sock?db=0"):
        target = parse_redis_url(url)
        assert (target.kind, target.url) == ("server", url)
    assert parse_redis_url("rediss://h:1").tls


def test_cluster_url() -> None:
    target = parse_redis_url(
        "rediss+cluster://mail%3Abox:p%40ss@10.0.0.1:7000,[::1]:7001,redis-2:7002"
        "?ssl_ca_certs=/ca.pem&ssl_cert_reqs=optional"
    )
    assert target == RedisTarget(
        kind="cluster",
        url=target.url,
        tls=True,
        hosts=(("10.0.0.1", 7000), ("::1", 7001), ("redis-2", 7002)),
        username="mail:box",
        password="p@ss",
        tls_options={"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "optional"},
    )
    plain = parse_redis_url("redis+cluster://:secret@h:7000/0")
    assert (plain.tls, plain.username, plain.password, plain.hosts) == (
        False,
        None,
        "secret",
        (("h", 7000),),
    )


def test_sentinel_url() -> None:
    target = parse_redis_url(
        "redis+sentinel://app:pw@s1:26379,s2:26380/mymaster/3"
        "?sentinel_username=watch&sentinel_password=w%26pw"
    )
    assert (target.kind, target.hosts, target.service, target.db) == (
        "sentinel",
        (("s1", 26379), ("s2", 26380)),
        "mymaster",
        3,
    )
    assert (target.username, target.password) == ("app", "pw")
    assert (target.sentinel_username, target.sentinel_password) == ("watch", "w&pw")
    assert parse_redis_url("rediss+sentinel://s:1/m").db == 0


def test_a_misread_password_is_not_echoed() -> None:
    """A raw "/" in a password ends the authority early: the error must not repeat it."""
    with pytest.raises(ConfigError) as raised:
        parse_redis_url("redis+cluster://u:sec/ret@h:7000")
    assert "sec" not in str(raised.value)
    assert "percent-encode" in str(raised.value)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:1", "scheme must be one of"),
        ("h:6379", "scheme must be one of"),
        ("redis+cluster://h", "a host is not host:port"),
        ("redis+cluster://h:0", "a host is not host:port"),
        ("redis+cluster://h:1,,h:2", "a host is not host:port"),
        ("redis+cluster://[::1]7000", "a host is not host:port"),
        ("redis+cluster://h:1/2", "database 0 only"),
        ("redis+cluster://h:1?db=2", "unknown option 'db'"),
        ("redis+cluster://h:1?sentinel_password=x", "unknown option 'sentinel_password'"),
        ("redis+cluster://h:1?ssl_ca_certs=/ca.pem", "ssl_\\* options need rediss\\+cluster"),
        ("rediss+cluster://h:1?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
        ("redis+cluster://h:1#x", "fragment"),
        ("redis+sentinel://s:1", "ends in /<service>"),
        ("redis+sentinel://s:1/", "ends in /<service>"),
        ("redis+sentinel://s:1/m/x", "database 'x' is not a number"),
        ("redis+sentinel://s:1/m/0/extra", "ends in /<service>"),
    ],
)
def test_bad_urls_are_config_errors(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=f"bad Redis URL: .*{says}"):
        parse_redis_url(url)
    with pytest.raises(ConfigError):
        connect(url, max_connections=1)


async def test_each_kind_gets_its_client_with_tls_and_credentials() -> None:
    """The URL's credentials and TLS options reach the connections (no server needed:
    the clients connect on first use)."""
    cluster = connect(
        "rediss+cluster://u:p@127.0.0.1:7000?ssl_ca_certs=/ca.pem&ssl_cert_reqs=none",
        max_connections=3,
    )
    assert isinstance(cluster, RedisCluster)
    kwargs = cluster.get_connection_kwargs()
    assert (kwargs["username"], kwargs["password"], kwargs["max_connections"]) == ("u", "p", 3)
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_cert_reqs"]) == ("/ca.pem", "none")
    assert kwargs["decode_responses"] is False
    # a hung node costs one socket timeout, not four (the node lock's lease is 1 s)
    assert rexc.TimeoutError not in cluster.ERRORS_ALLOW_RETRY
    assert rexc.ConnectionError in cluster.ERRORS_ALLOW_RETRY
    await cluster.aclose()

    sentinel = connect(
        "rediss+sentinel://u:p@127.0.0.1:26379/m/2?sentinel_password=sp&ssl_certfile=/c.pem",
        max_connections=3,
        socket_timeout=4.0,
    )
    assert isinstance(sentinel, Redis)
    pool = sentinel.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert (pool.service_name, pool.max_connections) == ("m", 3)
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("u", "p", 2)
    assert kwargs["ssl_certfile"] == "/c.pem"
    assert issubclass(pool.connection_class, SSLConnection)
    (watcher,) = pool.sentinel_manager.sentinels
    own = watcher.connection_pool.connection_kwargs
    assert (own["password"], own["socket_timeout"], own["ssl_certfile"]) == ("sp", 4.0, "/c.pem")
    await sentinel.aclose()


def test_logs_and_settings_hide_every_password_of_a_url() -> None:
    url = "redis+sentinel://app:pw1@s1:1,s2:2/m?sentinel_username=w&sentinel_password=pw2"
    for shown in (scrub_text(url), str(Settings(redis_url=url).redacted()["redis_url"])):
        assert "pw1" not in shown
        assert "pw2" not in shown
        assert "s1:1,s2:2/m" in shown


async def test_the_daemon_refuses_a_bad_url_before_it_asks_lnd() -> None:
    settings = Settings(redis_url="redis+sentinel://127.0.0.1:1", rpcserver="127.0.0.1:1")
    with pytest.raises(ConfigError, match="ends in /<service>"):
        await run(settings)
