"""Endpoints, their deployments (with step events) and replicas."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from turnout.errors import Conflict, NotFound
from turnout.store.records import Deployment, DeploymentEvent, Endpoint, Org, Replica
from turnout.store.tables import (
    DeploymentEventRow,
    DeploymentRow,
    EndpointRow,
    ModelVersionRow,
    OrgRow,
    ReplicaRow,
)
from turnout.store.tenants import now


def _endpoint(row: EndpointRow, org_name: str) -> Endpoint:
    return Endpoint(
        endpoint_id=row.endpoint_id,
        org_id=row.org_id,
        org_name=org_name,
        arch_id=row.arch_id,
        replicas=row.replicas,
        engine=row.engine,
        serving_deployment_id=row.serving_deployment_id,
        created=row.created,
        updated=row.updated,
    )


async def create_endpoint(
    session: AsyncSession, endpoint_id: str, org: Org, arch_id: str, *, replicas: int, engine: str
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
        created=ts,
        updated=ts,
    )
    session.add(row)
    await session.flush()
    return _endpoint(row, org.name)


async def find_endpoint(session: AsyncSession, endpoint_id: str) -> Endpoint | None:
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


_DEPLOYMENT_COLUMNS = (
    DeploymentRow,
    OrgRow.name,
    ModelVersionRow.arch_id,
    ModelVersionRow.version_number,
)


def _deployments_query() -> Select[DeploymentRow, str, str, int]:
    return (
        select(*_DEPLOYMENT_COLUMNS)
        .join(OrgRow, OrgRow.id == DeploymentRow.org_id)
        .join(ModelVersionRow, ModelVersionRow.id == DeploymentRow.version_id)
    )


def _deployment(row: DeploymentRow, org_name: str, arch_id: str, number: int) -> Deployment:
    return Deployment(
        id=row.id,
        seq=row.seq,
        endpoint_id=row.endpoint_id,
        org_id=row.org_id,
        org_name=org_name,
        arch_id=arch_id,
        version_id=row.version_id,
        version_number=number,
        alias_used=row.alias_used,
        state=row.state,
        step=row.step,
        error_code=row.error_code,
        error_message=row.error_message,
        created=row.created,
        updated=row.updated,
    )


async def create_deployment(
    session: AsyncSession,
    *,
    deployment_id: str,
    endpoint: Endpoint,
    version_pk: int,
    alias_used: str | None,
    state: str,
) -> Deployment:
    seq = (await session.scalar(select(func.max(DeploymentRow.seq)))) or 0
    ts = now()
    session.add(
        DeploymentRow(
            id=deployment_id,
            seq=seq + 1,
            endpoint_id=endpoint.endpoint_id,
            org_id=endpoint.org_id,
            version_id=version_pk,
            alias_used=alias_used,
            state=state,
            step="submitted",
            created=ts,
            updated=ts,
        )
    )
    await session.flush()
    await add_event(session, deployment_id, "submitted", "deployment queued")
    return await get_deployment(session, deployment_id)


async def find_deployment(session: AsyncSession, deployment_id: str) -> Deployment | None:
    found = (
        await session.execute(_deployments_query().where(DeploymentRow.id == deployment_id))
    ).first()
    return _deployment(*found) if found else None


async def get_deployment(session: AsyncSession, deployment_id: str) -> Deployment:
    found = await find_deployment(session, deployment_id)
    if found is None:
        raise NotFound(
            f"deployment {deployment_id!r} does not exist or your org cannot see it; list an "
            "endpoint's deployments with GET /management/v1/endpoints/{id}/deployments",
            param="deployment_id",
            code="deployment_not_found",
        )
    return found


async def list_deployments(
    session: AsyncSession, *, endpoint_id: str | None = None, states: Sequence[str] = ()
) -> list[Deployment]:
    """Newest first."""
    query = _deployments_query()
    if endpoint_id is not None:
        query = query.where(DeploymentRow.endpoint_id == endpoint_id)
    if states:
        query = query.where(DeploymentRow.state.in_(list(states)))
    rows = await session.execute(query.order_by(DeploymentRow.seq.desc()))
    return [_deployment(*row) for row in rows]


async def version_in_use(
    session: AsyncSession, version_pk: int, active_states: Sequence[str]
) -> str | None:
    """The endpoint that serves this version or has it in a queued/running deployment."""
    serving = await session.scalar(
        select(EndpointRow.endpoint_id)
        .join(DeploymentRow, DeploymentRow.id == EndpointRow.serving_deployment_id)
        .where(DeploymentRow.version_id == version_pk)
    )
    if serving:
        return serving
    return await session.scalar(
        select(DeploymentRow.endpoint_id).where(
            DeploymentRow.version_id == version_pk, DeploymentRow.state.in_(list(active_states))
        )
    )


async def update_deployment(
    session: AsyncSession,
    deployment_id: str,
    *,
    state: str | None = None,
    step: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> None:
    values: dict[str, object] = {"updated": now()}
    for name, value in (
        ("state", state),
        ("step", step),
        ("error_code", error_code),
        ("error_message", error_message),
    ):
        if value is not None:
            values[name] = value
    await session.execute(
        update(DeploymentRow).where(DeploymentRow.id == deployment_id).values(**values)
    )


async def add_event(session: AsyncSession, deployment_id: str, step: str, message: str) -> None:
    session.add(
        DeploymentEventRow(deployment_id=deployment_id, at=time.time(), step=step, message=message)
    )
    await session.flush()


async def list_events(session: AsyncSession, deployment_id: str) -> list[DeploymentEvent]:
    rows = await session.scalars(
        select(DeploymentEventRow)
        .where(DeploymentEventRow.deployment_id == deployment_id)
        .order_by(DeploymentEventRow.id)
    )
    return [DeploymentEvent(at=r.at, step=r.step, message=r.message) for r in rows]


def _replica(row: ReplicaRow) -> Replica:
    return Replica(
        id=row.id,
        endpoint_id=row.endpoint_id,
        deployment_id=row.deployment_id,
        address=row.address,
        pid=row.pid,
        state=row.state,
        error=row.error,
        created=row.created,
        updated=row.updated,
    )


async def upsert_replica(
    session: AsyncSession,
    replica_id: str,
    *,
    endpoint_id: str,
    deployment_id: str,
    state: str,
    address: str | None = None,
    pid: int | None = None,
    error: str | None = None,
) -> None:
    row = await session.get(ReplicaRow, replica_id)
    ts = now()
    if row is None:
        row = ReplicaRow(
            id=replica_id, endpoint_id=endpoint_id, deployment_id=deployment_id, created=ts
        )
        session.add(row)
    row.state = state
    row.updated = ts
    if address is not None:
        row.address = address
    if pid is not None:
        row.pid = pid
    row.error = error
    await session.flush()


async def list_replicas(
    session: AsyncSession, *, endpoint_id: str | None = None, deployment_id: str | None = None
) -> list[Replica]:
    query = select(ReplicaRow)
    if endpoint_id is not None:
        query = query.where(ReplicaRow.endpoint_id == endpoint_id)
    if deployment_id is not None:
        query = query.where(ReplicaRow.deployment_id == deployment_id)
    rows = await session.scalars(query.order_by(ReplicaRow.created, ReplicaRow.id))
    return [_replica(r) for r in rows]


async def forget_replica(session: AsyncSession, replica_id: str) -> None:
    await session.execute(delete(ReplicaRow).where(ReplicaRow.id == replica_id))


async def compare_and_set_state(
    session: AsyncSession,
    deployment_id: str,
    *,
    from_states: Sequence[str],
    to_state: str,
    before_steps: Sequence[str] = (),
    step: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Move a deployment only if it is still in one of ``from_states`` (and, when given, has not
    reached any of ``before_steps``). Atomic, so a cancel and the switch cannot both win."""
    query = update(DeploymentRow).where(
        DeploymentRow.id == deployment_id, DeploymentRow.state.in_(list(from_states))
    )
    if before_steps:
        query = query.where(
            (DeploymentRow.step.is_(None)) | (DeploymentRow.step.not_in(list(before_steps)))
        )
    values: dict[str, object] = {"state": to_state, "updated": now()}
    for name, value in (
        ("step", step),
        ("error_code", error_code),
        ("error_message", error_message),
    ):
        if value is not None:
            values[name] = value
    result = await session.execute(query.values(**values))
    return bool(result.rowcount)  # type: ignore[attr-defined]
