"""The hot path: ``POST /v1/chat/completions`` and ``POST /v1/completions`` as raw ASGI.

Per request: authenticate (in-memory key table) → read the body and parse only ``model`` and
``stream`` → resolve the endpoint in the current routing table → take the least loaded replica
→ forward the client's original bytes on the pooled aiohttp session (``upstream``) → stream
or send back the answer with ``model``/``system_fingerprint`` rewritten. Starlette's request and
response objects are skipped here on purpose: they cost more than the proxy's own work.

Errors the gateway raises itself are :mod:`turnout.errors` classes rendered in the flat body;
a replica's own 4xx/5xx is passed through unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from dataclasses import dataclass

from aiohttp.hdrs import CONTENT_TYPE
from starlette.types import Receive, Scope, Send

from turnout.errors import (
    BadRequest,
    EndpointNotReady,
    NotFound,
    PayloadTooLarge,
    TurnoutError,
    Unauthenticated,
    UpstreamBadResponse,
    UpstreamTimeout,
)
from turnout.gateway.keys import InferenceKeys
from turnout.gateway.metrics import GatewayMetrics
from turnout.gateway.rewrite import SSERewriter, Usage, loads, rewrite_json
from turnout.gateway.routing import Router
from turnout.gateway.streaming import DisconnectWatch, Exchange, Served
from turnout.gateway.upstream import RELAY_ERRORS, Upstream, UpstreamResponse, UpstreamUnreachable
from turnout.routing.table import EndpointRoute, ReplicaRoute

logger = logging.getLogger(__name__)

# The client's id goes into the request line block sent upstream: visible ASCII only.
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")

PROXIED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    connect_timeout: float = 5.0
    #: longest wait for the replica's next byte (headers, body or stream chunk)
    request_timeout: float = 600.0
    max_body_bytes: int = 32 * 1024 * 1024
    #: on shutdown, how long in-flight requests (streams included) may still run
    drain_timeout: float = 30.0


class Proxy:
    """Owns the upstream session and serves the two proxied paths of one gateway app."""

    def __init__(
        self, router: Router, keys: InferenceKeys, metrics: GatewayMetrics, config: ProxyConfig
    ) -> None:
        self.router = router
        self.keys = keys
        self.metrics = metrics
        self.config = config
        self._upstream: Upstream | None = None
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        self._upstream = Upstream(self.config.connect_timeout, self.config.request_timeout)

    async def stop(self) -> None:
        """Named shutdown steps (STYLE 13); uvicorn has already stopped accepting."""
        waiting = self._active
        logger.info("gateway shutdown: waiting for %d in-flight requests", waiting)
        try:
            await asyncio.wait_for(self._idle.wait(), self.config.drain_timeout)
        except TimeoutError:
            logger.warning(
                "gateway shutdown: %d requests still running after %.1fs; cancelling them",
                self._active,
                self.config.drain_timeout,
            )
        left = self._active
        if self._upstream is not None:
            # Closing the connections fails the remaining upstream reads, which ends them.
            upstream, self._upstream = self._upstream, None
            await upstream.close()
        logger.info("gateway shutdown: %d finished, %d cut", waiting - left, left)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id, token = _read_headers(scope)
        endpoint_label = ""
        try:
            org = self._authenticate(token)
            body = await _read_body(receive, self.config.max_body_bytes)
            if body is None:
                return  # the client left before sending its body
            model, stream = _parse_request(body)
            route = self._resolve(org, model)
            endpoint_label = route.endpoint_id
            replicas = self._replicas_of(route)
        except TurnoutError as exc:
            self.metrics.error(endpoint_label, exc.code)
            await send_error(send, exc, request_id)
            return
        exchange = Exchange(
            route=route,
            path=scope["path"],
            body=body,
            stream=stream,
            request_id=request_id,
            started=started,
        )
        await self._forward(exchange, replicas, receive, send)

    def _authenticate(self, token: str | None) -> str:
        if not token:
            raise Unauthenticated(
                "No inference key: send it as `Authorization: Bearer <key>`.",
                code="missing_api_key",
            )
        org = self.keys.org_for_key(token)
        if org is None:
            raise Unauthenticated("The inference key is not valid; check the key you sent.")
        return org

    def _resolve(self, org: str, model: str) -> EndpointRoute:
        route = self.router.current().endpoints.get(model)
        # Another org's endpoint gets the same answer as an unknown one, so ids do not leak.
        if route is None or route.org_name != org:
            raise NotFound(
                f"Model {model} does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return route

    @staticmethod
    def _replicas_of(route: EndpointRoute) -> tuple[ReplicaRoute, ...]:
        if route.replicas:
            return route.replicas
        why = (
            "has no serving deployment yet"
            if route.deployment_id is None
            else "has no ready replica (its replicas are starting)"
        )
        raise EndpointNotReady(
            f"Endpoint {route.endpoint_id} {why}. Retry shortly, or check "
            f"GET /management/v1/endpoints/{route.endpoint_id}.",
            param="model",
        )

    async def _forward(
        self, exchange: Exchange, replicas: tuple[ReplicaRoute, ...], receive: Receive, send: Send
    ) -> None:
        self._active += 1
        self._idle.clear()
        status = 499  # nginx's "client closed request" unless the exchange says otherwise
        watch = DisconnectWatch(receive)
        try:
            status = await self._exchange(exchange, replicas, send)
        except asyncio.CancelledError:
            if not watch.client_left:
                raise  # a real cancellation (server shutdown), not the client leaving
            watch.absorb()
        finally:
            watch.stop()
            self._active -= 1
            if self._active == 0:
                self._idle.set()
            route = exchange.route
            series = exchange.series or self.metrics.series(route.endpoint_id, route.version_id)
            series.finished(status)
            series.latency.observe(time.perf_counter() - exchange.started)
            if status >= 400:
                self.metrics.error(route.endpoint_id, _error_code(status))

    async def _exchange(
        self, exchange: Exchange, replicas: tuple[ReplicaRoute, ...], send: Send
    ) -> int:
        """Talk to one replica (two on a connect failure); return the status sent."""
        try:
            replica, response = await self._open(exchange, replicas)
        except TurnoutError as exc:
            await send_error(send, exc, exchange.request_id)
            return exc.status
        done = False
        try:
            ctype = response.headers.get(CONTENT_TYPE) or "application/json"
            if response.status == 200 and ctype.startswith("text/event-stream"):
                await self._send_stream(exchange, response, ctype, send)
            else:
                await self._send_whole(exchange, response, ctype, send)
            done = True
            return response.status
        except RELAY_ERRORS as exc:
            # The answer started but broke off: nothing sane can be sent any more.
            logger.warning(
                "request %s: replica %s failed mid-response: %r", exchange.request_id, replica, exc
            )
            return 502
        finally:
            self._give_back(replica, exchange)
            if done:
                response.release()
            else:
                # Closing the connection is how the replica learns the client is gone.
                response.close()

    def _take(
        self, exchange: Exchange, replicas: tuple[ReplicaRoute, ...], exclude: ReplicaRoute | None
    ) -> ReplicaRoute:
        """Acquire a replica; label the exchange with the version that replica runs."""
        replica = self.router.acquire(replicas, exclude=exclude)
        route = exchange.route
        served = Served.by(route, replica)
        exchange.served = served
        exchange.series = self.metrics.series(route.endpoint_id, served.version_id)
        exchange.series.in_flight.inc()
        return replica

    def _give_back(self, replica: ReplicaRoute, exchange: Exchange) -> None:
        self.router.release(replica)
        if exchange.series is not None:
            exchange.series.in_flight.dec()

    async def _open(
        self, exchange: Exchange, replicas: tuple[ReplicaRoute, ...]
    ) -> tuple[ReplicaRoute, UpstreamResponse]:
        failed: ReplicaRoute | None = None
        for _ in range(2):
            replica = self._take(exchange, replicas, failed)
            try:
                if self._upstream is None:
                    raise EndpointNotReady("The gateway is shutting down; retry another gateway.")
                post = self._upstream.post(
                    replica.address, exchange.path, exchange.body, exchange.request_id
                )
                return replica, await post
            except UpstreamUnreachable as exc:
                # The replica cannot have produced anything yet: another one may answer.
                self._give_back(replica, exchange)
                logger.warning(
                    "request %s: replica %s unreachable: %r", exchange.request_id, replica, exc
                )
                failed = replica
                error: Exception = exc
            except RELAY_ERRORS as exc:  # a timeout, or an answer that is not HTTP
                self._give_back(replica, exchange)
                if isinstance(exc, TimeoutError):
                    raise UpstreamTimeout(
                        f"Endpoint {exchange.route.endpoint_id}'s replica did not answer within "
                        f"{self.config.request_timeout:g}s; retry the request.",
                    ) from exc
                raise UpstreamBadResponse(
                    f"Endpoint {exchange.route.endpoint_id}'s replica sent an invalid answer; "
                    "retry the request.",
                ) from exc
            except BaseException:
                self._give_back(replica, exchange)
                raise
        raise EndpointNotReady(
            f"Endpoint {exchange.route.endpoint_id}'s replicas could not be reached; "
            "retry shortly.",
            code="replica_unreachable",
        ) from error

    async def _send_whole(
        self, exchange: Exchange, response: UpstreamResponse, ctype: str, send: Send
    ) -> None:
        body = await response.read()
        served = _served(exchange)
        if response.status == 200 and ctype.startswith("application/json"):
            body, usage = rewrite_json(body, exchange.route.endpoint_id, served.fingerprint)
            _count_tokens(exchange, usage)
        headers = served.headers(ctype, exchange.request_id)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _send_stream(
        self, exchange: Exchange, response: UpstreamResponse, ctype: str, send: Send
    ) -> None:
        served = _served(exchange)
        headers = served.headers(ctype, exchange.request_id)
        headers.append((b"cache-control", b"no-cache"))
        headers.append((b"x-accel-buffering", b"no"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        rewriter = SSERewriter(exchange.route.endpoint_id, served.fingerprint)
        first = True
        async for chunk in response.content.iter_any():
            out = rewriter.feed(chunk)
            if not out:
                continue
            await send({"type": "http.response.body", "body": out, "more_body": True})
            if first and exchange.series is not None:
                exchange.series.ttft.observe(time.perf_counter() - exchange.started)
                first = False
        await send({"type": "http.response.body", "body": rewriter.flush()})
        _count_tokens(exchange, rewriter.usage)


def _served(exchange: Exchange) -> Served:
    assert exchange.served is not None  # set by Proxy._take before any answer exists
    return exchange.served


def _count_tokens(exchange: Exchange, usage: Usage | None) -> None:
    series = exchange.series
    if usage is not None and series is not None:
        series.prompt_tokens.inc(usage.prompt_tokens)
        series.completion_tokens.inc(usage.completion_tokens)


def _error_code(status: int) -> str:
    return "client_closed" if status == 499 else f"upstream_{status}"


def _read_headers(scope: Scope) -> tuple[str, str | None]:
    request_id: str | None = None
    token: str | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                token = credential.strip()
        elif name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            request_id = value.decode("latin-1")
    return request_id or _new_request_id(), token


def _new_request_id() -> str:
    """A uuid4 in hex, without the cost of building a ``uuid.UUID``."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"The request body is over {limit} bytes; send a shorter one.")
        parts.append(part)
    return b"".join(parts)


def _parse_request(body: bytes) -> tuple[str, bool]:
    try:
        payload = loads(body)
    except ValueError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.") from exc
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(
            "Field `model` is required: set it to the endpoint id.",
            param="model",
            code="validation_error",
        )
    return model, payload.get("stream") is True


async def send_error(send: Send, exc: TurnoutError, request_id: str) -> None:
    body = json.dumps(exc.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
