"""``/admin/v1``: the operator's API, guarded by TURNOUT_ADMIN_TOKEN (same operations as
`turnout admin`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from turnout.api.deps import ServicesDep, require_admin
from turnout.api.errors import error_responses
from turnout.api.schemas import admin as wire

# Every route: 401 without TURNOUT_ADMIN_TOKEN, 422 for a schema violation; each route lists
# what else it can answer. A JSON body adds 400 (not JSON, or a bad value) and 413 (too large).
router = APIRouter(
    prefix="/admin/v1",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 422),
)
BODY = error_responses(400, 413)


@router.post(
    "/orgs",
    summary="Create an org (granted the built-in architectures)",
    responses={**BODY, **error_responses(409)},
)
async def create_org(body: wire.OrgCreate, s: ServicesDep) -> wire.OrgOut:
    return await s.admin.create_org(body.name)


@router.get("/orgs", summary="List orgs")
async def list_orgs(s: ServicesDep) -> wire.OrgList:
    return await s.admin.list_orgs()


@router.post(
    "/orgs/{org_name}:limit",
    summary="Cap an org's requests in flight (null: no limit)",
    responses={**BODY, **error_responses(404)},
)
async def limit_org(org_name: str, body: wire.OrgLimitUpdate, s: ServicesDep) -> wire.OrgOut:
    return await s.admin.limit_org(org_name, body)


@router.post(
    "/orgs/{org}/sources",
    summary="Let an org sync weights from an S3 prefix, a local directory or a HF namespace",
    responses={**BODY, **error_responses(404)},
)
async def allow_source(org: str, body: wire.SourceAllow, s: ServicesDep) -> wire.SourceOut:
    return await s.admin.allow_source(org, body.uri, body.credentials)


@router.get(
    "/orgs/{org}/sources",
    summary="The weight sources an org may sync from",
    responses=error_responses(404),
)
async def list_sources(org: str, s: ServicesDep) -> wire.SourceList:
    return await s.admin.list_sources(org)


@router.post(
    "/orgs/{org}/sources:remove",
    summary="Withdraw a weight source from an org",
    responses={**BODY, **error_responses(404)},
)
async def remove_source(org: str, body: wire.SourceRemove, s: ServicesDep) -> wire.SourceList:
    return await s.admin.remove_source(org, body.uri)


@router.get(
    "/deployments/{deployment_id}",
    summary="A deployment as the operator sees it: full error and events",
    responses=error_responses(404),
)
async def deployment(deployment_id: str, s: ServicesDep) -> wire.DeploymentDetail:
    return await s.admin.deployment(deployment_id)


@router.post(
    "/keys",
    summary="Create a key; the response is the only time it is shown",
    responses={**BODY, **error_responses(404)},
)
async def create_key(body: wire.KeyCreate, s: ServicesDep) -> wire.KeyOut:
    return await s.admin.create_key(body.org, body.kind)


@router.get("/keys", summary="List keys (hashes are never shown)", responses=error_responses(404))
async def list_keys(s: ServicesDep, org: str | None = None) -> wire.KeyList:
    return await s.admin.list_keys(org)


@router.post("/keys/{key_id}:revoke", summary="Revoke a key", responses=error_responses(404))
async def revoke_key(key_id: str, s: ServicesDep) -> wire.KeyOut:
    return await s.admin.revoke_key(key_id)


@router.post(
    "/keys/{key_id}:limit",
    summary="Set an inference key's requests and tokens per minute (null: no limit)",
    responses={**BODY, **error_responses(404)},
)
async def limit_key(key_id: str, body: wire.KeyLimitUpdate, s: ServicesDep) -> wire.KeyOut:
    return await s.admin.limit_key(key_id, body)


@router.get("/architectures", summary="List the architecture catalog")
async def list_architectures(s: ServicesDep) -> wire.ArchList:
    return await s.admin.list_architectures()


@router.post(
    "/architectures/{arch_id}:grant",
    summary="Let an org use an architecture",
    responses={**BODY, **error_responses(404)},
)
async def grant(arch_id: str, body: wire.GrantCreate, s: ServicesDep) -> wire.OrgOut:
    return await s.admin.grant(arch_id, body.org)


@router.post(
    "/endpoints", summary="Create an endpoint", responses={**BODY, **error_responses(404, 409)}
)
async def create_endpoint(body: wire.EndpointCreate, s: ServicesDep) -> wire.EndpointOut:
    return await s.admin.create_endpoint(body)


@router.get("/endpoints", summary="List all endpoints")
async def list_endpoints(s: ServicesDep) -> wire.EndpointOutList:
    return await s.admin.list_endpoints()


@router.delete(
    "/endpoints/{endpoint_id}", summary="Delete an endpoint", responses=error_responses(404)
)
async def delete_endpoint(endpoint_id: str, s: ServicesDep) -> wire.EndpointOut:
    return await s.admin.delete_endpoint(endpoint_id)


@router.get("/replicas", summary="List every replica (node, address, GPUs, state)")
async def list_replicas(s: ServicesDep, endpoint: str | None = None) -> wire.ReplicaList:
    return await s.admin.list_replicas(endpoint)
