"""Model versions, their aliases, and idempotency records for operation-creating POSTs."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from turnout.errors import AliasTaken, NotFound
from turnout.ids import ALIAS_PATTERN, MAX_VERSION_NUMBER, full_match, version_number
from turnout.store.records import ModelVersion, Org, SyncStatus
from turnout.store.tables import IdempotencyRow, ModelVersionRow, OrgRow, VersionAliasRow
from turnout.store.tenants import now


async def _aliases(session: AsyncSession, version_ids: Sequence[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {vid: [] for vid in version_ids}
    if not version_ids:
        return out
    rows = await session.execute(
        select(VersionAliasRow.version_id, VersionAliasRow.alias)
        .where(VersionAliasRow.version_id.in_(version_ids))
        .order_by(VersionAliasRow.position, VersionAliasRow.alias)
    )
    for vid, alias in rows:
        out[vid].append(alias)
    return out


def _version(row: ModelVersionRow, org_name: str, aliases: Sequence[str]) -> ModelVersion:
    return ModelVersion(
        id=row.id,
        org_id=row.org_id,
        org_name=org_name,
        arch_id=row.arch_id,
        version_number=row.version_number,
        weight_uri=row.weight_uri,
        fingerprint_suffix=row.fingerprint_suffix,
        sync_status=SyncStatus(row.sync_status),
        sync_error=row.sync_error,
        bytes_done=row.bytes_done,
        bytes_total=row.bytes_total,
        digest=row.digest,
        weight_path=row.weight_path,
        aliases=tuple(aliases),
        created=row.created,
        updated=row.updated,
    )


async def _load(session: AsyncSession, rows: Sequence[ModelVersionRow]) -> list[ModelVersion]:
    aliases = await _aliases(session, [r.id for r in rows])
    names: dict[int, str] = {}
    for row in rows:
        if row.org_id not in names:
            org = await session.get(OrgRow, row.org_id)
            names[row.org_id] = org.name if org else ""
    return [_version(r, names[r.org_id], aliases[r.id]) for r in rows]


async def create_version(
    session: AsyncSession,
    org: Org,
    arch_id: str,
    *,
    weight_uri: str,
    fingerprint_suffix: str | None,
    aliases: Sequence[str],
) -> ModelVersion:
    # Deleted versions keep their rows, so max()+1 never reuses an id; the unique constraint
    # turns a concurrent upload's race into an IntegrityError the caller retries.
    highest = await session.scalar(
        select(func.max(ModelVersionRow.version_number)).where(
            ModelVersionRow.org_id == org.id, ModelVersionRow.arch_id == arch_id
        )
    )
    ts = now()
    row = ModelVersionRow(
        org_id=org.id,
        arch_id=arch_id,
        version_number=(highest or 0) + 1,
        weight_uri=weight_uri,
        fingerprint_suffix=fingerprint_suffix,
        sync_status=SyncStatus.QUEUED.value,
        bytes_done=0,
        bytes_total=0,
        created=ts,
        updated=ts,
    )
    session.add(row)
    await session.flush()
    await set_aliases(session, org, arch_id, row.id, aliases)
    return (await _load(session, [row]))[0]


async def list_versions(session: AsyncSession, org: Org, arch_id: str) -> list[ModelVersion]:
    rows = await session.scalars(
        select(ModelVersionRow)
        .where(
            ModelVersionRow.org_id == org.id,
            ModelVersionRow.arch_id == arch_id,
            ModelVersionRow.deleted.is_(None),
        )
        .order_by(ModelVersionRow.version_number)
    )
    return await _load(session, list(rows))


async def resolve_version(session: AsyncSession, org: Org, arch_id: str, ref: str) -> ModelVersion:
    """Find a live version by integer id or alias; 404 naming what was looked for."""
    query = select(ModelVersionRow).where(
        ModelVersionRow.org_id == org.id,
        ModelVersionRow.arch_id == arch_id,
        ModelVersionRow.deleted.is_(None),
    )
    number = version_number(ref)
    row = None
    if number is not None:
        what = f"version {ref}"
        if number <= MAX_VERSION_NUMBER:
            row = await session.scalar(query.where(ModelVersionRow.version_number == number))
    else:
        what = f"alias {ref!r}"
        # Anything that cannot be an alias names none: no need to ask the database (which may
        # refuse the text, e.g. a NUL byte on PostgreSQL).
        if full_match(ALIAS_PATTERN, ref):
            row = await session.scalar(
                query.join(VersionAliasRow, VersionAliasRow.version_id == ModelVersionRow.id).where(
                    VersionAliasRow.alias == ref
                )
            )
    if row is None:
        raise NotFound(
            f"{what} of architecture {arch_id!r} does not exist in org {org.name!r}; "
            f"list versions with GET /management/v1/orgs/{org.name}/models/{arch_id}/versions",
            param="version_id",
            code="version_not_found",
        )
    return (await _load(session, [row]))[0]


async def get_version_by_pk(session: AsyncSession, version_pk: int) -> ModelVersion | None:
    row = await session.get(ModelVersionRow, version_pk)
    return (await _load(session, [row]))[0] if row else None


async def set_aliases(
    session: AsyncSession, org: Org, arch_id: str, version_pk: int, aliases: Sequence[str]
) -> None:
    """Replace a version's alias set; 409 naming the holder if another version has one."""
    if aliases:
        held = await session.execute(
            select(VersionAliasRow.alias, ModelVersionRow.version_number)
            .join(ModelVersionRow, ModelVersionRow.id == VersionAliasRow.version_id)
            .where(
                VersionAliasRow.org_id == org.id,
                VersionAliasRow.arch_id == arch_id,
                VersionAliasRow.alias.in_(list(aliases)),
                VersionAliasRow.version_id != version_pk,
            )
        )
        for alias, number in held:
            raise AliasTaken(
                f"alias {alias!r} is held by version {number} of {arch_id}; remove it there "
                f"first (PATCH .../versions/{number} without it), then assign it here",
                param="version_aliases",
            )
    await session.execute(delete(VersionAliasRow).where(VersionAliasRow.version_id == version_pk))
    for position, alias in enumerate(aliases):
        session.add(
            VersionAliasRow(
                org_id=org.id,
                arch_id=arch_id,
                alias=alias,
                version_id=version_pk,
                position=position,
            )
        )
    await session.execute(
        update(ModelVersionRow).where(ModelVersionRow.id == version_pk).values(updated=now())
    )
    await session.flush()


