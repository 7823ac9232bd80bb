"""``/management/v1``: the Cerebras Management API routes plus DESIGN §4's extensions.

Each route parses, calls one service method and returns its schema.
"""

from __future__ import annotations

from fastapi import APIRouter

from turnout.api.deps import Caller, IdempotencyKey, ServicesDep
from turnout.api.schemas import deployments as dwire
from turnout.api.schemas import endpoints as ewire
from turnout.api.schemas import versions as vwire
from turnout.api.schemas.architectures import ArchitectureList

router = APIRouter(prefix="/management/v1", tags=["management"])
VERSION = "/orgs/{org_name}/models/{model_arch_id}/versions/{version_id}"


@router.get("/orgs/{org_name}/models", summary="List model architectures")
async def list_architectures(org_name: str, s: ServicesDep, caller: Caller) -> ArchitectureList:
    return await s.models.list_architectures(caller, org_name)


@router.get(
    "/orgs/{org_name}/models/{model_arch_id}/versions",
    summary="List model versions",
    response_model_exclude_none=True,
)
async def list_versions(
    org_name: str, model_arch_id: str, s: ServicesDep, caller: Caller
) -> vwire.ModelVersionList:
    return await s.models.list_versions(caller, org_name, model_arch_id)


@router.post(
    "/orgs/{org_name}/models:upload",
    summary="Upload model version",
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


@router.get(VERSION, summary="Retrieve model version status", response_model_exclude_none=True)
async def get_version(
    org_name: str, model_arch_id: str, version_id: str, s: ServicesDep, caller: Caller
) -> vwire.ModelVersion:
    return await s.models.get_version(caller, org_name, model_arch_id, version_id)


@router.patch(VERSION, summary="Update model version aliases")
async def update_aliases(
    org_name: str,
    model_arch_id: str,
    version_id: str,
    body: vwire.AliasUpdate,
    s: ServicesDep,
    caller: Caller,
) -> vwire.AliasUpdateResponse:
    return await s.models.set_aliases(caller, org_name, model_arch_id, version_id, body)


@router.delete(VERSION, summary="Delete model version")
async def delete_version(
    org_name: str, model_arch_id: str, version_id: str, s: ServicesDep, caller: Caller
) -> vwire.VersionDeleted:
    return await s.models.delete_version(caller, org_name, model_arch_id, version_id)


@router.get("/orgs/{org_name}/endpoints", summary="List endpoints")
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
    response_model_exclude_none=True,
)
async def deploy_model(
    endpoint_id: str,
    body: dwire.DeployRequest,
    s: ServicesDep,
    caller: Caller,
    idempotency_key: IdempotencyKey = None,
) -> dwire.DeploymentOperation:
    return await s.endpoints.deploy(caller, endpoint_id, body.model, idempotency_key)


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
    response_model_exclude_none=True,
)
async def cancel_deployment(
    endpoint_id: str, deployment_id: str, s: ServicesDep, caller: Caller
) -> dwire.DeploymentOperation:
    return await s.endpoints.cancel(caller, endpoint_id, deployment_id)


@router.post(
    "/endpoints/{endpoint_id}:rollback",
    summary="Roll back to the previous version",
    response_model_exclude_none=True,
)
async def rollback(endpoint_id: str, s: ServicesDep, caller: Caller) -> dwire.DeploymentOperation:
    return await s.endpoints.rollback(caller, endpoint_id)
