"""A tiny real HTTP/1.1 server for webhook tests (asyncio streams, HTTP written by hand)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

WAIT = 5.0  # seconds a test waits for something that should happen in milliseconds


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Endpoint:
    """A tiny HTTP/1.1 server: records each request and answers with the next status.

    ``statuses`` are used in order, then 200. ``hang`` holds every request without an answer
    until the test ends.
    """

    statuses: list[int] = field(default_factory=list)
    hang: bool = False
    requests: list[Request] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/hooks/mailbox"

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(WAIT), self.arrived:
            await self.arrived.wait_for(lambda: len(self.requests) >= count)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode("ascii").split(" ", 2)
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, value = line.decode("latin-1").split(":", 1)
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                async with self.arrived:
                    self.requests.append(Request(method, path, headers, body))
                    self.arrived.notify_all()
                if self.hang:
                    await self.release.wait()
                    return
                status = self.statuses.pop(0) if self.statuses else 200
                writer.write(f"HTTP/1.1 {status} Whatever\r\nContent-Length: 2\r\n\r\nok".encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


MakeEndpoint = Callable[..., Awaitable[Endpoint]]


async def endpoints() -> AsyncIterator[MakeEndpoint]:
    started: list[Endpoint] = []

    async def make(**kwargs: object) -> Endpoint:
        ep = Endpoint(**kwargs)  # type: ignore[arg-type]
        ep.server = await asyncio.start_server(ep.handle, "127.0.0.1", 0)
        started.append(ep)
        return ep

    yield make
    for ep in started:
        ep.release.set()
        assert ep.server is not None
        ep.server.close()
        for writer in ep.writers:
            writer.close()
        await ep.server.wait_closed()
    await asyncio.sleep(0)  # let the handlers run their finally blocks