async def mark_deleted(session: AsyncSession, version_pk: int) -> None:
    await session.execute(delete(VersionAliasRow).where(VersionAliasRow.version_id == version_pk))
    await session.execute(
        update(ModelVersionRow)
        .where(ModelVersionRow.id == version_pk)
        .values(deleted=now(), updated=now())
    )


async def versions_with_status(session: AsyncSession, *statuses: SyncStatus) -> list[ModelVersion]:
    rows = await session.scalars(
        select(ModelVersionRow)
        .where(
            ModelVersionRow.sync_status.in_([s.value for s in statuses]),
            ModelVersionRow.deleted.is_(None),
        )
        .order_by(ModelVersionRow.id)
    )
    return await _load(session, list(rows))


async def update_sync(
    session: AsyncSession,
    version_pk: int,
    *,
    status: SyncStatus,
    error: str | None = None,
    bytes_done: int | None = None,
    bytes_total: int | None = None,
    digest: str | None = None,
    weight_path: str | None = None,
) -> None:
    values: dict[str, object] = {"sync_status": status.value, "sync_error": error, "updated": now()}
    for name, value in (
        ("bytes_done", bytes_done),
        ("bytes_total", bytes_total),
        ("digest", digest),
        ("weight_path", weight_path),
    ):
        if value is not None:
            values[name] = value
    await session.execute(
        update(ModelVersionRow).where(ModelVersionRow.id == version_pk).values(**values)
    )


async def find_idempotent(
    session: AsyncSession, org: Org, route: str, key: str
) -> tuple[str, str] | None:
    """(body hash, resource id) recorded for this key, if any."""
    row = await session.get(IdempotencyRow, (org.id, route, key))
    return (row.body_hash, row.resource_id) if row else None


async def record_idempotent(
    session: AsyncSession, org: Org, route: str, key: str, body_hash: str, resource_id: str
) -> None:
    session.add(
        IdempotencyRow(
            org_id=org.id,
            route=route,
            key=key,
            body_hash=body_hash,
            resource_id=resource_id,
            created=now(),
        )
    )
    await session.flush()
