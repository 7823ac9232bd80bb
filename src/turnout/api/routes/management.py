"""``/management/v1``: the Cerebras Management API routes plus DESIGN §4's extensions.

Each route parses, calls one service method and returns its schema.
"""

from __future__ import annotations

from fastapi import APIRouter

from turnout.api.deps import Caller, IdempotencyKey, ServicesDep
from turnout.api.errors import error_responses
from turnout.api.schemas import deployments as dwire
from turnout.api.schemas import endpoints as ewire
from turnout.api.schemas import versions as vwire
from turnout.api.schemas.architectures import ArchitectureList

# Every route: 401 without a valid management key, 404 for what does not exist (or is another
# org's), 422 for a schema violation. Each route lists what else it can answer.
router = APIRouter(
    prefix="/management/v1", tags=["management"], responses=error_responses(401, 404, 422)
)
#: An org-scoped path: 403 for another org's name.
ORG = error_responses(403)
#: A JSON body: 400 when it is not JSON, 413 when it is too large.
BODY = error_responses(400, 413)
VERSION = "/orgs/{org_name}/models/{model_arch_id}/versions/{version_id}"


@router.get("/orgs/{org_name}/models", summary="List model architectures", responses=ORG)
async def list_architectures(org_name: str, s: ServicesDep, caller: Caller) -> ArchitectureList:
    return await s.models.list_architectures(caller, org_name)


@router.get(
    "/orgs/{org_name}/models/{model_arch_id}/versions",
    summary="List model versions",
    responses=ORG,
    response_model_exclude_none=True,
)
async def list_versions(
    org_name: str, model_arch_id: str, s: ServicesDep, caller: Caller
) -> vwire.ModelVersionList:
    return await s.models.list_versions(caller, org_name, model_arch_id)


@router.post(
    "/orgs/{org_name}/models:upload",
    summary="Upload model version",
    responses={**ORG, **BODY, **error_responses(409)},
    response_model_exclude_none=True,
)
async def upload(
    org_name: str,
    body: vwire.UploadRequest,
    s: ServicesDep,
    caller: Caller,
    idempotency_key: IdempotencyKey = None,
) -> vwire.ModelVersion:
    return await s.models.upload(caller, org_name, body, idempotency_key)


@router.get(
    VERSION,
    summary="Retrieve model version status",
    responses=ORG,
    response_model_exclude_none=True,
)
async def get_version(
    org_name: str, model_arch_id: str, version_id: str, s: ServicesDep, caller: Caller
) -> vwire.ModelVersion:
    return await s.models.get_version(caller, org_name, model_arch_id, version_id)


@router.patch(
    VERSION,
    summary="Update model version aliases",
    responses={**ORG, **BODY, **error_responses(409)},
)
async def update_aliases(
    org_name: str,
    model_arch_id: str,
    version_id: str,
    body: vwire.AliasUpdate,
    s: ServicesDep,
    caller: Caller,
) -> vwire.AliasUpdateResponse:
    return await s.models.set_aliases(caller, org_name, model_arch_id, version_id, body)


@router.delete(VERSION, summary="Delete model version", responses={**ORG, **error_responses(409)})
async def delete_version(
    org_name: str, model_arch_id: str, version_id: str, s: ServicesDep, caller: Caller
) -> vwire.VersionDeleted:
    return await s.models.delete_version(caller, org_name, model_arch_id, version_id)


@router.get("/orgs/{org_name}/endpoints", summary="List endpoints", responses=ORG)
async def list_endpoints(org_name: str, s: ServicesDep, caller: Caller) -> ewire.EndpointList:
    return await s.endpoints.list_endpoints(caller, org_name)


@router.get(
    "/endpoints/{endpoint_id}", summary="Retrieve endpoint status", response_model_exclude_none=True
)
async def endpoint_status(endpoint_id: str, s: ServicesDep, caller: Caller) -> ewire.EndpointStatus:
    return await s.endpoints.status(caller, endpoint_id)


