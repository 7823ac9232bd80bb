"""The pooled replica session against raw servers: framing, reuse, and what counts as
unreachable (safe to retry elsewhere) versus a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from conftest import closed_port_address
from turnout.gateway.upstream import Upstream, UpstreamUnreachable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


def test_framings_headers_and_connection_reuse() -> None:
    connections = 0
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while not reader.at_eof():
            try:
                head, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            heads.append(head.lower())
            if body == b"chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
                writer.write(b"Transfer-Encoding: chunked\r\n\r\n3\r\nab\n\r\n")
                await writer.drain()
                writer.write(b"2\r\nc\n\r\n0\r\n\r\n")
            elif body == b"eof":  # no framing: the body ends when the connection does
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}")
                writer.close()
                return
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno")
            await writer.drain()
        writer.close()

    async def run() -> None:
        server, address = await serve(handler)
        upstream = Upstream(connect_timeout=5, read_timeout=5)
        try:
            r = await upstream.post(address, "/x", b"plain", "rq-1")
            assert (r.status, await r.read()) == (404, b"no")
            r.release()
            r = await upstream.post(address, "/x", b"chunked", "rq-2")
            assert r.headers["Content-Type"] == "text/event-stream"
            chunks = [chunk async for chunk in r.content.iter_any()]
            assert b"".join(chunks) == b"ab\nc\n"
            r.release()
            assert connections == 1  # kept alive and reused
            r = await upstream.post(address, "/x", b"eof", "rq-3")
            assert await r.read() == b"{}"
            r.release()
        finally:
            await upstream.close()
            server.close()
        assert heads[0].startswith(b"post /x http/1.1\r\n")
        for head in heads:
            assert b"content-type: application/json\r\n" in head
            # Nothing the replica does not need: no client identity, no compression asked for.
            assert b"user-agent" not in head and b"accept" not in head
        assert [h.split(b"x-request-id: ")[1].split(b"\r\n")[0] for h in heads] == [
            b"rq-1",
            b"rq-2",
            b"rq-3",
        ]

    asyncio.run(run())


def test_connection_closed_while_idle_before_the_response_is_unreachable() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # Reads the next request, then closes without answering (a keep-alive expiry race).
        await reader.read(1)
        writer.close()

    async def run() -> None:
        server, address = await serve(handler)
        upstream = Upstream(connect_timeout=5, read_timeout=5)
        try:
            r = await upstream.post(address, "/x", b"{}", "rq")
            assert await r.read() == b"ok"
            r.release()
            with pytest.raises(UpstreamUnreachable):
                await upstream.post(address, "/x", b"{}", "rq")  # may go to another replica
        finally:
            await upstream.close()
            server.close()

    asyncio.run(run())


def test_refused_is_unreachable_and_silence_is_a_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read(1)  # never answers; returns when the client gives up
        writer.close()

    async def run() -> None:
        server, address = await serve(silent)
        upstream = Upstream(connect_timeout=5, read_timeout=0.2)
        try:
            with pytest.raises(UpstreamUnreachable):
                await upstream.post(closed_port_address(), "/x", b"{}", "rq")
            with pytest.raises(TimeoutError):
                await upstream.post(address, "/x", b"{}", "rq")
        finally:
            await upstream.close()
            server.close()

    asyncio.run(run())


def test_close_cuts_an_answer_being_relayed() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n3\r\nab\n\r\n")
        await writer.drain()
        await reader.read(1)  # no more until the gateway hangs up
        writer.close()

    async def run() -> None:
        server, address = await serve(endless)
        upstream = Upstream(connect_timeout=5, read_timeout=60)
        try:
            r = await upstream.post(address, "/x", b"{}", "rq")
            chunks = r.content.iter_any()
            assert await anext(chunks) == b"ab\n"
            waiting = asyncio.ensure_future(anext(chunks))
            await upstream.close()  # shutdown after the drain timeout
            # The relay ends now, not when the 60 s read timeout would have elapsed.
            with pytest.raises(aiohttp.ClientConnectionError):
                await asyncio.wait_for(waiting, 5)
        finally:
            await upstream.close()
            server.close()

    asyncio.run(run())
