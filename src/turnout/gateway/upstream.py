"""The gateway's HTTP client to replicas: one pooled aiohttp ``ClientSession``.

The proxy POSTs the client's bytes and gets back aiohttp's ``ClientResponse``: ``status``,
``headers``, ``read()`` for a whole answer, ``content.iter_any()`` for a stream, then
``release()`` (keep the connection) or ``close()`` (drop it: how a replica learns that
nobody waits for its answer). The session is opened in the gateway's lifespan and closed on
shutdown, which breaks off any request still running on it.

Errors of :meth:`Upstream.post`: :class:`UpstreamUnreachable` when the replica cannot have
answered (connect failed, or a pooled connection was closed before the response started: the
proxy retries another replica); ``TimeoutError`` when the replica sent nothing for
``read_timeout`` seconds; another :data:`RELAY_ERRORS` member when its answer was not HTTP.
Reading a started answer raises :data:`RELAY_ERRORS` when it breaks off or stalls.
"""

from __future__ import annotations

import sys
import weakref

import aiohttp
from aiohttp import hdrs
from yarl import URL

#: No cap on connections, in all or per replica: the replicas' own queues do the admission
#: control. A cap would queue requests inside the gateway, behind streams that last minutes.
LIMIT = 0
LIMIT_PER_HOST = 0
#: Idle connections are dropped after this long: under the 5 s idle timeout of uvicorn (and
#: so vLLM's server), so the pool seldom hands out a connection the replica is closing.
KEEPALIVE_TIMEOUT = 4.0
#: Works around a CPython bug that is fixed in 3.12.8 and 3.13.1; aiohttp warns where it is.
_CLEANUP_CLOSED = sys.version_info < (3, 12, 8) or (3, 13, 0) <= sys.version_info < (3, 13, 1)
_SKIP_HEADERS = (hdrs.USER_AGENT, hdrs.ACCEPT, hdrs.ACCEPT_ENCODING)
#: Distinct (replica, path) URLs kept parsed; the table is cleared when it grows past this.
_MAX_URLS = 4096

#: Failures that happen before the replica's response starts: the request never reached it,
#: or a pooled keep-alive connection was closed under it (ServerDisconnectedError).
_UNREACHABLE: tuple[type[Exception], ...] = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    aiohttp.ClientConnectionResetError,
)

#: What a replica's answer raises when it is not HTTP, breaks off or stalls.
RELAY_ERRORS: tuple[type[Exception], ...] = (aiohttp.ClientError, TimeoutError)

UpstreamResponse = aiohttp.ClientResponse


class UpstreamUnreachable(Exception):
    """The replica cannot have seen the request: safe to send it elsewhere."""


class Upstream:
    """The pooled session to every replica; make it on the event loop that will use it."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        connector = aiohttp.TCPConnector(
            limit=LIMIT,
            limit_per_host=LIMIT_PER_HOST,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            enable_cleanup_closed=_CLEANUP_CLOSED,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # No total: a stream may run for as long as its replica keeps sending.
            timeout=aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=read_timeout),
            auto_decompress=False,  # bytes go through as the replica sent them
            skip_auto_headers=_SKIP_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        self._urls: dict[tuple[str, str], URL] = {}
        #: Answers handed out; the finished ones leave as soon as nothing else holds them.
        self._responses: weakref.WeakSet[UpstreamResponse] = weakref.WeakSet()

    async def post(self, address: str, path: str, body: bytes, request_id: str) -> UpstreamResponse:
        """Send the request; return once the replica's status line and headers are in."""
        url = self._urls.get((address, path))
        if url is None:
            if len(self._urls) >= _MAX_URLS:
                self._urls.clear()
            url = self._urls[(address, path)] = URL(address + path)
        headers = {hdrs.CONTENT_TYPE: "application/json", "X-Request-Id": request_id}
        try:
            response = await self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            )
        except _UNREACHABLE as exc:
            raise UpstreamUnreachable(f"replica {address}: {exc!r}") from exc
        self._responses.add(response)
        return response

    async def close(self) -> None:
        """Close every connection: requests still running on them break off."""
        # aiohttp detaches an answer from its connection before closing it, so a read already
        # waiting would wait for sock_read to elapse: fail those reads now.
        for response in list(self._responses):
            if not response.closed:
                cut = aiohttp.ClientConnectionError("the gateway closed the connection")
                response.content.set_exception(cut)
        await self._session.close()
