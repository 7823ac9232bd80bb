"""``create_gateway_app``: the ``/v1`` inference surface as one ASGI app.

The two proxied POST paths are served by :class:`~turnout.gateway.proxy.Proxy` as raw ASGI,
before FastAPI's middleware, routing, request and response objects (measured in
``bench/gateway.py``). ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /v1/tcp_warming``,
the Metrics API (``GET /api/v1/metrics/organizations/{id}``), ``GET /metrics`` and error
rendering are ordinary FastAPI routes. Every error, unknown routes and methods included, is
the flat body ``{message, type, param, code}``.

Serving it with the management API on one port: pass that app as ``fallback``; it is mounted
under the gateway's routes and its lifespan runs inside the gateway's. (Mounting the gateway
inside another app would skip the gateway's lifespan, and with it the upstream session.)
"""

# No `from __future__ import annotations`: FastAPI must resolve the route annotations, and
# the `Key` dependency alias is local to `_add_routes`.

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from turnout.errors import NotFound, PermissionDenied, TurnoutError, Unauthenticated
from turnout.gateway.keys import InferenceKeys, KeyEntry
from turnout.gateway.limits import Bucket, Refused
from turnout.gateway.metrics import GatewayMetrics
from turnout.gateway.metrics_api import render
from turnout.gateway.proxy import PROXIED_PATHS, Proxy, ProxyConfig, error_headers
from turnout.gateway.routing import Router
from turnout.gateway.schemas import ModelCard, ModelList
from turnout.gateway.traffic import Traffic
from turnout.routing.table import EndpointRoute

logger = logging.getLogger(__name__)

#: Cerebras' published limit on its Metrics API, per organization.
METRICS_API_PER_MINUTE = 6


class _GatewayApp(FastAPI):
    """FastAPI, except that the proxied POST paths go straight to the proxy.

    Checked before FastAPI's own ``__call__``: its middleware stack (error, telemetry and
    body-limit middleware, each wrapping ``send``) cost as much per request as the proxy's
    own work. The proxy renders its own errors; FastAPI's telemetry does not see these paths
    (the gateway's Prometheus series cover them).
    """

    proxy: Proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in PROXIED_PATHS:
            if scope["method"] == "POST":
                await self.proxy.handle(scope, receive, send)
            else:
                await _method_not_allowed(scope, send)
            return
        await super().__call__(scope, receive, send)


async def _method_not_allowed(scope: Scope, send: Send) -> None:
    body = {
        "message": f"Method {scope['method']} is not allowed on {scope['path']}; use POST.",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }
    content = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        (b"allow", b"POST"),
    ]
    await send({"type": "http.response.start", "status": 405, "headers": headers})
    await send({"type": "http.response.body", "body": content})


class _Fallback(Mount):
    """The app mounted under the gateway's routes. It takes no path a gateway route owns, so a
    wrong method there is the gateway's 405 rather than the fallback's 404."""

    def __init__(self, app: ASGIApp, owned: list[BaseRoute]) -> None:
        super().__init__("/", app=app)
        self.owned = owned

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if any(route.matches(scope)[0] is not Match.NONE for route in self.owned):
            return Match.NONE, {}
        return super().matches(scope)


def create_gateway_app(
    router: Router,
    keys: InferenceKeys,
    *,
    connect_timeout: float = 5.0,
    request_timeout: float = 600.0,
    drain_timeout: float = 30.0,
    max_body_bytes: int = 32 * 1024 * 1024,
    traffic: Traffic | None = None,
    fallback: ASGIApp | None = None,
    metrics_token: str | None = None,
    control_plane: CollectorRegistry | None = None,
) -> FastAPI:
    """Build the gateway app; it opens its upstream session in its lifespan.

    ``request_timeout`` bounds the wait for each next byte from a replica (headers, body,
    stream chunk), not a whole stream. ``drain_timeout`` bounds how long shutdown waits for
    in-flight requests. ``traffic`` holds the per-minute counts the Metrics API reports (pass
    one to share them, e.g. with the management API in the same process). ``metrics_token``:
    the bearer token ``/metrics`` needs (its series name every org's endpoints); empty refuses
    ``/metrics``; None (an app embedded without a server, as in tests and benchmarks) leaves it
    open. ``control_plane``: more series for ``/metrics`` (the control plane's, in one process).
    """
    config = ProxyConfig(
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
        max_body_bytes=max_body_bytes,
        drain_timeout=drain_timeout,
    )
    metrics = GatewayMetrics()
    traffic = traffic or Traffic()
    proxy = Proxy(router, keys, metrics, config, traffic=traffic)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await proxy.start()
        stopping = asyncio.Event()
        async with AsyncExitStack() as stack:
            stack.push_async_callback(proxy.stop)
            if traffic.clocked:
                roller = asyncio.create_task(traffic.run(stopping), name="metrics windows")
                stack.push_async_callback(_stop_task, roller, stopping)
            if isinstance(fallback, Starlette):
                await stack.enter_async_context(fallback.router.lifespan_context(fallback))
            yield

    app = _GatewayApp(
        title="Turnout gateway",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.proxy = proxy
    install_flat_errors(app)
    _add_routes(app, router, keys, metrics, traffic, metrics_token, control_plane)
    if fallback is not None:
        app.router.routes.append(_Fallback(fallback, list(app.router.routes)))
    return app


async def _stop_task(task: "asyncio.Task[None]", stopping: asyncio.Event) -> None:
    stopping.set()
    await task


def install_flat_errors(app: FastAPI) -> None:
    """Every error in the flat body: ours, FastAPI's 404/405/422, and anything unexpected."""

    async def on_turnout(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, TurnoutError)  # registered for TurnoutError only
        headers = {k.decode(): v.decode() for k, v in error_headers(exc)}
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = (
                f"No route {request.method} {request.url.path} on the inference API; it serves "
                "POST /v1/chat/completions, POST /v1/completions and GET /v1/models."
            )
            code = "not_found"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
            code = "method_not_allowed"
        else:
            message, code = str(exc.detail), f"http_{exc.status_code}"
        body = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        body = {
            "message": f"{param or 'request'}: {first.get('msg', 'invalid value')}",
            "type": "invalid_request_error",
            "param": param,
            "code": "validation_error",
        }
        return JSONResponse(body, status_code=400)

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        logger.exception("unhandled error in the gateway", exc_info=exc)
        return JSONResponse(
            TurnoutError("Internal error; the gateway's log has the details.").body(),
            status_code=500,
        )

    app.add_exception_handler(TurnoutError, on_turnout)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)


