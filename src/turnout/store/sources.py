"""Which weight sources each org may sync from: S3 buckets/prefixes, local directories and
Hugging Face namespaces/repos, each with the name of the credentials to use (never a secret).

The operator writes them (``turnout admin org s3-allow`` ...); the registry judges a URI
against them (:mod:`turnout.registry.scope`).
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from turnout.store.records import Org, SourceGrant
from turnout.store.tables import SourceGrantRow
from turnout.store.tenants import now


def _grant(row: SourceGrantRow) -> SourceGrant:
    return SourceGrant(
        scheme=row.scheme, prefix=row.prefix, credentials=row.credentials, created=row.created
    )


async def allow(
    session: AsyncSession, org: Org, scheme: str, prefix: str, credentials: str | None
) -> SourceGrant:
    """Add a grant, or change the credentials of the one already there."""
    row = await session.scalar(
        select(SourceGrantRow).where(
            SourceGrantRow.org_id == org.id,
            SourceGrantRow.scheme == scheme,
            SourceGrantRow.prefix == prefix,
        )
    )
    if row is None:
        row = SourceGrantRow(org_id=org.id, scheme=scheme, prefix=prefix, created=now())
        session.add(row)
    row.credentials = credentials
    await session.flush()
    return _grant(row)


async def grants(session: AsyncSession, org_id: int) -> list[SourceGrant]:
    rows = await session.scalars(
        select(SourceGrantRow)
        .where(SourceGrantRow.org_id == org_id)
        .order_by(SourceGrantRow.scheme, SourceGrantRow.prefix)
    )
    return [_grant(r) for r in rows]


async def remove(session: AsyncSession, org: Org, scheme: str, prefix: str) -> bool:
    result = await session.execute(
        delete(SourceGrantRow).where(
            SourceGrantRow.org_id == org.id,
            SourceGrantRow.scheme == scheme,
            SourceGrantRow.prefix == prefix,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
