"""The hot path: ``POST /v1/chat/completions`` and ``POST /v1/completions`` as raw ASGI.

Per request: authenticate (in-memory key table) → read the body and parse the few fields the
gateway needs (``inbound``) → resolve the endpoint in the current routing table → count it
against the key's and org's limits (``limits``; only for keys that have any) → take the least
loaded replica → forward the body on the pooled aiohttp session (``upstream``) → send back the
answer in Turnout's shape (``relay``). Starlette's request and response objects are skipped
here on purpose: they cost more than the proxy's own work.

Errors the gateway raises itself are :mod:`turnout.errors` classes rendered in the flat body;
a replica's own 4xx/5xx keeps its status and gets the flat body too (``engine_errors``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from functools import partial

from aiohttp.hdrs import CONTENT_TYPE
from starlette.types import Receive, Scope, Send

from turnout.errors import (
    EndpointNotReady,
    NotFound,
    TurnoutError,
    Unauthenticated,
    UpstreamBadResponse,
    UpstreamTimeout,
)
from turnout.gateway.inbound import Head, Inbound, parse, read_body, read_head
from turnout.gateway.keys import InferenceKeys, KeyEntry
from turnout.gateway.limits import Admission, Limits, Refused
from turnout.gateway.metrics import GatewayMetrics
from turnout.gateway.relay import send_stream, send_whole
from turnout.gateway.rewrite import Usage
from turnout.gateway.routing import Router
from turnout.gateway.streaming import DisconnectWatch, Exchange, Served
from turnout.gateway.traffic import Traffic
from turnout.gateway.upstream import RELAY_ERRORS, Upstream, UpstreamResponse, UpstreamUnreachable
from turnout.routing.table import EndpointRoute, ReplicaRoute

logger = logging.getLogger(__name__)

PROXIED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    connect_timeout: float = 5.0
    #: longest wait for the replica's next byte (headers, body or stream chunk)
    request_timeout: float = 600.0
    max_body_bytes: int = 32 * 1024 * 1024
    #: on shutdown, how long in-flight requests (streams included) may still run
    drain_timeout: float = 30.0


class NotReady(EndpointNotReady):
    """A 503 that says when to retry (``Retry-After``; the OpenAI and Cerebras SDKs honour it)."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = "model",
        code: str | None = None,
        retry_after: int = 1,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after


