"""Who is calling: a bearer key resolved to its org, and the org-scope checks."""

from __future__ import annotations

from dataclasses import dataclass

from turnout.errors import NotFound, PermissionDenied, Unauthenticated
from turnout.ids import hash_key
from turnout.store import tenants
from turnout.store.db import Database
from turnout.store.records import KeyKind, Org


@dataclass(frozen=True, slots=True)
class Principal:
    org: Org
    key_id: str


async def authenticate(db: Database, authorization: str | None, kind: KeyKind) -> Principal:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            f"missing API key: send 'Authorization: Bearer <{kind.value} key>'; "
            "an operator creates one with `turnout admin key create`"
        )
    async with db.session() as s:
        key = await tenants.find_key_by_hash(s, hash_key(token.strip()))
        if key is None or key.kind != kind:
            raise Unauthenticated(
                f"the API key is not a valid {kind.value} key; check it, or ask an operator "
                "for a new one"
            )
        if key.revoked is not None:
            raise Unauthenticated(
                f"the API key {key.prefix}… was revoked; ask an operator for a new one",
                code="revoked_api_key",
            )
        org = await tenants.get_org(s, key.org_name)
    return Principal(org=org, key_id=key.id)


async def check_org(db: Database, principal: Principal, org_name: str) -> Org:
    """An org-scoped path: 404 for an unknown org, 403 for another org's."""
    if org_name == principal.org.name:
        return principal.org
    async with db.session() as s:
        if await tenants.find_org(s, org_name) is None:
            raise NotFound(
                f"org {org_name!r} does not exist", param="org_name", code="org_not_found"
            )
    raise PermissionDenied(
        f"this key belongs to org {principal.org.name!r} and cannot act on org {org_name!r}; "
        f"use a management key of {org_name!r}",
        param="org_name",
    )
