"""Raw gRPC to a real lnd with the project's generated stubs (lndmailbox/lnd/lnrpc).

The itest talks to lnd directly, not through lndmailbox.lnd, where it checks what lnd
itself answers (status codes, messages, stream contents): those are the facts the mailbox
and simnet rely on, so the check must not pass through the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc

from lndmailbox.lnd.lnrpc import lightning_pb2_grpc as lnrpc
from lndmailbox.lnd.lnrpc import signer_pb2_grpc as signrpc

T = TypeVar("T")


class _Macaroon(grpc.AuthMetadataPlugin):
    def __init__(self, macaroon: bytes) -> None:
        self._hex = macaroon.hex()

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback((("macaroon", self._hex),), None)


def channel(rpcserver: str, tls_cert: Path, macaroon: Path) -> grpc.aio.Channel:
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(tls_cert.read_bytes()),
        grpc.metadata_call_credentials(_Macaroon(macaroon.read_bytes())),
    )
    return grpc.aio.secure_channel(rpcserver, credentials)


class NodeRpc:
    """A Lightning and a Signer stub on one channel to one lnd (an async context manager)."""

    def __init__(self, rpcserver: str, tls_cert: Path, macaroon: Path) -> None:
        self.channel = channel(rpcserver, tls_cert, macaroon)
        self.lightning = lnrpc.LightningStub(self.channel)
        self.signer = signrpc.SignerStub(self.channel)

    async def close(self) -> None:
        await self.channel.close(grace=None)

    async def __aenter__(self) -> NodeRpc:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Collector(Generic[T]):
    """Reads a server stream in the background and keeps every item, for later assertions.

    lnd streams do not replay: open the collector before causing what it should see.
    """

    def __init__(self, call: grpc.aio.UnaryStreamCall[Any, T]) -> None:
        self.items: list[T] = []
        self.error: grpc.aio.AioRpcError | None = None
        self._call = call
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for item in self._call:
                async with self._changed:
                    self.items.append(item)
                    self._changed.notify_all()
        except grpc.aio.AioRpcError as e:
            if e.code() is not grpc.StatusCode.CANCELLED:
                self.error = e
        async with self._changed:
            self._changed.notify_all()

    @property
    def ended(self) -> bool:
        return self._task.done()

    async def wait_for(self, what: str, predicate: Callable[[T], bool], within: float = 30.0) -> T:
        """The first item (seen so far or arriving within ``within`` seconds) that matches."""

        def found() -> T | None:
            return next((item for item in self.items if predicate(item)), None)

        async def wait() -> T:
            async with self._changed:
                while (item := found()) is None:
                    if self._task.done():
                        raise AssertionError(f"stream ended before {what}: {self.error}")
                    await self._changed.wait()
                return item

        try:
            return await asyncio.wait_for(wait(), within)
        except TimeoutError:
            raise AssertionError(
                f"no {what} within {within}s; the stream carried {self.items!r}"
            ) from None

    async def wait_end(self, within: float = 30.0) -> grpc.aio.AioRpcError | None:
        """Waits for the stream to end (lnd stopping); returns the error it ended with."""
        await asyncio.wait_for(asyncio.shield(self._task), within)
        return self.error

    async def settle(self, seconds: float = 0.5) -> None:
        """Gives lnd a moment to register the subscription.

        grpc-go sends a stream's headers only with its first message, so a client cannot see
        when lnd has subscribed; a short pause before acting is the only way.
        """
        await asyncio.sleep(seconds)
        if self._task.done():
            raise AssertionError(f"the stream ended at once: {self.error}")

    async def close(self) -> None:
        self._call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@asynccontextmanager
async def collect(call: grpc.aio.UnaryStreamCall[Any, T]) -> AsyncIterator[Collector[T]]:
    collector = Collector(call)
    try:
        await collector.settle()
        yield collector
    finally:
        await collector.close()
