"""A tiny real HTTP/1.1 server for webhook tests (asyncio streams, HTTP written by hand),
plain or, given a :class:`~tests.local_ca.LocalCa`, HTTPS with a certificate from it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field

from tests.local_ca import LocalCa

WAIT = 5.0  # seconds a test waits for something that should happen in milliseconds


class Headers(Mapping[str, str]):
    """A request's headers, looked up by any case (HTTP names are case-insensitive); a name
    sent twice holds both values joined by ", ", as RFC 9110 lets a server combine them."""

    def __init__(self, pairs: list[tuple[str, str]] | None = None) -> None:
        self._values: dict[str, str] = {}
        for name, value in pairs or []:
            key = name.lower()
            self._values[key] = f"{self._values[key]}, {value}" if key in self._values else value

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Headers({self._values!r})"


@dataclass
class Request:
    method: str
    path: str
    """The request target as sent: the path and its query, ``/hooks/x?token=y``."""
    headers: Headers
    body: bytes
    """The body's bytes as they arrived (a chunked body put back together)."""


@dataclass
class Endpoint:
    """A tiny HTTP/1.1 server: records each request and answers with the next status.

    ``statuses`` are used in order, then 200; a 3xx answer carries ``Location: location``
    (a redirect). ``hang`` holds every request without an answer until the test ends.
    ``tls``: serve HTTPS with a certificate the CA issues for ``localhost`` and
    ``127.0.0.1``; :attr:`url` then names ``localhost``. ``path`` is the path (and query)
    :attr:`url` ends in; any path is answered.
    """

    statuses: list[int] = field(default_factory=list)
    hang: bool = False
    location: str | None = None
    answer_body: bytes = b"ok"
    tls: LocalCa | None = None
    path: str = "/hooks/mailbox"
    requests: list[Request] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return self.url_for(self.path)

    def url_for(self, path: str) -> str:
        """This endpoint's URL with another ``path`` (and query)."""
        if self.tls is not None:
            return f"https://localhost:{self.port}{path}"
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        context = None if self.tls is None else self.tls.issue(("localhost", "127.0.0.1"))
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=context)

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
                pairs: list[tuple[str, str]] = []
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, value = line.decode("latin-1").split(":", 1)
                    pairs.append((name.strip(), value.strip()))
                headers = Headers(pairs)
                body = await _read_body(reader, headers)
                async with self.arrived:
                    self.requests.append(Request(method, path, headers, body))
                    self.arrived.notify_all()
                if self.hang:
                    await self.release.wait()
                    return
                writer.write(self._answer())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self) -> bytes:
        status = self.statuses.pop(0) if self.statuses else 200
        lines = [f"HTTP/1.1 {status} Whatever", f"Content-Length: {len(self.answer_body)}"]
        if 300 <= status < 400 and self.location is not None:
            lines.append(f"Location: {self.location}")
        return "\r\n".join([*lines, "", ""]).encode("latin-1") + self.answer_body


async def _read_body(reader: asyncio.StreamReader, headers: Headers) -> bytes:
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        return await reader.readexactly(int(headers.get("content-length", "0")))
    body = bytearray()
    while size := int((await reader.readline()).split(b";", 1)[0], 16):
        body += await reader.readexactly(size)
        await reader.readexactly(2)  # the chunk's CRLF
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
        pass  # trailers
    return bytes(body)


MakeEndpoint = Callable[..., Awaitable[Endpoint]]


async def endpoints() -> AsyncIterator[MakeEndpoint]:
    started: list[Endpoint] = []

    async def make(**kwargs: object) -> Endpoint:
        ep = Endpoint(**kwargs)  # type: ignore[arg-type]
        await ep.start()
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