class Proxy:
    """Owns the upstream session and serves the two proxied paths of one gateway app."""

    def __init__(
        self,
        router: Router,
        keys: InferenceKeys,
        metrics: GatewayMetrics,
        config: ProxyConfig,
        *,
        limits: Limits | None = None,
        traffic: Traffic | None = None,
    ) -> None:
        self.router = router
        self.keys = keys
        self.metrics = metrics
        self.config = config
        self.limits = limits or Limits()
        self.traffic = traffic or Traffic()
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
        started, received = time.perf_counter(), time.time()
        head = read_head(scope)
        route: EndpointRoute | None = None
        try:
            entry = self._authenticate(head.token)
            body = await read_body(head, receive, self.config.max_body_bytes)
            if body is None:
                return  # the client left before sending its body
            inbound = parse(body)
            route = self._resolve(entry.org, inbound.model)
            if not route.replicas and route.hold_seconds:
                route = await self._hold(route)  # its replicas are swapping weights in place
            replicas = self._replicas_of(route)
            if route.canary is not None:
                replicas = self.router.split(route, replicas, sticky_key(route, head, scope))
            admission = self._admit(entry, inbound)
        except TurnoutError as exc:
            self._refused(route, exc, started)
            await send_error(send, exc, head.request_id)
            return
        exchange = Exchange(
            route=route,
            path=scope["path"],
            body=inbound.body,
            stream=inbound.stream,
            request_id=head.request_id,
            started=started,
            received=received,
            wants_usage=inbound.wants_usage,
            admission=admission,
        )
        await self._forward(exchange, replicas, receive, send)

    def _authenticate(self, token: str | None) -> KeyEntry:
        if not token:
            raise Unauthenticated(
                "No inference key: send it as `Authorization: Bearer <key>`.",
                code="missing_api_key",
            )
        entry = self.keys.lookup(token)
        if entry is None:
            raise Unauthenticated("The inference key is not valid; check the key you sent.")
        return entry

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

    async def _hold(self, route: EndpointRoute) -> EndpointRoute:
        """Wait (up to the route's hold) for the endpoint to have a ready replica again."""
        await self.router.wait_for_replicas(route.endpoint_id, route.hold_seconds)
        return self.router.current().endpoints.get(route.endpoint_id, route)

    @staticmethod
    def _replicas_of(route: EndpointRoute) -> tuple[ReplicaRoute, ...]:
        if route.replicas:
            return route.replicas
        if route.deployment_id is None:
            why, retry_after = "has no serving deployment yet", 10
        else:
            why, retry_after = "has no ready replica (its replicas are starting)", 2
        raise NotReady(
            f"Endpoint {route.endpoint_id} {why}. Retry shortly, or check "
            f"GET /management/v1/endpoints/{route.endpoint_id}.",
            retry_after=retry_after,
        )

    def _admit(self, entry: KeyEntry, inbound: Inbound) -> Admission | None:
        return self.limits.admit(entry, inbound.payload) if entry.limited else None

    def _refused(self, route: EndpointRoute | None, exc: TurnoutError, started: float) -> None:
        """Count a request answered before any replica was asked."""
        if route is None:
            # Unknown or unauthorised model names go under endpoint="", so a client cannot grow
            # the label set without bound.
            self.metrics.error("", exc.code)
            return
        self.metrics.error(route.endpoint_id, exc.code)
        self.metrics.series(route.endpoint_id, route.version_id).finished(exc.status)
        tally = self.traffic.tally(route.endpoint_id, route.version_id)
        tally.by_status[exc.status] = tally.by_status.get(exc.status, 0) + 1
        tally.latency.add(time.perf_counter() - started)

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
            self._count(exchange, status)

    def _count(self, exchange: Exchange, status: int) -> None:
        route = exchange.route
        ended = time.perf_counter()
        series = exchange.series or self.metrics.series(route.endpoint_id, route.version_id)
        series.finished(status)
        series.latency.observe(ended - exchange.started)
        if status >= 400:
            self.metrics.error(route.endpoint_id, _error_code(status))
        usage = exchange.usage if status == 200 else None
        served = exchange.served
        tally = self.traffic.tally(
            route.endpoint_id, served.version_id if served else route.version_id
        )
        tally.by_status[status] = tally.by_status.get(status, 0) + 1
        tally.latency.add(ended - exchange.started)
        if exchange.first_out:
            tally.ttft.add(exchange.first_out - exchange.started)
        queue = exchange.queue_time()
        if queue is not None:
            tally.queue.add(queue)
        if usage is not None:
            series.prompt_tokens.inc(usage.prompt_tokens)
            series.completion_tokens.inc(usage.completion_tokens)
            tally.input_tokens += usage.prompt_tokens
            tally.output_tokens += usage.completion_tokens
        if exchange.admission is not None:
            self.limits.finish(exchange.admission, _used_tokens(exchange, status))
        if served is not None and served.deployment_id is not None:
            self._count_for_gates(exchange, served.deployment_id, status, ended, usage)

    def _count_for_gates(
        self, exchange: Exchange, deployment_id: str, status: int, ended: float, usage: Usage | None
    ) -> None:
        """What canary gates judge, per deployment: errors, cut streams, TTFT, TPOT."""
        stats = self.router.stats_for(deployment_id)
        stats.requests += 1
        if status >= 500:
            stats.errors += 1
        if exchange.stream:
            stats.streams += 1
            if status in (502, 504):  # cut before [DONE]
                stats.stream_aborts += 1
        if exchange.first_out:
            stats.ttft.add(exchange.first_out - exchange.started)
            tokens = usage.completion_tokens if usage is not None else 0
            if exchange.stream and tokens > 1:
                stats.tpot.add((ended - exchange.first_out) / (tokens - 1))

    async def _exchange(
        self, exchange: Exchange, replicas: tuple[ReplicaRoute, ...], send: Send
    ) -> int:
        """Talk to one replica (two on a connect failure); return the status for the metrics."""
        try:
            replica, response = await self._open(exchange, replicas)
        except TurnoutError as exc:
            await send_error(send, exc, exchange.request_id)
            return exc.status
        done = False
        try:
            ctype = response.headers.get(CONTENT_TYPE) or "application/json"
            # The replica is free once its answer is read, before the client has it all.
            upstream_done = partial(self._give_back, exchange)
            if response.status == 200 and ctype.startswith("text/event-stream"):
                status = await send_stream(
                    exchange, response, ctype, send, self.config.request_timeout, upstream_done
                )
            else:
                status = await send_whole(exchange, response, ctype, send, upstream_done)
            done = status < 500
            return status
        except RELAY_ERRORS as exc:
            # A whole answer broke off while it was read: nothing was sent yet.
            logger.warning(
                "request %s: replica %s failed mid-response: %r", exchange.request_id, replica, exc
            )
            error = UpstreamBadResponse(
                f"Endpoint {exchange.route.endpoint_id}'s replica broke off its answer; "
                "retry the request."
            )
            await send_error(send, error, exchange.request_id)
            return error.status
        finally:
            self._give_back(exchange)
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
        exchange.replica = replica
        route = exchange.route
        served = Served.by(route, replica)
        exchange.served = served
        exchange.series = self.metrics.series(route.endpoint_id, served.version_id)
        exchange.series.in_flight.inc()
        return replica

    def _give_back(self, exchange: Exchange) -> None:
        """Release the exchange's replica, once."""
        replica, exchange.replica = exchange.replica, None
        if replica is None:
            return
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
                    raise NotReady(
                        "The gateway is shutting down; retry another gateway.", retry_after=1
                    )
                exchange.sent = time.perf_counter()
                post = self._upstream.post(
                    replica.address, exchange.path, exchange.body, exchange.request_id
                )
                return replica, await post
            except UpstreamUnreachable as exc:
                # The replica cannot have produced anything yet: another one may answer.
                self._give_back(exchange)
                logger.warning(
                    "request %s: replica %s unreachable: %r", exchange.request_id, replica, exc
                )
                failed = replica
                error: Exception = exc
            except RELAY_ERRORS as exc:  # a timeout, or an answer that is not HTTP
                self._give_back(exchange)
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
                self._give_back(exchange)
                raise
        raise NotReady(
            f"Endpoint {exchange.route.endpoint_id}'s replicas could not be reached; "
            "retry shortly.",
            retry_after=1,
            code="replica_unreachable",
        ) from error


