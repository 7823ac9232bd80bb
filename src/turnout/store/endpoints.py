"""Endpoints: the stable names clients put in ``model``, and which deployment each serves."""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from turnout.errors import Conflict, NotFound
from turnout.ids import NAME_PATTERN, full_match
from turnout.policy import RolloutPolicy
from turnout.store.records import Endpoint, Org
from turnout.store.tables import EndpointRow, OrgRow
from turnout.store.tenants import now


def _endpoint(row: EndpointRow, org_name: str) -> Endpoint:
    return Endpoint(
        endpoint_id=row.endpoint_id,
        org_id=row.org_id,
        org_name=org_name,
        arch_id=row.arch_id,
        replicas=row.replicas,
        engine=row.engine,
        gpus_per_replica=row.gpus_per_replica,
        serving_deployment_id=row.serving_deployment_id,
        replica_problem=row.replica_problem,
        follow_alias=row.follow_alias,
        follow_policy=RolloutPolicy.from_json(row.follow_policy) if row.follow_alias else None,
        created=row.created,
        updated=row.updated,
    )


async def create_endpoint(
    session: AsyncSession,
    endpoint_id: str,
    org: Org,
    arch_id: str,
    *,
    replicas: int,
    engine: str,
    gpus_per_replica: int | None = None,
) -> Endpoint:
    if await session.get(EndpointRow, endpoint_id) is not None:
        raise Conflict(f"endpoint {endpoint_id!r} already exists", param="endpoint_id")
    ts = now()
    row = EndpointRow(
        endpoint_id=endpoint_id,
        org_id=org.id,
        arch_id=arch_id,
        replicas=replicas,
        engine=engine,
        gpus_per_replica=gpus_per_replica,
        created=ts,
        updated=ts,
    )
    session.add(row)
    await session.flush()
    return _endpoint(row, org.name)


async def find_endpoint(session: AsyncSession, endpoint_id: str) -> Endpoint | None:
    if not full_match(NAME_PATTERN, endpoint_id):
        return None  # names none; and PostgreSQL refuses some text (a NUL byte) outright
    found = (
        await session.execute(
            select(EndpointRow, OrgRow.name)
            .join(OrgRow, OrgRow.id == EndpointRow.org_id)
            .where(EndpointRow.endpoint_id == endpoint_id)
        )
    ).first()
    return _endpoint(found[0], found[1]) if found else None


def endpoint_not_found(endpoint_id: str) -> NotFound:
    return NotFound(
        f"endpoint {endpoint_id!r} does not exist or your org does not manage it; "
        "list yours with GET /management/v1/orgs/{org}/endpoints",
        param="endpoint_id",
        code="endpoint_not_found",
    )


async def get_endpoint(session: AsyncSession, endpoint_id: str) -> Endpoint:
    endpoint = await find_endpoint(session, endpoint_id)
    if endpoint is None:
        raise endpoint_not_found(endpoint_id)
    return endpoint


async def list_endpoints(session: AsyncSession, org: Org | None = None) -> list[Endpoint]:
    query = select(EndpointRow, OrgRow.name).join(OrgRow, OrgRow.id == EndpointRow.org_id)
    if org is not None:
        query = query.where(EndpointRow.org_id == org.id)
    rows = await session.execute(query.order_by(EndpointRow.created, EndpointRow.endpoint_id))
    return [_endpoint(row, name) for row, name in rows]


async def delete_endpoint(session: AsyncSession, endpoint_id: str) -> None:
    await session.execute(delete(EndpointRow).where(EndpointRow.endpoint_id == endpoint_id))


async def set_serving(session: AsyncSession, endpoint_id: str, deployment_id: str | None) -> None:
    await session.execute(
        update(EndpointRow)
        .where(EndpointRow.endpoint_id == endpoint_id)
        .values(serving_deployment_id=deployment_id, updated=now())
    )


async def set_replica_problem(session: AsyncSession, endpoint_id: str, problem: str | None) -> None:
    """Record why the endpoint runs short of replicas (None: it no longer does)."""
    await session.execute(
        update(EndpointRow)
        .where(
            EndpointRow.endpoint_id == endpoint_id,
            EndpointRow.replica_problem.is_distinct_from(problem),
        )
        .values(replica_problem=problem)
    )


async def set_follow(
    session: AsyncSession, endpoint_id: str, alias: str | None, policy: RolloutPolicy | None
) -> None:
    """Follow ``alias`` (moving it deploys with ``policy``), or stop following (None)."""
    await session.execute(
        update(EndpointRow)
        .where(EndpointRow.endpoint_id == endpoint_id)
        .values(
            follow_alias=alias,
            follow_policy=policy.to_json() if alias and policy else None,
            updated=now(),
        )
    )
