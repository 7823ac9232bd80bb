"""The routing generation and the gateways' acknowledgements of it (multi-process roles)."""

from __future__ import annotations

import time

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from turnout.store.tables import GatewayRow, RoutingStateRow


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
