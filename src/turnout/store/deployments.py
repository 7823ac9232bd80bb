"""Deployments (one request to put a version on an endpoint) and their step events.

A deployment's state and step change only through :func:`apply`, which asks the transition
table (:func:`turnout.states.advance`) and writes with a compare-and-set on the status it
read, so two writers (the API's cancel and the rollout worker) cannot both win.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict

from sqlalchemy import Select, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from turnout.errors import NotFound
from turnout.policy import SURGE, GateReading, RolloutPolicy, Verdict
from turnout.states import DeploymentState, Event, Status, Step, advance
from turnout.store.records import Deployment, DeploymentEvent, Endpoint
from turnout.store.tables import (
    DeploymentEventRow,
    DeploymentRow,
    EndpointRow,
    ModelVersionRow,
    OrgRow,
)
from turnout.store.tenants import now

log = logging.getLogger(__name__)


class LostRace(Exception):
    """Another writer changed the deployment between our read and our write."""

    def __init__(self, deployment_id: str, expected: Status, found: Status | None) -> None:
        super().__init__(
            f"deployment {deployment_id} moved from {expected} to {found or 'deleted'} "
            "while this change was being written"
        )
        self.deployment_id = deployment_id
        self.found = found


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
        policy=RolloutPolicy.from_json(row.policy),
        traffic_percent=row.traffic_percent or 0,
        gates=tuple(
            GateReading(
                g["name"], g["threshold"], g["reading"], Verdict(g["verdict"]), g.get("detail", "")
            )
            for g in row.gates or ()
        ),
    )


async def create_deployment(
    session: AsyncSession,
    *,
    deployment_id: str,
    endpoint: Endpoint,
    version_pk: int,
    alias_used: str | None,
    policy: RolloutPolicy = SURGE,
) -> Deployment:
    if session.get_bind().dialect.name == "postgresql":
        # Submissions take their seq one at a time (the lock is held to the commit), so
        # concurrent deploys get distinct numbers in commit order without retrying. The
        # unique constraint stays the guard (SQLite writers serialize on their own).
        await session.execute(text("SELECT pg_advisory_xact_lock(774213)"))
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
            state=DeploymentState.NOT_STARTED,
            step=Step.SUBMITTED,
            created=ts,
            updated=ts,
            policy=None if policy == SURGE else policy.to_json(),
        )
    )
    await session.flush()
    # The endpoint's `updated` (reference §1.7) moves with every deployment submitted to it.
    await session.execute(
        update(EndpointRow)
        .where(EndpointRow.endpoint_id == endpoint.endpoint_id)
        .values(updated=ts)
    )
    await add_event(session, deployment_id, Step.SUBMITTED, "deployment queued")
    return await get_deployment(session, deployment_id)


async def find_deployment(session: AsyncSession, deployment_id: str) -> Deployment | None:
    found = (
        await session.execute(_deployments_query().where(DeploymentRow.id == deployment_id))
    ).first()
    return _deployment(*found) if found else None


def deployment_not_found(deployment_id: str) -> NotFound:
    return NotFound(
        f"deployment {deployment_id!r} does not exist or your org cannot see it; list an "
        "endpoint's deployments with GET /management/v1/endpoints/{id}/deployments",
        param="deployment_id",
        code="deployment_not_found",
    )


async def get_deployment(session: AsyncSession, deployment_id: str) -> Deployment:
    found = await find_deployment(session, deployment_id)
    if found is None:
        raise deployment_not_found(deployment_id)
    return found


async def list_deployments(
    session: AsyncSession,
    *,
    endpoint_id: str | None = None,
    states: Collection[DeploymentState] = (),
) -> list[Deployment]:
    """Newest first."""
    query = _deployments_query()
    if endpoint_id is not None:
        query = query.where(DeploymentRow.endpoint_id == endpoint_id)
    if states:
        query = query.where(DeploymentRow.state.in_(list(states)))
    rows = await session.execute(query.order_by(DeploymentRow.seq.desc()))
    return [_deployment(*row) for row in rows]


async def version_numbers(session: AsyncSession, deployment_ids: Collection[str]) -> dict[str, int]:
    """The version number each deployment puts on its endpoint."""
    if not deployment_ids:
        return {}
    rows = await session.execute(
        select(DeploymentRow.id, ModelVersionRow.version_number)
        .join(ModelVersionRow, ModelVersionRow.id == DeploymentRow.version_id)
        .where(DeploymentRow.id.in_(list(deployment_ids)))
    )
    return {deployment_id: number for deployment_id, number in rows}


async def version_in_use(
    session: AsyncSession, version_pk: int, active_states: Collection[DeploymentState]
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


async def apply(
    session: AsyncSession,
    deployment_id: str,
    event: Event,
    *,
    step: Step | None = None,
    message: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    attempts: int = 3,
) -> Deployment:
    """Move a deployment by ``event`` (to ``step``), as the transition table allows.

    The write is a compare-and-set on the status just read. When another writer moved the
    deployment in between (the worker's next step under a cancel, or a cancel under a step),
    the event is judged again against the status it now has: a cancel that arrives as traffic
    switches becomes illegal, a step after a cancel too. Raises
    :class:`~turnout.states.IllegalTransition` for a move the table forbids (nothing is
    written), NotFound for a deployment that no longer exists, and :class:`LostRace` only if
    the status kept moving for ``attempts`` tries. ``message`` is recorded as an event.
    """
    for attempt in range(1, attempts + 1):
        current = await get_deployment(session, deployment_id)
        expected = Status(current.state, current.step)
        new = advance(expected, event, step)
        values: dict[str, object] = {"state": new.state, "step": new.step, "updated": now()}
        if error_code is not None:
            values.update(error_code=error_code, error_message=error_message)
        result = await session.execute(
            update(DeploymentRow)
            .where(
                DeploymentRow.id == deployment_id,
                DeploymentRow.state == expected.state,
                DeploymentRow.step == expected.step,
            )
            .values(**values)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            if message is not None:
                await add_event(session, deployment_id, _event_label(new), message)
            return await get_deployment(session, deployment_id)
        log.info(
            "deployment %s moved while %s was written (try %d of %d); judging again",
            deployment_id,
            event,
            attempt,
            attempts,
        )
    found = await find_deployment(session, deployment_id)
    raise LostRace(deployment_id, expected, Status(found.state, found.step) if found else None)


async def set_traffic(session: AsyncSession, deployment_id: str, percent: int) -> None:
    """The new version's share of the endpoint's traffic (a canary's weight)."""
    await session.execute(
        update(DeploymentRow)
        .where(DeploymentRow.id == deployment_id)
        .values(traffic_percent=percent, updated=now())
    )


async def set_gates(
    session: AsyncSession, deployment_id: str, readings: Sequence[GateReading]
) -> None:
    await session.execute(
        update(DeploymentRow)
        .where(DeploymentRow.id == deployment_id)
        .values(gates=[asdict(r) for r in readings])
    )


def _event_label(status: Status) -> str:
    """The history's label: the step while it runs or once it completed ("done"), else the
    state it ended in ("failed", "cancelled")."""
    if status.state in (DeploymentState.IN_PROGRESS, DeploymentState.COMPLETE):
        return status.step.value
    return status.state.value


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


async def events_of(
    session: AsyncSession, deployment_ids: Collection[str]
) -> dict[str, list[DeploymentEvent]]:
    """The histories of several deployments in one query, each oldest first."""
    found: dict[str, list[DeploymentEvent]] = {d: [] for d in deployment_ids}
    if not found:
        return found
    rows = await session.scalars(
        select(DeploymentEventRow)
        .where(DeploymentEventRow.deployment_id.in_(list(found)))
        .order_by(DeploymentEventRow.id)
    )
    for r in rows:
        found[r.deployment_id].append(DeploymentEvent(at=r.at, step=r.step, message=r.message))
    return found