def _used_tokens(exchange: Exchange, status: int) -> int | None:
    """What a limited key is charged: the answer's usage; nothing when it failed before any
    answer went out; the estimate when the client left or a stream broke off after it began
    (else leaving early would dodge the tokens-per-minute limit)."""
    if status == 200 and exchange.usage is not None:
        return exchange.usage.total
    admission = exchange.admission
    if status == 499 or (exchange.stream and exchange.first_out):
        return admission.estimate if admission is not None else None
    return None


def _error_code(status: int) -> str:
    return "client_closed" if status == 499 else f"upstream_{status}"


def error_headers(exc: TurnoutError) -> list[tuple[bytes, bytes]]:
    """What a refusal tells the client beyond its body: limits, and when to retry."""
    if isinstance(exc, Refused):
        return exc.headers
    if isinstance(exc, NotReady):
        return [(b"retry-after", str(exc.retry_after).encode())]
    return []


async def send_error(send: Send, exc: TurnoutError, request_id: str) -> None:
    body = json.dumps(exc.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        *error_headers(exc),
    ]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def sticky_key(route: EndpointRoute, head: Head, scope: Scope) -> bytes | None:
    """What a canary's sessions are keyed by: the caller's key, a header, or nothing."""
    assert route.canary is not None
    sticky = route.canary.sticky
    if sticky == "api_key":
        return head.token.encode() if head.token else None
    if sticky.startswith("header:"):
        wanted = sticky[len("header:") :].lower().encode("latin-1")
        for name, value in scope["headers"]:
            if name == wanted:
                return bytes(value)
    return None
