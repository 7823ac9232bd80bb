"""The routing generation and the gateways' acknowledgements of it (multi-process roles)."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from turnout.store.tables import GatewayRow, GatewayStatsRow, RoutingStateRow


async def routing_generation(session: AsyncSession) -> int:
    value = await session.scalar(select(RoutingStateRow.generation).where(RoutingStateRow.id == 1))
    return int(value or 0)


async def bump_routing_generation(session: AsyncSession) -> int:
    row = await session.get(RoutingStateRow, 1)
    if row is None:
        session.add(RoutingStateRow(id=1, generation=1))
        await session.flush()
        return 1
    await session.execute(
        update(RoutingStateRow)
        .where(RoutingStateRow.id == 1)
        .values(generation=RoutingStateRow.generation + 1)
    )
    return await routing_generation(session)


async def record_gateway(session: AsyncSession, gateway_id: str, generation: int) -> None:
    row = await session.get(GatewayRow, gateway_id)
    if row is None:
        session.add(GatewayRow(id=gateway_id, generation=generation, seen=time.time()))
    else:
        row.generation = generation
        row.seen = time.time()
    await session.flush()


async def lagging_gateways(
    session: AsyncSession, generation: int, alive_within: float
) -> list[str]:
    """Gateways seen recently that still serve a generation older than ``generation``."""
    rows = await session.execute(
        select(GatewayRow.id).where(
            GatewayRow.seen >= time.time() - alive_within, GatewayRow.generation < generation
        )
    )
    return [r[0] for r in rows]


async def record_gateway_stats(
    session: AsyncSession, gateway_id: str, stats: Mapping[str, Mapping[str, Any]]
) -> None:
    """One gateway's counters per deployment (cumulative, as JSON), replacing its last ones."""
    ts = time.time()
    for deployment_id, counters in stats.items():
        row = await session.get(GatewayStatsRow, (gateway_id, deployment_id))
        if row is None:
            session.add(
                GatewayStatsRow(
                    gateway_id=gateway_id,
                    deployment_id=deployment_id,
                    stats=dict(counters),
                    updated=ts,
                )
            )
    await session.flush()


async def gateway_stats(
    session: AsyncSession, deployment_ids: Collection[str]
) -> list[tuple[str, Mapping[str, Any]]]:
    """Every gateway's last counters of these deployments: (deployment id, counters) rows."""
    rows = await session.execute(
        select(GatewayStatsRow.deployment_id, GatewayStatsRow.stats).where(
            GatewayStatsRow.deployment_id.in_(list(deployment_ids))
        )
    )
    return [(deployment_id, counters) for deployment_id, counters in rows]
