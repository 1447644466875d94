from __future__ import annotations

from pathlib import Path

import redis

from lndmailbox.redis_server import RedisServer


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