def _add_routes(
    app: FastAPI,
    router: Router,
    keys: InferenceKeys,
    metrics: GatewayMetrics,
    traffic: Traffic,
    metrics_token: str | None,
    control_plane: CollectorRegistry | None,
) -> None:
    def caller(request: Request) -> KeyEntry:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "No inference key: send it as `Authorization: Bearer <key>`.",
                code="missing_api_key",
            )
        entry = keys.lookup(token.strip())
        if entry is None:
            raise Unauthenticated("The inference key is not valid; check the key you sent.")
        return entry

    Key = Annotated[KeyEntry, Depends(caller)]

    def card(route: EndpointRoute) -> ModelCard:
        return ModelCard(id=route.endpoint_id, created=route.created, owned_by=route.org_name)

    @app.get("/v1/models")
    async def list_models(key: Key) -> ModelList:
        routes = router.current().endpoints.values()
        return ModelList(data=[card(r) for r in routes if r.org_name == key.org])

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, key: Key) -> ModelCard:
        route = router.current().endpoints.get(model_id)
        if route is None or route.org_name != key.org:
            raise NotFound(
                f"Model {model_id} does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return card(route)

    @app.get("/v1/tcp_warming")
    async def tcp_warming() -> Response:
        # The Cerebras SDK calls this when a client is built, to open its connection early; it
        # reads the answer as text and ignores it.
        return Response(b"", media_type="text/plain")

    _add_metrics_routes(app, router, metrics, traffic, metrics_token, control_plane, caller)


def _add_metrics_routes(
    app: FastAPI,
    router: Router,
    metrics: GatewayMetrics,
    traffic: Traffic,
    metrics_token: str | None,
    control_plane: CollectorRegistry | None,
    caller: Callable[[Request], KeyEntry],
) -> None:
    """The Metrics API (Cerebras' format, per org) and Prometheus ``/metrics`` (operator)."""
    Key = Annotated[KeyEntry, Depends(caller)]

    scrapes: dict[str, Bucket] = {}

    @app.get("/api/v1/metrics/organizations/{organization_id}")
    async def org_metrics(organization_id: str, key: Key) -> Response:
        if organization_id != key.org:
            raise PermissionDenied(
                f"This key belongs to organization {key.org}; read its metrics at "
                f"/api/v1/metrics/organizations/{key.org}.",
                param="organization_id",
            )
        _count_scrape(scrapes, key.org)
        text = render(traffic, router.current(), key.org)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        if metrics_token is not None:
            check_metrics_token(request, metrics_token)
        text = generate_latest(metrics.registry)
        if control_plane is not None:
            text += generate_latest(control_plane)
        return Response(text, media_type=CONTENT_TYPE_LATEST)


def check_metrics_token(request: Request, expected: str) -> None:
    """The series name every org's endpoints and versions: only the operator's scraper."""
    if not expected:
        raise Unauthenticated(
            "/metrics is disabled: the operator sets TURNOUT_METRICS_TOKEN to enable it",
            code="metrics_disabled",
        )
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        raise Unauthenticated("send 'Authorization: Bearer <TURNOUT_METRICS_TOKEN>' for /metrics")


def _count_scrape(scrapes: dict[str, Bucket], org: str) -> None:
    """Cerebras' limit on its Metrics API: 6 requests a minute per organization."""
    now = time.monotonic()
    bucket = scrapes.get(org)
    if bucket is None:
        bucket = scrapes[org] = Bucket(METRICS_API_PER_MINUTE, now)
    bucket.refill(METRICS_API_PER_MINUTE, now)
    if bucket.level < 1:
        raise Refused(
            f"The Metrics API answers {METRICS_API_PER_MINUTE} requests a minute per "
            "organization; its numbers change once a minute, so scrape every 60 s.",
            code="request_quota_exceeded",
            retry_after=bucket.seconds_until(1),
            headers=[],
        )
    bucket.level -= 1
