"""The pooled replica client against raw servers: framing, reuse, and a closed idle connection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from turnout.gateway.upstream import UpstreamPool, UpstreamUnreachable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


def test_framings_and_connection_reuse() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while not reader.at_eof():
            try:
                body = await read_request(reader)
            except asyncio.IncompleteReadError:
                break
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
        pool = UpstreamPool(connect_timeout=5, read_timeout=5)
        try:
            r = await pool.post(address, "/x", b"plain", "rq")
            assert (r.status, await r.read()) == (404, b"no")
            r.release()
            r = await pool.post(address, "/x", b"chunked", "rq")
            assert r.content_type == "text/event-stream"
            chunks = []
            while chunk := await r.next_chunk():
                chunks.append(chunk)
            assert b"".join(chunks) == b"ab\nc\n"
            r.release()
            assert connections == 1  # kept alive and reused
            r = await pool.post(address, "/x", b"eof", "rq")
            assert await r.read() == b"{}"
            r.release()
        finally:
            pool.close()
            server.close()

    asyncio.run(run())


def test_idle_connection_closed_by_the_replica_is_unreachable_not_broken() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # Reads the next request, then closes without answering (a keep-alive expiry race).
        await reader.read(1)
        writer.close()

    async def run() -> None:
        server, address = await serve(handler)
        pool = UpstreamPool(connect_timeout=5, read_timeout=5)
        try:
            r = await pool.post(address, "/x", b"{}", "rq")
            assert await r.read() == b"ok"
            r.release()
            with pytest.raises(UpstreamUnreachable):
                await pool.post(address, "/x", b"{}", "rq")  # may go to another replica
        finally:
            pool.close()
            server.close()

    asyncio.run(run())
