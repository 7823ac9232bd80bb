"""Endpoints and deployments: list, status, :deployModel, cancel, rollback (reference §1.7–§1.9
and the DESIGN §4 extensions)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession

from turnout.api.schemas import deployments as dwire
from turnout.api.schemas import endpoints as ewire
from turnout.api.services.auth import Principal, check_org
from turnout.api.services.deployments import deployment_schema, policy_from_wire
from turnout.api.services.models import body_hash, sync_error_text
from turnout.api.services.races import run_again_on_race
from turnout.api.services.redact import tenant_text
from turnout.errors import BadRequest, Conflict, NotFound, PermissionDenied, ValidationFailed
from turnout.ids import (
    ALIAS_PATTERN,
    DEPLOYMENT_ID_PATTERN,
    VersionRef,
    full_match,
    new_deployment_id,
    version_number,
)
from turnout.policy import (
    SURGE,
    RolloutPolicy,
    Strategy,
)
from turnout.states import (
    ACTIVE,
    DeploymentState,
    Event,
    IllegalTransition,
    ReplicaState,
    Step,
)
from turnout.store import deployments, replicas, versions
from turnout.store import endpoints as repo
from turnout.store.db import Database
from turnout.store.deployments import LostRace
from turnout.store.records import Deployment, Endpoint, SyncStatus

#: The step each steering operation moves a canary to (its runner follows the stored step).
STEERING = {"pause": Step.PAUSED, "resume": Step.CANARY, "promote": Step.PROMOTING}


class EndpointsService:
    def __init__(self, db: Database, on_queued: Callable[[], None]) -> None:
        self.db = db
        self.on_queued = on_queued

    async def _owned(self, s: AsyncSession, principal: Principal, endpoint_id: str) -> Endpoint:
        """404 for another org's endpoint too, so existence does not leak."""
        endpoint = await repo.find_endpoint(s, endpoint_id)
        if endpoint is None or endpoint.org_id != principal.org.id:
            raise repo.endpoint_not_found(endpoint_id)
        return endpoint

    async def list_endpoints(self, principal: Principal, org_name: str) -> ewire.EndpointList:
        org = await check_org(self.db, principal, org_name)
        async with self.db.session() as s:
            found = await repo.list_endpoints(s, org)
        return ewire.EndpointList(
            endpoints=[
                ewire.EndpointItem(
                    endpoint_id=e.endpoint_id,
                    model_arch_id=e.arch_id,
                    created=e.created,
                    updated=e.updated,
                    org_name=e.org_name,
                )
                for e in found
            ]
        )

    async def status(self, principal: Principal, endpoint_id: str) -> ewire.EndpointStatus:
        async with self.db.session() as s:
            endpoint = await self._owned(s, principal, endpoint_id)
            # The serving deployment and any queued or running one, each once (the serving one
            # is also still running while its old replicas drain).
            shown = {
                d.id: d
                for d in await deployments.list_deployments(
                    s, endpoint_id=endpoint_id, states=ACTIVE
                )
            }
            if endpoint.serving_deployment_id and endpoint.serving_deployment_id not in shown:
                serving = await deployments.find_deployment(s, endpoint.serving_deployment_id)
                if serving:
                    shown[serving.id] = serving
            rows = await replicas.list_replicas(s, endpoint_id=endpoint_id)
            deployed = []
            for d in sorted(shown.values(), key=lambda d: d.seq):
                mine = [r for r in rows if r.deployment_id == d.id]
                alias = d.alias_used
                if alias is None:
                    version = await versions.get_version_by_pk(s, d.version_id)
                    alias = version.aliases[0] if version and version.aliases else None
                deployed.append(
                    ewire.DeployedModel(
                        id=d.id,
                        model=d.model_name,
                        version_alias=alias,
                        created=d.created,
                        state=d.state,
                        serving=d.id == endpoint.serving_deployment_id,
                        replicas=ewire.ReplicaCounts(
                            ready=sum(r.state is ReplicaState.READY for r in mine), total=len(mine)
                        ),
                    )
                )
            numbers = await deployments.version_numbers(s, {r.deployment_id for r in rows})
        return ewire.EndpointStatus(
            name=endpoint.endpoint_id,
            model_arch_id=endpoint.arch_id,
            deployed_models=deployed,
            managing_org_name=endpoint.org_name,
            created=endpoint.created,
            updated=endpoint.updated,
            follow_alias=endpoint.follow_alias,
            replicas=ewire.ReplicaSummary(
                ready=sum(r.state is ReplicaState.READY for r in rows),
                total=len(rows),
                wanted=endpoint.replicas,
                problem=(
                    tenant_text(endpoint.replica_problem, internal_urls=True)
                    if endpoint.replica_problem
                    else None
                ),
                items=[
                    ewire.ReplicaItem(
                        replica_id=r.id,
                        deployment_id=r.deployment_id,
                        version_id=numbers.get(r.deployment_id),
                        node=r.node,
                        gpus=list(r.gpus),
                        state=r.state.value,
                    )
                    for r in rows
                ],
            ),
        )

    async def deploy(
        self,
        principal: Principal,
        endpoint_id: str,
        request: dwire.DeployRequest,
        idem_key: str | None,
    ) -> dwire.DeploymentOperation:
        ref = VersionRef.parse(request.model)
        policy = policy_from_wire(request.rollout)
        # The published body alone hashes as before, so old Idempotency-Keys still match.
        body = request.model if request.rollout is None else request.model_dump_json()
        route = f"deploy:{endpoint_id}"

        async def submit() -> tuple[Deployment, bool]:
            async with self.db.session() as s:
                endpoint = await self._owned(s, principal, endpoint_id)
                if idem_key:
                    found = await versions.find_idempotent(s, principal.org, route, idem_key)
                    if found:
                        if found[0] != body_hash(body):
                            raise Conflict(
                                f"Idempotency-Key {idem_key!r} was used with a different body; "
                                "use a new key",
                                code="idempotency_key_reused",
                            )
                        return await deployments.get_deployment(s, found[1]), False
                deployment = await self._submit(s, principal, endpoint, ref, policy)
                if idem_key:
                    await versions.record_idempotent(
                        s, principal.org, route, idem_key, body_hash(body), deployment.id
                    )
            return deployment, True

        # Concurrent deploys race for the next seq (unique), and concurrent retries with one
        # Idempotency-Key for its record: the loser runs again and finds the winner's row.
        deployment, new = await run_again_on_race(":deployModel", submit)
        if new:
            self.on_queued()
        return deployment_schema(deployment)

    async def _submit(
        self,
        s: AsyncSession,
        principal: Principal,
        endpoint: Endpoint,
        ref: VersionRef,
        policy: RolloutPolicy = SURGE,
    ) -> Deployment:
        if ref.org_name != principal.org.name:
            raise PermissionDenied(
                f"model {ref} belongs to org {ref.org_name!r}; this key can deploy only "
                f"versions of org {principal.org.name!r}",
                param="model",
            )
        if ref.arch_id != endpoint.arch_id:
            raise BadRequest(
                f"endpoint {endpoint.endpoint_id!r} runs architecture {endpoint.arch_id!r}; "
                f"{ref} is of {ref.arch_id!r}. Deploy a version of {endpoint.arch_id!r}",
                param="model",
                code="architecture_mismatch",
            )
        version = await versions.resolve_version(s, principal.org, ref.arch_id, ref.version)
        if version.sync_status is not SyncStatus.DONE:
            # The version's own error, as its status shows it (no server paths).
            detail = f": {sync_error_text(version)}" if version.sync_error else ""
            raise Conflict(
                f"{version.name} cannot be deployed: its sync is {version.sync_status}{detail}. "
                "Wait for sync_status done, or upload the weights again",
                param="model",
                code="version_not_ready",
            )
        return await deployments.create_deployment(
            s,
            deployment_id=new_deployment_id(),
            endpoint=endpoint,
            version_pk=version.id,
            alias_used=None if version_number(ref.version) is not None else ref.version,
            policy=policy,
        )

    async def get_deployment(
        self, principal: Principal, deployment_id: str
    ) -> dwire.DeploymentOperation:
        if not full_match(DEPLOYMENT_ID_PATTERN, deployment_id):
            raise deployments.deployment_not_found(deployment_id)  # not an id we ever give out
        async with self.db.session() as s:
            d = await deployments.get_deployment(s, deployment_id)
            if d.org_id != principal.org.id:
                raise deployments.deployment_not_found(deployment_id)  # as for an unknown id
            events = await deployments.list_events(s, deployment_id)
        return deployment_schema(
            d,
            [
                dwire.DeploymentEvent(
                    at=e.at, step=e.step, message=tenant_text(e.message, internal_urls=True)
                )
                for e in events
            ],
        )

    async def list_deployments(
        self, principal: Principal, endpoint_id: str
    ) -> dwire.DeploymentList:
        async with self.db.session() as s:
            await self._owned(s, principal, endpoint_id)
            found = await deployments.list_deployments(s, endpoint_id=endpoint_id)
        return dwire.DeploymentList(deployments=[deployment_schema(d) for d in found])

    async def cancel(
        self, principal: Principal, endpoint_id: str, deployment_id: str
    ) -> dwire.DeploymentOperation:
        async with self.db.session() as s:
            await self._owned(s, principal, endpoint_id)
            d = None
            if full_match(DEPLOYMENT_ID_PATTERN, deployment_id):
                d = await deployments.find_deployment(s, deployment_id)
            if d is None or d.endpoint_id != endpoint_id:
                raise NotFound(
                    f"deployment {deployment_id!r} does not exist on endpoint {endpoint_id!r}",
                    param="deployment_id",
                    code="deployment_not_found",
                )
            # The rollout worker reads the stored state before each step and stops its
            # replicas. Once traffic has switched, cancelling would cut the new version's
            # requests: the transition table refuses, and the caller rolls back instead.
            try:
                d = await deployments.apply(
                    s,
                    deployment_id,
                    Event.CANCEL,
                    message="cancel requested",
                    error_code="cancelled",
                    error_message="cancelled by request; the previous version keeps serving",
                )
            except (IllegalTransition, LostRace):
                now = await deployments.find_deployment(s, deployment_id) or d
                raise _cancel_refused(now, endpoint_id) from None
        self.on_queued()
        return deployment_schema(d)

    async def rollback(self, principal: Principal, endpoint_id: str) -> dwire.DeploymentOperation:
        async with self.db.session() as s:
            endpoint = await self._owned(s, principal, endpoint_id)
            complete = await deployments.list_deployments(
                s, endpoint_id=endpoint_id, states=[DeploymentState.COMPLETE]
            )
            serving = next((d for d in complete if d.id == endpoint.serving_deployment_id), None)
            previous = next(
                (
                    d
                    for d in complete
                    if d.id != endpoint.serving_deployment_id
                    and (serving is None or d.version_id != serving.version_id)
                ),
                None,
            )
            if previous is None:
                raise Conflict(
                    f"endpoint {endpoint_id!r} has no earlier complete deployment of another "
                    "version to roll back to",
                    param="endpoint_id",
                    code="nothing_to_roll_back",
                )
            ref = VersionRef(previous.org_name, previous.arch_id, str(previous.version_number))
            deployment = await self._submit(s, principal, endpoint, ref)
            await deployments.add_event(
                s, deployment.id, "submitted", f"rollback to version {previous.version_number}"
            )
        self.on_queued()
        return deployment_schema(deployment)

    async def steer(
        self, principal: Principal, deployment_id: str, action: str
    ) -> dwire.DeploymentOperation:
        """Pause, resume or promote a running canary (its runner follows the stored step)."""
        async with self.db.session() as s:
            d = await deployments.get_deployment(s, deployment_id)
            if d.org_id != principal.org.id:
                raise deployments.deployment_not_found(deployment_id)
            if d.policy.strategy is not Strategy.CANARY:
                raise Conflict(
                    f"deployment {deployment_id} is a {d.policy.strategy} rollout; only canary "
                    f"rollouts can {action}",
                    param="deployment_id",
                    code="not_a_canary",
                )
            try:
                d = await deployments.apply(
                    s,
                    deployment_id,
                    Event.PROGRESS,
                    step=STEERING[action],
                    message=f"{action} requested",
                )
            except (IllegalTransition, LostRace):
                now = await deployments.get_deployment(s, deployment_id)
                raise Conflict(
                    f"deployment {deployment_id} is {now.state} at step {now.step}; {action} "
                    "applies while a canary step runs (canary, judging or paused)",
                    param="deployment_id",
                    code="deployment_not_steerable",
                ) from None
        self.on_queued()
        return deployment_schema(d)

    async def follow(
        self, principal: Principal, endpoint_id: str, update: ewire.EndpointUpdate
    ) -> ewire.EndpointStatus:
        """Follow an alias (the worker deploys its version whenever it moves), or stop."""
        policy = policy_from_wire(update.rollout)
        async with self.db.session() as s:
            endpoint = await self._owned(s, principal, endpoint_id)
            if update.follow_alias is not None:
                if not ALIAS_PATTERN.fullmatch(update.follow_alias):
                    raise ValidationFailed(
                        f"follow_alias {update.follow_alias!r} is not an alias: it must match "
                        f"{ALIAS_PATTERN.pattern}",
                        param="follow_alias",
                    )
                # The alias must name a version now (404 names what is missing).
                await versions.resolve_version(
                    s, principal.org, endpoint.arch_id, update.follow_alias
                )
            await repo.set_follow(s, endpoint_id, update.follow_alias, policy)
        self.on_queued()
        return await self.status(principal, endpoint_id)


def _cancel_refused(d: Deployment, endpoint_id: str) -> Conflict:
    """409 naming why: the deployment already ended, or its traffic already switched."""
    if d.state in ACTIVE:
        return Conflict(
            f"deployment {d.id} already switched traffic to the new version; "
            f"roll back with POST /management/v1/endpoints/{endpoint_id}:rollback",
            param="deployment_id",
            code="deployment_switched",
        )
    return Conflict(
        f"deployment {d.id} is already {d.state} and cannot be cancelled",
        param="deployment_id",
        code="deployment_done",
    )
