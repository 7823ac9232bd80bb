"""``create_gateway_app``: the ``/v1`` inference surface as one ASGI app.

The two proxied POST paths are served by :class:`~turnout.gateway.proxy.Proxy` as raw ASGI,
before FastAPI's middleware, routing, request and response objects (measured in
``bench/gateway.py``). ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /metrics`` and error
rendering are ordinary FastAPI routes.

Serving it with the management API on one port: pass that app as ``fallback``; it is mounted
under the gateway's routes and its lifespan runs inside the gateway's. (Mounting the gateway
inside another app would skip the gateway's lifespan, and with it the upstream session.)
"""

# No `from __future__ import annotations`: FastAPI must resolve the route annotations, and
# the `Org` dependency alias is local to `_add_routes`.

import hmac
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from turnout.errors import NotFound, TurnoutError, Unauthenticated
from turnout.gateway.keys import InferenceKeys
from turnout.gateway.metrics import GatewayMetrics
from turnout.gateway.proxy import PROXIED_PATHS, Proxy, ProxyConfig
from turnout.gateway.routing import Router
from turnout.gateway.schemas import ModelCard, ModelList
from turnout.routing.table import EndpointRoute


class _GatewayApp(FastAPI):
    """FastAPI, except that the proxied POST paths go straight to the proxy.

    Checked before FastAPI's own ``__call__``: its middleware stack (error, telemetry and
    body-limit middleware, each wrapping ``send``) cost as much per request as the proxy's
    own work. The proxy renders its own errors; FastAPI's telemetry does not see these paths
    (the gateway's Prometheus series cover them).
    """

    proxy: Proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in PROXIED_PATHS and scope["method"] == "POST":
            await self.proxy.handle(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_gateway_app(
    router: Router,
    keys: InferenceKeys,
    *,
    connect_timeout: float = 5.0,
    request_timeout: float = 600.0,
    drain_timeout: float = 30.0,
    fallback: ASGIApp | None = None,
    metrics_token: str | None = None,
) -> FastAPI:
    """Build the gateway app; it opens its upstream session in its lifespan.

    ``request_timeout`` bounds the wait for each next byte from a replica (headers, body,
    stream chunk), not a whole stream. ``drain_timeout`` bounds how long shutdown waits for
    in-flight requests. ``metrics_token``: the bearer token ``/metrics`` needs (its series name
    every org's endpoints); empty refuses ``/metrics``; None (an app embedded without a
    server, as in tests and benchmarks) leaves it open.
    """
    config = ProxyConfig(
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
        drain_timeout=drain_timeout,
    )
    metrics = GatewayMetrics()
    proxy = Proxy(router, keys, metrics, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await proxy.start()
        async with AsyncExitStack() as stack:
            stack.push_async_callback(proxy.stop)
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
    app.add_exception_handler(TurnoutError, _render_error)
    app.add_exception_handler(StarletteHTTPException, _render_http_error)
    _add_routes(app, router, keys, metrics, metrics_token)
    if fallback is not None:
        app.mount("/", fallback)
    return app


async def _render_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TurnoutError)  # registered for TurnoutError only
    return JSONResponse(exc.body(), status_code=exc.status)


async def _render_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (a path no route or mount matches, e.g. one holding a newline)
    in the flat body too, never ``{"detail": ...}``."""
    assert isinstance(exc, StarletteHTTPException)
    body = {"message": f"no route {request.method} {request.url.path}", "param": None,
            "type": "invalid_request_error", "code": "not_found" if exc.status_code == 404
            else f"http_{exc.status_code}"}  # fmt: skip
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _add_routes(
    app: FastAPI,
    router: Router,
    keys: InferenceKeys,
    metrics: GatewayMetrics,
    metrics_token: str | None,
) -> None:
    # Endpoints carry no creation time in the routing table; report when this gateway started.
    created = int(time.time())

    def caller_org(request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "No inference key: send it as `Authorization: Bearer <key>`.",
                code="missing_api_key",
            )
        org = keys.org_for_key(token.strip())
        if org is None:
            raise Unauthenticated("The inference key is not valid; check the key you sent.")
        return org

    Org = Annotated[str, Depends(caller_org)]

    def card(route: EndpointRoute) -> ModelCard:
        return ModelCard(id=route.endpoint_id, created=created, owned_by=route.org_name)

    @app.get("/v1/models")
    async def list_models(org: Org) -> ModelList:
        routes = router.current().endpoints.values()
        return ModelList(data=[card(r) for r in routes if r.org_name == org])

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, org: Org) -> ModelCard:
        route = router.current().endpoints.get(model_id)
        if route is None or route.org_name != org:
            raise NotFound(
                f"Model {model_id} does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return card(route)

    @app.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        if metrics_token is not None:
            _check_metrics_token(request, metrics_token)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _check_metrics_token(request: Request, expected: str) -> None:
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
