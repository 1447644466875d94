"""Redis plumbing for the store's parts: the client, the error mapping, the reply readers.

Redis connection and timeout failures become :class:`StoreUnavailableError` (as do the
refusals that pass: out of memory, a failover, a busy script); anything else Redis refuses
becomes :class:`StoreError`, and a reply that does not parse :class:`RecordError`, always
with the original exception as ``__cause__``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from lndmailbox.errors import ConfigError, RecordError, StoreError, StoreUnavailableError

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")

_PASSING_REFUSALS = ("OOM", "MASTERDOWN", "TRYAGAIN", "BUSY", "LOADING", "CLUSTERDOWN")


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
        except rexc.RedisError as e:
            if isinstance(e, rexc.OutOfMemoryError) or str(e).startswith(_PASSING_REFUSALS):
                # Redis will take the command again once memory, a failover or a busy
                # script has passed: the same as unreachable for the caller.
                raise StoreUnavailableError(f"Redis cannot take {fn.__name__} now: {e}") from e
            raise StoreError(f"Redis refused {fn.__name__}: {e}") from e
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


def connect(url: str, *, max_connections: int, **redis_kwargs: Any) -> aioredis.Redis:
    """A client on its own blocking connection pool (see :meth:`Store.from_url`)."""
    redis_kwargs.setdefault("socket_connect_timeout", 5.0)
    redis_kwargs.setdefault("socket_timeout", 30.0)
    # After a Redis restart every pooled connection is stale: a command that meets one
    # reconnects and is sent again, rather than failing once per pooled connection. A
    # timeout is not retried here: a hung Redis would cost four socket timeouts a call.
    redis_kwargs.setdefault(
        "retry",
        Retry(
            ExponentialWithJitterBackoff(base=0.05, cap=0.5),
            retries=3,
            supported_errors=(rexc.ConnectionError,),
        ),
    )
    redis_kwargs.setdefault("retry_on_error", [rexc.ConnectionError])
    pool_timeout = redis_kwargs.pop("pool_timeout", 20.0)
    try:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            decode_responses=False,
            **redis_kwargs,
        )
    except ValueError as e:
        raise ConfigError(f"bad Redis URL: {e}") from e
    return aioredis.Redis.from_pool(pool)


def check_binary(redis: aioredis.Redis) -> None:
    """:class:`ConfigError` for a client that decodes replies: records are binary."""
    if redis.connection_pool.connection_kwargs.get("decode_responses"):
        raise ConfigError("the store needs a Redis client with decode_responses=False")


def socket_timeout(redis: aioredis.Redis) -> float | None:
    """The client's socket timeout in seconds (None: it waits for ever)."""
    value = redis.connection_pool.connection_kwargs.get("socket_timeout")
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
