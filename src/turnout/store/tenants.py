"""Orgs, their keys, the architecture catalog and which org may use which architecture."""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from turnout.errors import BadRequest, Conflict, NotFound
from turnout.ids import NAME_PATTERN, full_match
from turnout.store.records import ApiKey, ArchitectureRecord, KeyGrant, KeyKind, Org
from turnout.store.tables import ApiKeyRow, ArchGrantRow, ArchitectureRow, OrgRow


def now() -> int:
    return int(time.time())


def _org(row: OrgRow) -> Org:
    return Org(id=row.id, name=row.name, created=row.created, max_concurrent=row.max_concurrent)


async def create_org(session: AsyncSession, name: str) -> Org:
    if await find_org(session, name) is not None:
        raise Conflict(f"org {name!r} already exists; pick another name", param="name")
    row = OrgRow(name=name, created=now())
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"org {name!r} already exists; pick another name", param="name") from exc
    return _org(row)


async def find_org(session: AsyncSession, name: str) -> Org | None:
    if not full_match(NAME_PATTERN, name):
        return None  # names none; and PostgreSQL refuses some text (a NUL byte) outright
    row = await session.scalar(select(OrgRow).where(OrgRow.name == name))
    return _org(row) if row else None


async def get_org(session: AsyncSession, name: str) -> Org:
    org = await find_org(session, name)
    if org is None:
        raise NotFound(
            f"org {name!r} does not exist; list orgs with `turnout admin org list`", param="org"
        )
    return org


async def list_orgs(session: AsyncSession) -> list[Org]:
    rows = await session.scalars(select(OrgRow).order_by(OrgRow.id))
    return [_org(r) for r in rows]


def _key(row: ApiKeyRow, org_name: str) -> ApiKey:
    return ApiKey(
        id=row.id,
        org_id=row.org_id,
        org_name=org_name,
        kind=KeyKind(row.kind),
        prefix=row.prefix,
        created=row.created,
        revoked=row.revoked,
        rpm=row.rpm,
        tpm=row.tpm,
    )


async def add_key(
    session: AsyncSession, org: Org, *, key_id: str, kind: KeyKind, key_hash: str, prefix: str
) -> ApiKey:
    row = ApiKeyRow(
        id=key_id, org_id=org.id, kind=kind.value, key_hash=key_hash, prefix=prefix, created=now()
    )
    session.add(row)
    await session.flush()
    return _key(row, org.name)


async def find_key_by_hash(session: AsyncSession, key_hash: str) -> ApiKey | None:
    found = (
        await session.execute(
            select(ApiKeyRow, OrgRow.name)
            .join(OrgRow, OrgRow.id == ApiKeyRow.org_id)
            .where(ApiKeyRow.key_hash == key_hash)
        )
    ).first()
    return _key(found[0], found[1]) if found else None


async def list_keys(session: AsyncSession, org: Org | None = None) -> list[ApiKey]:
    query = select(ApiKeyRow, OrgRow.name).join(OrgRow, OrgRow.id == ApiKeyRow.org_id)
    if org is not None:
        query = query.where(ApiKeyRow.org_id == org.id)
    rows = await session.execute(query.order_by(ApiKeyRow.created, ApiKeyRow.id))
    return [_key(row, name) for row, name in rows]


async def active_key_hashes(session: AsyncSession, kind: KeyKind) -> dict[str, str]:
    """key hash -> org name for every unrevoked key of one kind (the gateway's key cache)."""
    rows = await session.execute(
        select(ApiKeyRow.key_hash, OrgRow.name)
        .join(OrgRow, OrgRow.id == ApiKeyRow.org_id)
        .where(ApiKeyRow.kind == kind.value, ApiKeyRow.revoked.is_(None))
    )
    return {key_hash: name for key_hash, name in rows}


async def active_inference_keys(session: AsyncSession) -> list[KeyGrant]:
    """Every unrevoked inference key with its limits and its org's (the gateway's key cache)."""
    rows = await session.execute(
        select(ApiKeyRow, OrgRow.name, OrgRow.max_concurrent)
        .join(OrgRow, OrgRow.id == ApiKeyRow.org_id)
        .where(ApiKeyRow.kind == KeyKind.INFERENCE.value, ApiKeyRow.revoked.is_(None))
    )
    return [
        KeyGrant(row.key_hash, row.id, name, row.rpm, row.tpm, max_concurrent)
        for row, name, max_concurrent in rows
    ]


async def _key_row(session: AsyncSession, key_id: str) -> ApiKeyRow:
    row = await session.get(ApiKeyRow, key_id)
    if row is None:
        raise NotFound(
            f"key {key_id!r} does not exist; list keys with `turnout admin key list --org ORG`",
            param="key_id",
        )
    return row


async def get_key(session: AsyncSession, key_id: str) -> ApiKey:
    row = await _key_row(session, key_id)
    org = await session.get(OrgRow, row.org_id)
    return _key(row, org.name if org else "")


async def set_key_limits(
    session: AsyncSession, key_id: str, *, rpm: int | None, tpm: int | None
) -> ApiKey:
    """Set an inference key's limits (None: no limit)."""
    row = await _key_row(session, key_id)
    if row.kind != KeyKind.INFERENCE.value:
        raise BadRequest(
            f"key {key_id!r} is a {row.kind} key; limits apply to inference keys",
            param="key_id",
        )
    row.rpm, row.tpm = rpm, tpm
    await session.flush()
    org = await session.get(OrgRow, row.org_id)
    return _key(row, org.name if org else "")


async def set_org_limits(session: AsyncSession, name: str, *, max_concurrent: int | None) -> Org:
    row = await session.scalar(select(OrgRow).where(OrgRow.name == name))
    if row is None:
        raise NotFound(
            f"org {name!r} does not exist; list orgs with `turnout admin org list`", param="org"
        )
    row.max_concurrent = max_concurrent
    await session.flush()
    return _org(row)


async def revoke_key(session: AsyncSession, key_id: str) -> ApiKey:
    row = await _key_row(session, key_id)
    if row.revoked is None:
        row.revoked = now()
    org = await session.get(OrgRow, row.org_id)
    return _key(row, org.name if org else "")


async def seed_architectures(session: AsyncSession, records: Iterable[ArchitectureRecord]) -> None:
    """Make the stored catalog equal the built-in one (insert or update, never delete)."""
    for rec in records:
        row = await session.get(ArchitectureRow, rec.arch_id)
        if row is None:
            row = ArchitectureRow(arch_id=rec.arch_id)
            session.add(row)
        row.description = rec.description
        row.config = dict(rec.config)
        row.serving = dict(rec.serving)
    await session.flush()


async def grant(session: AsyncSession, org: Org, arch_id: str) -> None:
    """Callers check ``arch_id`` against the catalog; the foreign key backs them up."""
    if await session.get(ArchGrantRow, (org.id, arch_id)) is None:
        session.add(ArchGrantRow(org_id=org.id, arch_id=arch_id))
        await session.flush()


async def granted_architectures(session: AsyncSession, org: Org) -> list[str]:
    rows = await session.scalars(
        select(ArchGrantRow.arch_id).where(ArchGrantRow.org_id == org.id).order_by("arch_id")
    )
    return list(rows)


async def is_granted(session: AsyncSession, org: Org, arch_id: str) -> bool:
    return await session.get(ArchGrantRow, (org.id, arch_id)) is not None
