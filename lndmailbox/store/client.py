"""Redis plumbing for the store's parts: the client, the error mapping, the reply readers.

The client is one of two kinds (:data:`RedisClient`): a :class:`redis.asyncio.Redis` on
one server or on the primary a Sentinel group names, or a
:class:`redis.asyncio.cluster.RedisCluster`; :func:`connect` picks it from the URL
(store/urls.py has the forms). Both follow a failover on their own: the Cluster client
follows MOVED and ASK and reloads its slot map when a node fails, the Sentinel pool asks
the sentinels for the primary again when a connection fails or meets a demoted one.

Redis connection and timeout failures become :class:`StoreUnavailableError` (as do the
refusals that pass: out of memory, a failover in progress, a busy script); anything else
Redis refuses becomes :class:`StoreError`, and a reply that does not parse
:class:`RecordError`, always with the original exception as ``__cause__``.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeAlias, TypeVar, cast

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff

from lndmailbox.config import REDIS_SOCKET_TIMEOUT
from lndmailbox.errors import ConfigError, RecordError, StoreError, StoreUnavailableError
from lndmailbox.store.urls import RedisTarget, parse_redis_url

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")

# NOREPLICAS: a primary with min-replicas-to-write refuses writes while too few replicas
# are connected (one restarting or resyncing): it passes too.
_PASSING_REFUSALS = (
    "OOM",
    "MASTERDOWN",
    "TRYAGAIN",
    "BUSY",
    "LOADING",
    "CLUSTERDOWN",
    "NOREPLICAS",
)
# A Cluster in a failover: a shard without its primary, a slot map being rebuilt, a
# redirection loop that ran out of hops. Each passes once the replica is promoted.
_CLUSTER_IN_FAILOVER = (
    rexc.ClusterDownError,
    rexc.TryAgainError,
    rexc.ClusterError,
    rexc.SlotNotCoveredError,
)

_REDIS_PY = Path(rexc.__file__).parent


def _torn_connection(error: AttributeError) -> bool:
    """Whether ``error`` is redis-py's connection found closed under it: the Cluster
    client's node pool disconnects its free connections after a failover without taking
    them out of the pool, so another call may pick one up and have it closed mid-connect
    (``'NoneType' object has no attribute 'writelines'``). Raised in redis-py's own code."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).is_relative_to(_REDIS_PY)


RedisClient: TypeAlias = aioredis.Redis | RedisCluster
"""What every part of the store talks to: one server (or Sentinel's primary), or a Cluster."""


