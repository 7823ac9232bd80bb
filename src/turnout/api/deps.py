"""Typed dependencies: the services and the authenticated caller."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from turnout.api.services.admin import AdminService
from turnout.api.services.auth import Principal, authenticate
from turnout.api.services.endpoints import EndpointsService
from turnout.api.services.models import ModelsService
from turnout.api.services.traffic import TrafficService
from turnout.errors import Unauthenticated
from turnout.registry.weightstore import WeightStore
from turnout.store.db import Database
from turnout.store.records import KeyKind


@dataclass(frozen=True, slots=True)
class Services:
    db: Database
    models: ModelsService
    endpoints: EndpointsService
    admin: AdminService
    admin_token: str
    #: The published weights, served to fleet nodes with ``internal_token``.
    weights: WeightStore
    internal_token: str
    #: per-version traffic, read from a gateway in this process (role all)
    traffic: TrafficService


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def management_principal(
    services: ServicesDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return await authenticate(services.db, authorization, KeyKind.MANAGEMENT)


Caller = Annotated[Principal, Depends(management_principal)]


async def require_admin(
    services: ServicesDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    if not services.admin_token:
        raise Unauthenticated(
            "the admin API is disabled; start the server with TURNOUT_ADMIN_TOKEN set"
        )
    scheme, _, token = (authorization or "").partition(" ")
    # Constant time: how much of a guess matched must not show in how long the answer takes.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), services.admin_token.encode()
    ):
        raise Unauthenticated("send 'Authorization: Bearer <TURNOUT_ADMIN_TOKEN>'")


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=256)]