@router.get(
    "/endpoints/{endpoint_id}/metrics",
    summary="Per-version traffic over the last complete minute (Turnout extension)",
)
async def endpoint_metrics(
    endpoint_id: str, s: ServicesDep, caller: Caller
) -> ewire.EndpointMetrics:
    return await s.traffic.endpoint_metrics(caller, endpoint_id)


@router.post(
    "/endpoints/{endpoint_id}:deployModel",
    summary="Deploy model to endpoint",
    responses={**BODY, **error_responses(403, 409)},
    response_model_exclude_none=True,
)
async def deploy_model(
    endpoint_id: str,
    body: dwire.DeployRequest,
    s: ServicesDep,
    caller: Caller,
    idempotency_key: IdempotencyKey = None,
) -> dwire.DeploymentOperation:
    return await s.endpoints.deploy(caller, endpoint_id, body, idempotency_key)


@router.get(
    "/deployments/{deployment_id}",
    summary="Retrieve deployment status",
    response_model_exclude_none=True,
)
async def get_deployment(
    deployment_id: str, s: ServicesDep, caller: Caller
) -> dwire.DeploymentOperation:
    return await s.endpoints.get_deployment(caller, deployment_id)


@router.get(
    "/endpoints/{endpoint_id}/deployments",
    summary="List an endpoint's deployments",
    response_model_exclude_none=True,
)
async def list_deployments(
    endpoint_id: str, s: ServicesDep, caller: Caller
) -> dwire.DeploymentList:
    return await s.endpoints.list_deployments(caller, endpoint_id)


@router.post(
    "/endpoints/{endpoint_id}/deployments/{deployment_id}:cancel",
    summary="Cancel a deployment",
    responses=error_responses(409),
    response_model_exclude_none=True,
)
async def cancel_deployment(
    endpoint_id: str, deployment_id: str, s: ServicesDep, caller: Caller
) -> dwire.DeploymentOperation:
    return await s.endpoints.cancel(caller, endpoint_id, deployment_id)


@router.post(
    "/endpoints/{endpoint_id}:rollback",
    summary="Roll back to the previous version",
    responses=error_responses(409),
    response_model_exclude_none=True,
)
async def rollback(endpoint_id: str, s: ServicesDep, caller: Caller) -> dwire.DeploymentOperation:
    return await s.endpoints.rollback(caller, endpoint_id)


# Turnout extensions (DESIGN §8): steering a canary, and endpoints that follow an alias.


@router.post(
    "/deployments/{deployment_id}:pause",
    summary="Hold a canary at its step",
    response_model_exclude_none=True,
    responses=error_responses(409),
)
async def pause(deployment_id: str, s: ServicesDep, caller: Caller) -> dwire.DeploymentOperation:
    return await s.endpoints.steer(caller, deployment_id, "pause")


@router.post(
    "/deployments/{deployment_id}:resume",
    summary="Go on with a paused canary (a fresh window)",
    response_model_exclude_none=True,
    responses=error_responses(409),
)
async def resume(deployment_id: str, s: ServicesDep, caller: Caller) -> dwire.DeploymentOperation:
    return await s.endpoints.steer(caller, deployment_id, "resume")


@router.post(
    "/deployments/{deployment_id}:promote",
    summary="Skip a canary's remaining steps: switch all traffic now",
    response_model_exclude_none=True,
    responses=error_responses(409),
)
async def promote(deployment_id: str, s: ServicesDep, caller: Caller) -> dwire.DeploymentOperation:
    return await s.endpoints.steer(caller, deployment_id, "promote")


@router.patch(
    "/endpoints/{endpoint_id}",
    summary="Follow an alias: moving it deploys its version with the given policy",
    response_model_exclude_none=True,
    responses=BODY,
)
async def update_endpoint(
    endpoint_id: str, body: ewire.EndpointUpdate, s: ServicesDep, caller: Caller
) -> ewire.EndpointStatus:
    return await s.endpoints.follow(caller, endpoint_id, body)