def redis_errors(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Turns redis-py's exceptions into the store's (always chained with ``from``)."""

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except (rexc.AuthenticationError, rexc.AuthorizationError) as e:
            raise StoreError(f"Redis refused the credentials: {e}") from e
        except (rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError, OSError) as e:
            raise StoreUnavailableError(f"Redis is unavailable: {e}") from e
        except _CLUSTER_IN_FAILOVER as e:
            raise StoreUnavailableError(
                f"the Redis Cluster cannot take {fn.__name__} now: {e}"
            ) from e
        except rexc.RedisClusterException as e:
            # The slot map could not be read from any node: why is the last node's error.
            cause = e.__cause__
            if isinstance(cause, rexc.AuthenticationError | rexc.AuthorizationError):
                raise StoreError(f"Redis refused the credentials: {cause}") from e
            if isinstance(cause, rexc.ConnectionError | rexc.TimeoutError | OSError):
                raise StoreUnavailableError(f"the Redis Cluster is unavailable: {e}") from e
            raise StoreError(f"the Redis Cluster refused {fn.__name__}: {e}") from e
        except rexc.RedisError as e:
            if isinstance(e, rexc.OutOfMemoryError) or str(e).startswith(_PASSING_REFUSALS):
                # Redis will take the command again once memory, a failover or a busy
                # script has passed: the same as unreachable for the caller.
                raise StoreUnavailableError(f"Redis cannot take {fn.__name__} now: {e}") from e
            raise StoreError(f"Redis refused {fn.__name__}: {e}") from e
        except AttributeError as e:
            if not _torn_connection(e):
                raise
            raise StoreUnavailableError(f"Redis is unavailable: a connection closed: {e}") from e
        except ValueError as e:
            # a reply that does not parse (a value written by hand, bytes that are not text)
            raise RecordError(f"unreadable reply to {fn.__name__}: {e}") from e

    return wrapper


def refused_for_memory(error: BaseException) -> bool:
    """Whether ``error`` (a :class:`StoreUnavailableError` from :func:`redis_errors`) is
    Redis refusing a write because it is over ``maxmemory``."""
    cause = error.__cause__
    return isinstance(cause, rexc.OutOfMemoryError) or (
        isinstance(cause, rexc.ResponseError) and str(cause).startswith("OOM")
    )


def connect(url: str, *, max_connections: int, **redis_kwargs: Any) -> RedisClient:
    """A client on connection pools of its own for the server, Cluster or Sentinel group
    ``url`` names (see :meth:`Store.from_url`); :class:`ConfigError` for a bad URL."""
    target = parse_redis_url(url)
    redis_kwargs.setdefault("socket_connect_timeout", 5.0)
    redis_kwargs.setdefault("socket_timeout", REDIS_SOCKET_TIMEOUT)
    # After a Redis restart every pooled connection is stale: a command that meets one
    # reconnects and is sent again, rather than failing once per pooled connection. A
    # timeout is not retried here: a hung Redis would cost four socket timeouts a call.
    redis_kwargs.setdefault("retry", _retry(rexc.ConnectionError))
    pool_timeout = redis_kwargs.pop("pool_timeout", 20.0)
    try:
        if target.kind == "cluster":
            return _cluster(target, max_connections, redis_kwargs)
        if target.kind == "sentinel":
            return _sentinel(target, max_connections, pool_timeout, redis_kwargs)
        redis_kwargs.setdefault("retry_on_error", [rexc.ConnectionError])
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            decode_responses=False,
            **redis_kwargs,
        )
    except (ValueError, rexc.RedisClusterException) as e:
        raise ConfigError(f"bad Redis URL: {e}") from e
    return aioredis.Redis.from_pool(pool)


def _retry(*errors: type[rexc.RedisError]) -> Retry:
    return Retry(
        ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3, supported_errors=errors
    )


def _credentials(target: RedisTarget) -> dict[str, Any]:
    found: dict[str, Any] = {"ssl": True, **target.tls_options} if target.tls else {}
    if target.username is not None:
        found["username"] = target.username
    if target.password is not None:
        found["password"] = target.password
    return found


class _Cluster(RedisCluster):
    """The cluster client, retrying a command (with the slot map read again in between)
    on a failed connection or a shard without its primary, but not on a timeout, for the
    reason in :func:`connect`."""

    ERRORS_ALLOW_RETRY = (  # type: ignore[assignment]  # a narrower tuple than the base one
        rexc.ConnectionError,
        rexc.ClusterDownError,
        rexc.SlotNotCoveredError,
    )


def _cluster(target: RedisTarget, max_connections: int, kwargs: dict[str, Any]) -> RedisCluster:
    # Only the number of retries is read from it: the errors are _Cluster's.
    kwargs["retry"] = _retry(rexc.ConnectionError, rexc.ClusterDownError)
    kwargs.pop("retry_on_error", None)
    return _Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
        max_connections=max_connections,
        decode_responses=False,
        **_credentials(target),
        **kwargs,
    )


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool that waits for a free connection, as the one-server pool does."""


class _SentinelClient(aioredis.Redis):
    """The primary's client; closing it closes its connections to the sentinels too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = cast(SentinelConnectionPool, self.connection_pool)
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


def _sentinel(
    target: RedisTarget, max_connections: int, pool_timeout: float, kwargs: dict[str, Any]
) -> aioredis.Redis:
    own: dict[str, Any] = {"ssl": True, **target.tls_options} if target.tls else {}
    if target.sentinel_username is not None:
        own["username"] = target.sentinel_username
    if target.sentinel_password is not None:
        own["password"] = target.sentinel_password
    for name in ("socket_timeout", "socket_connect_timeout"):
        own[name] = kwargs[name]
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=own)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(
        target.service or "",
        redis_class=_SentinelClient,
        connection_pool_class=_BlockingSentinelPool,
        db=target.db,
        max_connections=max_connections,
        timeout=pool_timeout,
        decode_responses=False,
        **_credentials(target),
        **kwargs,
    )
    return cast(aioredis.Redis, client)


def check_binary(redis: RedisClient) -> None:
    """:class:`ConfigError` for a client that decodes replies: records are binary."""
    if redis.get_connection_kwargs().get("decode_responses"):
        raise ConfigError("the store needs a Redis client with decode_responses=False")


def socket_timeout(redis: RedisClient) -> float | None:
    """The client's socket timeout in seconds (None: it waits for ever)."""
    value = redis.get_connection_kwargs().get("socket_timeout")
    return float(value) if value else None


def as_str(value: object) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError as e:
            raise StoreError(f"unexpected reply from Redis: {value!r}") from e
    if isinstance(value, str):
        return value
    raise StoreError(f"unexpected reply from Redis: {value!r}")


def as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    raise StoreError(f"unexpected reply from Redis: {value!r}")


def as_items(value: object) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    raise StoreError(f"unexpected reply from Redis: {value!r}")
