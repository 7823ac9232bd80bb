"""Model versions: upload, status, aliases, delete (reference §1.1–§1.6)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol
from urllib.parse import unquote, urlsplit

from turnout.api.schemas import versions as wire
from turnout.api.schemas.architectures import ArchitectureList
from turnout.api.schemas.base import OperationError
from turnout.api.services.auth import Principal, check_org
from turnout.api.services.races import run_again_on_race
from turnout.api.services.redact import tenant_text
from turnout.errors import Conflict, NotFound, ValidationFailed, VersionInUse
from turnout.ids import ALIAS_PATTERN, FINGERPRINT_SUFFIX_PATTERN, full_match
from turnout.registry.architectures import get_architecture
from turnout.registry.scope import Grant
from turnout.states import ACTIVE
from turnout.store import deployments, sources, tenants, versions
from turnout.store.db import Database
from turnout.store.records import ModelVersion, Org, SyncStatus


class SourceCheck(Protocol):
    """Raises SourceNotAllowed (403) or BadRequest for a URI ``org`` may not sync from."""

    def __call__(self, uri: str, org: str, grants: list[Grant]) -> None: ...


def sync_error_text(v: ModelVersion) -> str:
    """The version's sync error as the tenant sees it: its own URI stays readable, other
    server paths do not reach it."""
    own = (v.weight_uri, unquote(urlsplit(v.weight_uri).path))
    return tenant_text(v.sync_error or "sync failed", keep=own)


def version_schema(v: ModelVersion) -> wire.ModelVersion:
    status = v.sync_status
    error = None
    if status is SyncStatus.FAILED:
        error = OperationError(code="sync_failed", message=sync_error_text(v))
    return wire.ModelVersion(
        name=v.name,
        done=status in (SyncStatus.DONE, SyncStatus.FAILED),
        response=wire.ModelVersionStatus(
            customer_s3_uri=v.weight_uri,
            version_aliases=list(v.aliases),
            sync_status=status.value,
            system_fingerprint_suffix=v.fingerprint_suffix,
            sync_progress=wire.SyncProgress(bytes_done=v.bytes_done, bytes_total=v.bytes_total),
            digest=v.digest,
            created=v.created,
            updated=v.updated,
        ),
        error=error,
    )


def check_aliases(aliases: list[str], param: str) -> None:
    """The schema checks the pattern already; this is the service's own guard (and the one
    check the schema cannot express: no alias twice). Both are schema violations: 422."""
    for i, alias in enumerate(aliases):
        if not full_match(ALIAS_PATTERN, alias):
            raise ValidationFailed(
                f"{param}.{i}: alias {alias!r} does not match {ALIAS_PATTERN.pattern}: 2-128 "
                "characters, starting with a lowercase letter, ending with a lowercase letter "
                "or digit",
                param=f"{param}.{i}",
            )
    if len(set(aliases)) != len(aliases):
        raise ValidationFailed(f"{param}: lists an alias twice", param=param)


def body_hash(payload: str) -> str:
    return hashlib.sha256(payload.encode()).hexdigest()


class ModelsService:
    def __init__(self, db: Database, check_source: SourceCheck, on_queued: Callable[[], None]):
        self.db = db
        self.check_source = check_source
        self.on_queued = on_queued

    async def list_architectures(self, principal: Principal, org_name: str) -> ArchitectureList:
        org = await check_org(self.db, principal, org_name)
        async with self.db.session() as s:
            return ArchitectureList(model_architectures=await tenants.granted_architectures(s, org))

    async def _granted_org(self, principal: Principal, org_name: str, arch_id: str) -> Org:
        org = await check_org(self.db, principal, org_name)
        async with self.db.session() as s:
            if get_architecture(arch_id) is None:
                raise NotFound(
                    f"architecture {arch_id!r} does not exist; list them with "
                    "`turnout admin arch list` or GET /management/v1/orgs/{org}/models",
                    param="model_arch_id",
                )
            if not await tenants.is_granted(s, org, arch_id):
                raise NotFound(
                    f"architecture {arch_id!r} is not available to org {org.name!r}; list the "
                    f"available ones with GET /management/v1/orgs/{org.name}/models",
                    param="model_arch_id",
                    code="architecture_not_found",
                )
        return org

    async def upload(
        self, principal: Principal, org_name: str, req: wire.UploadRequest, idem_key: str | None
    ) -> wire.ModelVersion:
        org = await self._granted_org(principal, org_name, req.model_arch_id)
        check_aliases(req.model.version_aliases, "model.version_aliases")
        suffix = req.model.system_fingerprint_suffix
        if suffix is not None and not full_match(FINGERPRINT_SUFFIX_PATTERN, suffix):
            raise ValidationFailed(
                f"model.system_fingerprint_suffix: {suffix!r} must match "
                f"{FINGERPRINT_SUFFIX_PATTERN.pattern}",
                param="model.system_fingerprint_suffix",
            )
        async with self.db.session() as s:
            own = [
                Grant(g.scheme, g.prefix, g.credentials) for g in await sources.grants(s, org.id)
            ]
        self.check_source(req.model.weight_uri, org.name, own)
        digest = body_hash(req.model_dump_json())

        async def create() -> tuple[wire.ModelVersion, bool]:
            async with self.db.session() as s:
                if idem_key:
                    found = await versions.find_idempotent(s, org, "models:upload", idem_key)
                    if found:
                        return await self._replay(s, found, digest, idem_key), False
                version = await versions.create_version(
                    s,
                    org,
                    req.model_arch_id,
                    weight_uri=req.model.weight_uri,
                    fingerprint_suffix=suffix,
                    aliases=req.model.version_aliases,
                )
                if idem_key:
                    await versions.record_idempotent(
                        s, org, "models:upload", idem_key, digest, str(version.id)
                    )
            return version_schema(version), True

        # A concurrent upload may take the same version number (or idempotency key) first.
        created, new = await run_again_on_race("models:upload", create)
        if new:
            self.on_queued()
        return created

    async def _replay(
        self, s: object, found: tuple[str, str], digest: str, idem_key: str
    ) -> wire.ModelVersion:
        stored_hash, resource_id = found
        if stored_hash != digest:
            raise Conflict(
                f"Idempotency-Key {idem_key!r} was used with a different body; use a new key",
                code="idempotency_key_reused",
            )
        version = await versions.get_version_by_pk(s, int(resource_id))  # type: ignore[arg-type]
        if version is None:
            raise NotFound("the version created with this Idempotency-Key was deleted")
        return version_schema(version)

    async def list_versions(
        self, principal: Principal, org_name: str, arch_id: str
    ) -> wire.ModelVersionList:
        org = await self._granted_org(principal, org_name, arch_id)
        async with self.db.session() as s:
            found = await versions.list_versions(s, org, arch_id)
        return wire.ModelVersionList(model_versions=[version_schema(v) for v in found])

    async def get_version(
        self, principal: Principal, org_name: str, arch_id: str, ref: str
    ) -> wire.ModelVersion:
        org = await self._granted_org(principal, org_name, arch_id)
        async with self.db.session() as s:
            return version_schema(await versions.resolve_version(s, org, arch_id, ref))

    async def set_aliases(
        self, principal: Principal, org_name: str, arch_id: str, ref: str, req: wire.AliasUpdate
    ) -> wire.AliasUpdateResponse:
        org = await self._granted_org(principal, org_name, arch_id)
        check_aliases(req.version_aliases, "version_aliases")
        async with self.db.session() as s:
            version = await versions.resolve_version(s, org, arch_id, ref)
            await versions.set_aliases(s, org, arch_id, version.id, req.version_aliases)
        return wire.AliasUpdateResponse(name=version.name, version_aliases=req.version_aliases)

    async def delete_version(
        self, principal: Principal, org_name: str, arch_id: str, ref: str
    ) -> wire.VersionDeleted:
        org = await self._granted_org(principal, org_name, arch_id)
        async with self.db.session() as s:
            version = await versions.resolve_version(s, org, arch_id, ref)
            endpoint = await deployments.version_in_use(s, version.id, ACTIVE)
            if endpoint:
                raise VersionInUse(
                    f"{version.name} is serving on, or being deployed to, endpoint {endpoint!r}; "
                    "deploy another version there (or cancel the deployment) first",
                    param="version_id",
                )
            await versions.mark_deleted(s, version.id)
        return wire.VersionDeleted(name=version.name, deleted=True)
