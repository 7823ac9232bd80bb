"""Sending a replica's answer to the client: whole, or as a stream, in Turnout's shape.

A whole answer is rewritten (``rewrite.rewrite_json``), or, when the replica failed (4xx/5xx),
replaced by the flat error body with the same status (``engine_errors``). A stream goes through
chunk by chunk (``sse.SSERewriter``); if the replica breaks off (its connection drops or it
stalls past the read timeout) or ends without ``data: [DONE]``, the client gets an error event
in the OpenAI shape and ``[DONE]`` before the stream closes, never a silent truncation that
looks like a finished answer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from starlette.types import Send

from turnout.gateway.engine_errors import error_event, flat_error, stream_error
from turnout.gateway.rewrite import engine_queue_time, loads, rewrite_json
from turnout.gateway.sse import SSERewriter
from turnout.gateway.streaming import Exchange, Served
from turnout.gateway.upstream import RELAY_ERRORS, UpstreamResponse

logger = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]


def _served(exchange: Exchange) -> Served:
    assert exchange.served is not None  # set by Proxy._take before any answer exists
    return exchange.served


def _headers(exchange: Exchange, content_type: str) -> Headers:
    headers = _served(exchange).headers(content_type, exchange.request_id)
    if exchange.admission is not None:
        headers += exchange.admission.headers
    return headers


async def send_whole(
    exchange: Exchange,
    response: UpstreamResponse,
    ctype: str,
    send: Send,
    upstream_done: Callable[[], None],
) -> int:
    body = await response.read()
    upstream_done()
    endpoint = exchange.route.endpoint_id
    status = response.status
    if status == 200 and ctype.startswith("application/json"):
        rewritten = rewrite_json(body, endpoint, _served(exchange).fingerprint, exchange.time_info)
        body = rewritten.body
        exchange.usage = rewritten.usage
        exchange.engine_queue = engine_queue_time(rewritten.payload)
    elif status >= 400:
        try:
            payload = loads(body) if ctype.startswith("application/json") else None
        except ValueError:
            payload = None
        if status >= 500:
            logger.warning(
                "request %s: endpoint %s's replica answered %d: %r",
                exchange.request_id,
                endpoint,
                status,
                body[:2000],
            )
        error = flat_error(payload, status, endpoint)
        body = json.dumps(error).encode()
        ctype = "application/json"
    headers = _headers(exchange, ctype)
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    exchange.first_out = time.perf_counter()
    return status


async def send_stream(
    exchange: Exchange,
    response: UpstreamResponse,
    ctype: str,
    send: Send,
    read_timeout: float,
    upstream_done: Callable[[], None],
) -> int:
    """Relay the stream; return the status it ends with for the metrics (200, or the error's)."""
    served = _served(exchange)
    headers = _headers(exchange, ctype)
    headers.append((b"cache-control", b"no-cache"))
    headers.append((b"x-accel-buffering", b"no"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    endpoint = exchange.route.endpoint_id
    rewriter = SSERewriter(
        endpoint,
        served.fingerprint,
        wants_usage=exchange.wants_usage,
        time_info=exchange.time_info,
    )
    series = exchange.series
    try:
        async for chunk in response.content.iter_any():
            if not exchange.first_byte:
                exchange.first_byte = time.perf_counter()
            out = rewriter.feed(chunk)
            if not out:
                continue
            await send({"type": "http.response.body", "body": out, "more_body": True})
            if not exchange.first_out:
                exchange.first_out = time.perf_counter()
                if series is not None:
                    series.ttft.observe(exchange.first_out - exchange.started)
    except RELAY_ERRORS as exc:
        logger.warning(
            "request %s: endpoint %s's replica broke off the stream: %r",
            exchange.request_id,
            endpoint,
            exc,
        )
        if isinstance(exc, TimeoutError):
            status, code = 504, "upstream_timeout"
            message = (
                f"Endpoint {endpoint}'s replica sent nothing for {read_timeout:g}s and the "
                "stream was ended; retry the request."
            )
        else:
            status, code = 502, "stream_interrupted"
            message = (
                f"Endpoint {endpoint}'s replica broke off the stream before it was complete; "
                "retry the request."
            )
        await _end_with_error(send, stream_error(status, code, message), status)
        return status
    upstream_done()
    exchange.usage = rewriter.usage
    tail = rewriter.flush()
    if rewriter.failed:
        await send({"type": "http.response.body", "body": tail})
        return rewriter.failed
    if not rewriter.done:
        logger.warning(
            "request %s: endpoint %s's replica ended the stream without [DONE]",
            exchange.request_id,
            endpoint,
        )
        message = (
            f"Endpoint {endpoint}'s replica ended the stream before it was complete; "
            "retry the request."
        )
        await _end_with_error(send, stream_error(502, "stream_incomplete", message), 502)
        return 502
    await send({"type": "http.response.body", "body": tail})
    return 200


async def _end_with_error(send: Send, error: dict[str, object], status: int) -> None:
    # What was sent ends at a line break; one more ends that event. A line the replica left
    # unfinished is dropped: it is not valid JSON.
    body = b"\n" + error_event(error, status) + b"\n\ndata: [DONE]\n\n"
    await send({"type": "http.response.body", "body": body})
