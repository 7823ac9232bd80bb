"""Replicas: one row per engine process the rollout worker started, written before it starts."""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from turnout.states import ReplicaState
from turnout.store.records import Replica
from turnout.store.tables import ReplicaRow
from turnout.store.tenants import now


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
        node=row.node,
        gpus=tuple(row.gpus or ()),
        detail=row.detail,
        restarts=row.restarts or 0,
    )


async def upsert_replica(
    session: AsyncSession,
    replica_id: str,
    *,
    endpoint_id: str,
    deployment_id: str,
    state: ReplicaState,
    address: str | None = None,
    pid: int | None = None,
    error: str | None = None,
    node: str | None = None,
    gpus: tuple[int, ...] | None = None,
    detail: str | None = None,
    restarts: int | None = None,
) -> None:
    """Insert or update a replica row; ``None`` leaves a field as it is (except ``error`` and
    ``detail``, which always describe the state being written)."""
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
    if node is not None:
        row.node = node
    if gpus is not None:
        row.gpus = list(gpus)
    if restarts is not None:
        row.restarts = restarts
    row.error = error
    row.detail = detail
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


async def reassign(session: AsyncSession, replica_id: str, deployment_id: str) -> None:
    """A replica that reloaded another version's weights now belongs to that deployment."""
    await session.execute(
        update(ReplicaRow)
        .where(ReplicaRow.id == replica_id)
        .values(deployment_id=deployment_id, updated=now())
    )
