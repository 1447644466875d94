from __future__ import annotations

from pathlib import Path

import pytest
import redis

from lndmailbox.errors import ConfigError, ServerStartError, StoreError
from lndmailbox.store import RedisServer


def test_fixture_server_answers(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    assert client.ping()
    client.close()


def test_persistent_server_keeps_data_across_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, persist=True)
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        client.rpush("k", b"v1", b"v2")
        client.close()
    finally:
        server.stop()
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.lrange("k", 0, -1) == [b"v1", b"v2"]
        client.close()
    finally:
        server.stop()


def test_a_server_that_exits_at_start_is_a_start_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, binary=Path("/bin/false"))
    with pytest.raises(ServerStartError, match="exited with 1"):
        server.start()
    assert not server.running


def test_a_missing_binary_is_a_start_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, binary=tmp_path / "no-such-server")
    with pytest.raises(ServerStartError, match="cannot start") as info:
        server.start()
    assert isinstance(info.value.__cause__, OSError)


def test_a_start_error_is_not_a_settings_error() -> None:
    assert issubclass(ServerStartError, StoreError)
    assert not issubclass(ServerStartError, ConfigError)
