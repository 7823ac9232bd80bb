"""Per-version traffic of an endpoint for the console (``GET .../endpoints/{id}/metrics``).

The numbers are the gateway's: it counts every request it proxies, per minute, in memory
(``turnout.gateway.traffic``). They are read here only when the gateway runs in this process
(``turnout serve`` in role ``all``). A server in role ``api`` has no gateway and says so with a
404 that points at the gateways' Metrics API, which has the same numbers per gateway.
"""

from __future__ import annotations

from collections.abc import Callable

from turnout.api.schemas import endpoints as ewire
from turnout.api.services.auth import Principal
from turnout.errors import NotFound
from turnout.gateway.metrics_api import version_traffic
from turnout.gateway.traffic import Traffic
from turnout.routing.table import RoutingTable
from turnout.store import endpoints as repo
from turnout.store.db import Database


class TrafficService:
    def __init__(
        self,
        db: Database,
        traffic: Traffic | None = None,
        routes: Callable[[], RoutingTable] | None = None,
    ) -> None:
        self.db = db
        self.traffic = traffic
        self.routes = routes or RoutingTable

    async def endpoint_metrics(
        self, principal: Principal, endpoint_id: str
    ) -> ewire.EndpointMetrics:
        async with self.db.session() as s:
            endpoint = await repo.find_endpoint(s, endpoint_id)
        # Another org's endpoint is as unknown as a missing one, so existence does not leak.
        if endpoint is None or endpoint.org_id != principal.org.id:
            raise repo.endpoint_not_found(endpoint_id)
        traffic = self.traffic
        if traffic is None:
            raise NotFound(
                "Per-version traffic is counted by the gateway, and this server runs without one "
                "(--role api). Read it from a gateway's Metrics API, GET "
                f"/api/v1/metrics/organizations/{principal.org.name} with an inference key, or "
                "run turnout serve --role all.",
                code="metrics_not_available",
            )
        route = self.routes().endpoints.get(endpoint_id)
        return ewire.EndpointMetrics(
            window_seconds=round(traffic.window),
            versions=[
                ewire.VersionMetrics(
                    version_id=v.version_id,
                    requests_per_second=v.requests_per_second,
                    error_rate=v.error_rate,
                    ttft_p50_ms=v.ttft_p50_ms,
                    ttft_p95_ms=v.ttft_p95_ms,
                )
                for v in version_traffic(traffic, route, endpoint_id)
            ],
            at=int(traffic.last_end),
        )
