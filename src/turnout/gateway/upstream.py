"""The gateway's HTTP/1.1 client to replicas: pooled keep-alive connections parsed by httptools.

The proxy needs one thing from a client: POST these bytes, hand back status, content type and
the body as it arrives. aiohttp's ``ClientSession`` does that with cookies, tracing, header
multidicts, redirects and timeouts contexts around it, and was the largest share of the
gateway's CPU per request (``bench/gateway.py``). This client does only what the proxy uses,
on the same parser uvicorn uses for the client side.

Errors: :class:`UpstreamUnreachable` when the replica cannot have seen the request (connect
failed, or a pooled connection was closed before any response byte: the proxy retries
another replica); :class:`UpstreamBroken` when the answer broke off; ``TimeoutError`` when the
replica sent nothing for ``read_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import collections
from urllib.parse import urlsplit

import httptools

#: Pause reading a replica's stream when this much is buffered and not yet sent on.
_HIGH_WATER = 256 * 1024
#: Idle connections kept per replica; beyond, finished connections are closed.
_MAX_IDLE = 256


class UpstreamError(Exception):
    pass


class UpstreamUnreachable(UpstreamError):
    """The replica cannot have seen the request: safe to send it elsewhere."""


class UpstreamBroken(UpstreamError):
    """The replica's answer broke off after it started."""


class _Conn(asyncio.Protocol):
    """One connection: at most one request at a time, reused while the replica keeps it."""

    def __init__(self, pool: UpstreamPool, key: str) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.content_type = ""
        self.started = False  # any byte of the current response seen
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.framed = False  # Content-Length or chunked: the end is known without EOF
        self.buffered = 0
        self.chunks: collections.deque[bytes] = collections.deque()
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self._header = b""

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # always a TCP transport

    def data_received(self, data: bytes) -> None:
        self.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBroken(f"invalid HTTP from replica: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        if self.complete:
            return
        if self.headers_done and not self.framed:
            self.complete = True  # the body ran to EOF, as HTTP/1.1 allows without framing
            self._wake()
        elif not self.started:
            self._fail(UpstreamUnreachable(f"replica closed the connection: {exc!r}"))
        else:
            self._fail(UpstreamBroken(f"replica closed the connection mid-response: {exc!r}"))

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-type":
            self.content_type = value.decode("latin-1")
        elif name == b"content-length" or (
            name == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        # Only meaningful here: httptools resets it once the message is over.
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True
        self._wake()

    # -- the proxy's side

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    async def wait(self, timeout: float) -> None:
        """Until the parser has news (headers, body, end) or the replica times out."""
        if self.error is not None:
            raise self.error
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        timer = loop.call_later(timeout, _time_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def take(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        if self.buffered > _HIGH_WATER and self.transport is not None:
            self.transport.resume_reading()
        self.buffered = 0
        return data

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class UpstreamResponse:
    """A replica's answer: read it whole or in chunks, then ``release()`` or ``close()``."""

    __slots__ = ("_conn", "_read_timeout", "status", "content_type")

    def __init__(self, conn: _Conn, read_timeout: float) -> None:
        self._conn = conn
        self._read_timeout = read_timeout
        self.status = conn.status
        self.content_type = conn.content_type

    async def read(self) -> bytes:
        conn = self._conn
        while not conn.complete:
            await conn.wait(self._read_timeout)
        return conn.take()

    async def next_chunk(self) -> bytes:
        """What the replica sent since the last call, as soon as there is some; b"" at the end."""
        conn = self._conn
        while True:
            if conn.chunks:
                return conn.take()
            if conn.complete:
                return b""
            await conn.wait(self._read_timeout)

    def release(self) -> None:
        """The answer was relayed: keep the connection if it can carry another request."""
        self._conn.pool.give_back(self._conn)

    def close(self) -> None:
        """Drop the connection: how the replica learns that nobody waits for the answer."""
        self._conn.close()


class UpstreamPool:
    """Keep-alive connections to every replica, and the requests made on them."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: dict[str, list[_Conn]] = {}
        self._all: set[_Conn] = set()
        self._hosts: dict[str, tuple[str, int, bytes]] = {}
        self.closed = False

    async def post(self, address: str, path: str, body: bytes, request_id: str) -> UpstreamResponse:
        """Send the request; return once the replica's status line and headers are in."""
        host, port, host_header = self._host(address)
        conn = await self._conn(address, host, port)
        conn.reset()
        assert conn.transport is not None  # a pooled or new connection is open
        head = b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n" % (
            path.encode("latin-1"),
            host_header,
        )
        head += b"Content-Length: %d\r\nX-Request-Id: %s\r\n\r\n" % (
            len(body),
            request_id.encode("latin-1"),
        )
        conn.transport.writelines((head, body))
        try:
            while not conn.headers_done:
                await conn.wait(self.read_timeout)
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(conn, self.read_timeout)

    def _host(self, address: str) -> tuple[str, int, bytes]:
        found = self._hosts.get(address)
        if found is None:
            parts = urlsplit(address)
            if parts.scheme != "http" or not parts.hostname:
                raise UpstreamUnreachable(f"replica address {address!r} is not http://host:port")
            found = (parts.hostname, parts.port or 80, parts.netloc.encode("latin-1"))
            self._hosts[address] = found
        return found

    async def _conn(self, key: str, host: str, port: int) -> _Conn:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        if self.closed:
            raise UpstreamUnreachable("the gateway is shutting down")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Conn(self, key), host, port)
        except (OSError, TimeoutError) as exc:
            raise UpstreamUnreachable(f"cannot connect to {host}:{port}: {exc!r}") from exc
        self._all.add(conn)
        return conn

    def give_back(self, conn: _Conn) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if (
            self.closed
            or not (conn.complete and conn.keep_alive)
            or conn.transport is None
            or len(idle) >= _MAX_IDLE
        ):
            conn.close()
            return
        idle.append(conn)

    def forget(self, conn: _Conn) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        """Close every connection: requests still running on them break off."""
        self.closed = True
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
