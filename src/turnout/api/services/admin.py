"""Operator actions: orgs, keys, architecture grants, endpoints. Used by the admin CLI (on the
store directly) and by ``/admin/v1``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from turnout.api.schemas import admin as wire
from turnout.errors import BadRequest, NotFound
from turnout.ids import KEY_ID_PATTERN, NAME_PATTERN, full_match, hash_key, new_key, new_key_id
from turnout.placement.engines import EngineCatalog
from turnout.registry.architectures import (
    BUILTIN_ARCHITECTURES,
    Architecture,
    get_architecture,
    gpus_per_replica,
)
from turnout.registry.scope import grant_key, grant_uri
from turnout.states import ACTIVE, Event, IllegalTransition
from turnout.store import deployments, sources, tenants
from turnout.store import endpoints as endpoints_repo
from turnout.store import replicas as replica_rows
from turnout.store.db import Database
from turnout.store.records import ApiKey, ArchitectureRecord, Endpoint, KeyKind, Org, SourceGrant


def catalog_records() -> list[ArchitectureRecord]:
    return [
        ArchitectureRecord(a.arch_id, a.description, dict(a.config), asdict(a.serving))
        for a in BUILTIN_ARCHITECTURES
    ]


def _check_name(value: str, what: str, param: str) -> None:
    if not full_match(NAME_PATTERN, value):
        raise BadRequest(
            f"{what} {value!r} is not a valid name: use 2-128 lowercase letters, digits, '.' "
            "or '-', starting with a letter and ending with a letter or digit",
            param=param,
        )


def _key_out(key: ApiKey, token: str | None = None) -> wire.KeyOut:
    """``token`` only in the response that creates the key: it is never stored."""
    return wire.KeyOut(
        id=key.id,
        org=key.org_name,
        kind=key.kind,
        prefix=key.prefix,
        created=key.created,
        revoked=key.revoked,
        rpm=key.rpm,
        tpm=key.tpm,
        key=token,
    )


def _org_out(org: Org, archs: list[str]) -> wire.OrgOut:
    return wire.OrgOut(
        name=org.name, created=org.created, architectures=archs, max_concurrent=org.max_concurrent
    )


def _endpoint_out(e: Endpoint) -> wire.EndpointOut:
    return wire.EndpointOut(
        endpoint_id=e.endpoint_id,
        org=e.org_name,
        arch=e.arch_id,
        replicas=e.replicas,
        engine=e.engine,
        gpus_per_replica=gpus_per_replica(e.arch_id, e.gpus_per_replica),
        created=e.created,
        serving_deployment_id=e.serving_deployment_id,
        replica_problem=e.replica_problem,
    )


def _source_out(org: str, grant: SourceGrant) -> wire.SourceOut:
    return wire.SourceOut(
        org=org,
        scheme=grant.scheme,
        uri=grant_uri(grant.scheme, grant.prefix),
        credentials=grant.credentials,
        created=grant.created,
    )


def _nothing() -> None:
    """No worker in this process to tell: it notices on its next pass."""


def _architecture(arch_id: str) -> Architecture:
    arch = get_architecture(arch_id)
    if arch is None:
        known = ", ".join(a.arch_id for a in BUILTIN_ARCHITECTURES)
        raise NotFound(
            f"architecture {arch_id!r} is not in the catalog; use one of {known}",
            param="arch",
            code="architecture_not_found",
        )
    return arch


class AdminService:
    """The architecture catalog is :mod:`turnout.registry.architectures` (the store keeps a
    seeded copy only so grants and versions can reference architecture ids)."""

    def __init__(
        self,
        db: Database,
        engines: EngineCatalog | None = None,
        *,
        on_keys_changed: Callable[[], None] = _nothing,
        on_endpoint_deleted: Callable[[], None] = _nothing,
    ) -> None:
        self.db = db
        self.engines = engines or EngineCatalog()
        self.on_keys_changed = on_keys_changed
        self.on_endpoint_deleted = on_endpoint_deleted

    async def seed(self) -> None:
        async with self.db.session() as s:
            await tenants.seed_architectures(s, catalog_records())

    async def create_org(self, name: str) -> wire.OrgOut:
        _check_name(name, "org name", "name")
        async with self.db.session() as s:
            org = await tenants.create_org(s, name)
            for arch in BUILTIN_ARCHITECTURES:
                await tenants.grant(s, org, arch.arch_id)
            archs = await tenants.granted_architectures(s, org)
        return _org_out(org, archs)

    async def list_orgs(self) -> wire.OrgList:
        async with self.db.session() as s:
            out = []
            for org in await tenants.list_orgs(s):
                archs = await tenants.granted_architectures(s, org)
                out.append(_org_out(org, archs))
        return wire.OrgList(orgs=out)

    async def create_key(self, org_name: str, kind: str) -> wire.KeyOut:
        try:
            key_kind = KeyKind(kind)
        except ValueError:
            raise BadRequest(
                f"key kind {kind!r} is unknown; use management or inference", param="kind"
            ) from None
        token = new_key(key_kind.value)
        async with self.db.session() as s:
            org = await tenants.get_org(s, org_name)
            key = await tenants.add_key(
                s,
                org,
                key_id=new_key_id(),
                kind=key_kind,
                key_hash=hash_key(token),
                prefix=token[:8],
            )
        self.on_keys_changed()
        return _key_out(key, token)

    async def list_keys(self, org_name: str | None) -> wire.KeyList:
        async with self.db.session() as s:
            org = await tenants.get_org(s, org_name) if org_name else None
            keys = await tenants.list_keys(s, org)
        return wire.KeyList(keys=[_key_out(k) for k in keys])

    async def revoke_key(self, key_id: str) -> wire.KeyOut:
        if not full_match(KEY_ID_PATTERN, key_id):  # not an id we give out: names no key
            raise NotFound(f"key {key_id!r} does not exist", param="key_id")
        async with self.db.session() as s:
            key = await tenants.revoke_key(s, key_id)
        self.on_keys_changed()
        return _key_out(key)

    async def limit_key(self, key_id: str, update: wire.KeyLimitUpdate) -> wire.KeyOut:
        """Set an inference key's requests and tokens per minute; the gateways apply them on
        their next key refresh (about a second)."""
        given = update.model_fields_set
        async with self.db.session() as s:
            key = await tenants.get_key(s, key_id)
            key = await tenants.set_key_limits(
                s,
                key_id,
                rpm=update.rpm if "rpm" in given else key.rpm,
                tpm=update.tpm if "tpm" in given else key.tpm,
            )
        self.on_keys_changed()
        return _key_out(key)

    async def limit_org(self, org_name: str, update: wire.OrgLimitUpdate) -> wire.OrgOut:
        """Cap an org's requests in flight, over all its endpoints, on each gateway."""
        async with self.db.session() as s:
            org = await tenants.get_org(s, org_name)
            if "max_concurrent" in update.model_fields_set:
                org = await tenants.set_org_limits(
                    s, org_name, max_concurrent=update.max_concurrent
                )
            archs = await tenants.granted_architectures(s, org)
        self.on_keys_changed()
        return _org_out(org, archs)

    async def list_architectures(self) -> wire.ArchList:
        return wire.ArchList(
            architectures=[
                wire.ArchOut(
                    arch_id=a.arch_id,
                    description=a.description,
                    config=dict(a.config),
                    serving=asdict(a.serving),
                )
                for a in BUILTIN_ARCHITECTURES
            ]
        )

    async def grant(self, arch_id: str, org_name: str) -> wire.OrgOut:
        _architecture(arch_id)
        async with self.db.session() as s:
            org = await tenants.get_org(s, org_name)
            await tenants.grant(s, org, arch_id)
            archs = await tenants.granted_architectures(s, org)
        return _org_out(org, archs)

    async def create_endpoint(self, req: wire.EndpointCreate) -> wire.EndpointOut:
        _check_name(req.endpoint_id, "endpoint id", "endpoint_id")
        async with self.db.session() as s:
            org = await tenants.get_org(s, req.org)
            engine = req.engine or _architecture(req.arch).serving.engine
            if engine not in self.engines.names():
                raise BadRequest(
                    f"engine {engine!r} is unknown; use one of {', '.join(self.engines.names())}"
                    " (operators add engines with TURNOUT_ENGINE_TEMPLATES)",
                    param="engine",
                )
            if not await tenants.is_granted(s, org, req.arch):
                raise BadRequest(
                    f"org {org.name!r} may not use architecture {req.arch!r}; grant it with "
                    f"`turnout admin arch grant {req.arch} --org {org.name}`",
                    param="arch",
                )
            endpoint = await endpoints_repo.create_endpoint(
                s,
                req.endpoint_id,
                org,
                req.arch,
                replicas=req.replicas,
                engine=engine,
                gpus_per_replica=req.gpus_per_replica,
            )
        return _endpoint_out(endpoint)

    async def list_endpoints(self) -> wire.EndpointOutList:
        async with self.db.session() as s:
            endpoints = await endpoints_repo.list_endpoints(s)
        return wire.EndpointOutList(endpoints=[_endpoint_out(e) for e in endpoints])

    async def list_replicas(self, endpoint_id: str | None = None) -> wire.ReplicaList:
        async with self.db.session() as s:
            rows = await replica_rows.list_replicas(s, endpoint_id=endpoint_id)
            numbers = await deployments.version_numbers(s, {r.deployment_id for r in rows})
        return wire.ReplicaList(
            replicas=[
                wire.ReplicaOut(
                    replica_id=r.id,
                    endpoint_id=r.endpoint_id,
                    deployment_id=r.deployment_id,
                    version_id=numbers.get(r.deployment_id),
                    node=r.node,
                    address=r.address,
                    gpus=list(r.gpus),
                    state=r.state.value,
                    error=r.error,
                    detail=r.detail,
                    restarts=r.restarts,
                )
                for r in rows
            ]
        )

    # -- weight sources an org may sync from (registry/scope.py) ------------------------------

    async def allow_source(
        self, org_name: str, uri: str, credentials: str | None
    ) -> wire.SourceOut:
        scheme, prefix = grant_key(uri)
        if scheme == "file" and credentials:
            raise BadRequest("local directories take no credentials", param="credentials")
        async with self.db.session() as s:
            org = await tenants.get_org(s, org_name)
            grant = await sources.allow(s, org, scheme, prefix, credentials)
        return _source_out(org.name, grant)

    async def list_sources(self, org_name: str) -> wire.SourceList:
        async with self.db.session() as s:
            org = await tenants.get_org(s, org_name)
            found = await sources.grants(s, org.id)
        return wire.SourceList(sources=[_source_out(org.name, g) for g in found])

    async def remove_source(self, org_name: str, uri: str) -> wire.SourceList:
        scheme, prefix = grant_key(uri)
        async with self.db.session() as s:
            org = await tenants.get_org(s, org_name)
            if not await sources.remove(s, org, scheme, prefix):
                raise NotFound(
                    f"org {org.name!r} has no grant for {grant_uri(scheme, prefix)}; list them "
                    f"with `turnout admin org sources {org.name}`",
                    param="uri",
                )
        return await self.list_sources(org_name)

    async def deployment(self, deployment_id: str) -> wire.DeploymentDetail:
        """The operator's view: the stored error and events as written, log lines included."""
        async with self.db.session() as s:
            d = await deployments.get_deployment(s, deployment_id)
            events = await deployments.list_events(s, deployment_id)
        return wire.DeploymentDetail(
            deployment_id=d.id,
            endpoint_id=d.endpoint_id,
            org=d.org_name,
            version_id=d.version_number,
            state=d.state.value,
            step=d.step.value,
            error_code=d.error_code,
            error_message=d.error_message,
            events=[f"{e.at:.3f} {e.step}: {e.message}" for e in events],
        )

    async def delete_endpoint(self, endpoint_id: str) -> wire.EndpointOut:
        """Cancel the endpoint's queued and running deployments and delete it; the rollout
        worker's next pass takes it out of routing (new requests get 404), lets in-flight
        requests finish and stops its replicas."""
        async with self.db.session() as s:
            endpoint = await endpoints_repo.find_endpoint(s, endpoint_id)
            if endpoint is None:
                raise NotFound(f"endpoint {endpoint_id!r} does not exist", param="endpoint_id")
            for d in await deployments.list_deployments(s, endpoint_id=endpoint_id, states=ACTIVE):
                try:
                    await deployments.apply(
                        s,
                        d.id,
                        Event.CANCEL,
                        message="cancelled: the endpoint is being deleted",
                        error_code="endpoint_deleted",
                        error_message="the endpoint was deleted",
                    )
                except IllegalTransition:
                    pass  # switched already: it goes with the endpoint
            await endpoints_repo.delete_endpoint(s, endpoint_id)
        self.on_endpoint_deleted()
        return _endpoint_out(endpoint)
