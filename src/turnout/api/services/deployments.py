"""Deployments on the wire: the operation envelope a deployment renders as, and the rollout
policy a :deployModel body asks for (validated beyond what the schema can say)."""

from __future__ import annotations

import re

from turnout.api.schemas import deployments as dwire
from turnout.api.schemas.base import OperationError
from turnout.api.services.redact import tenant_text
from turnout.errors import ValidationFailed
from turnout.policy import (
    SURGE,
    CanaryStep,
    Gates,
    GoldenPrompt,
    OnGateFailure,
    RolloutPolicy,
    Strategy,
)
from turnout.states import ACTIVE, CANARY_STEPS, SWITCHED_STEPS, DeploymentState
from turnout.store.records import Deployment


def deployment_schema(
    d: Deployment, events: list[dwire.DeploymentEvent] | None = None
) -> dwire.DeploymentOperation:
    state = d.state
    error = None
    if state in (DeploymentState.FAILED, DeploymentState.CANCELLED):
        # Stored for the operator (engine log lines, paths); the tenant gets a redacted line.
        message = tenant_text(d.error_message or f"deployment {state}", internal_urls=True)
        error = OperationError(code=d.error_code or state.value, message=message)
    return dwire.DeploymentOperation(
        name=d.id,
        done=state not in ACTIVE,
        response=dwire.DeploymentInfo(
            deployment_id=d.id,
            endpoint_id=d.endpoint_id,
            org_name=d.org_name,
            model_arch_id=d.arch_id,
            version_id=d.version_number,
            created=d.created,
            updated=d.updated,
            rollout_status=state.value,
            version_alias=d.alias_used,
            step=d.step,
            events=events,
            strategy=d.policy.strategy.value,
            traffic_percent=_traffic(d),
            gates=[
                dwire.GateReadingOut(
                    name=g.name,
                    threshold=g.threshold,
                    reading=g.reading,
                    verdict=g.verdict.value,
                    detail=g.detail,
                )
                for g in d.gates
            ]
            or None,
        ),
        error=error,
    )


def _traffic(d: Deployment) -> int | None:
    """The new version's share: a canary's weight while it runs, 100 once it serves."""
    if d.state is DeploymentState.COMPLETE or d.step in SWITCHED_STEPS:
        return 100
    if d.state is DeploymentState.IN_PROGRESS and d.step in CANARY_STEPS:
        return d.traffic_percent
    return 0 if d.policy.strategy is Strategy.CANARY else None


def policy_from_wire(spec: dwire.RolloutPolicySpec | None, param: str = "rollout") -> RolloutPolicy:
    """The validated policy; 422 naming the field for what the schema alone cannot check."""
    if spec is None:
        return SURGE
    strategy = Strategy(spec.strategy)
    if strategy is Strategy.CANARY and not spec.steps:
        raise ValidationFailed("a canary needs at least one step", param=f"{param}.steps")
    if strategy is not Strategy.CANARY and spec.steps:
        raise ValidationFailed(
            f"steps apply to the canary strategy only, not {strategy}", param=f"{param}.steps"
        )
    shares = [step.traffic_percent for step in spec.steps]
    if shares != sorted(set(shares)):
        raise ValidationFailed(
            f"canary steps must raise the traffic share step by step, not {shares}",
            param=f"{param}.steps",
        )
    prompts = []
    for i, prompt in enumerate(spec.gates.golden_prompts):
        try:
            re.compile(prompt.expect_regex)
        except re.error as exc:
            raise ValidationFailed(
                f"expect_regex is not a regular expression: {exc}",
                param=f"{param}.gates.golden_prompts.{i}.expect_regex",
            ) from None
        prompts.append(GoldenPrompt(tuple(prompt.messages), prompt.expect_regex))
    gates = spec.gates
    return RolloutPolicy(
        strategy=strategy,
        steps=tuple(CanaryStep(s.traffic_percent, s.hold_seconds) for s in spec.steps),
        sticky=spec.sticky,
        gates=Gates(
            min_requests=gates.min_requests,
            max_error_rate=gates.max_error_rate,
            max_stream_abort_rate=gates.max_stream_abort_rate,
            max_ttft_p95_ratio=gates.max_ttft_p95_ratio,
            max_tpot_p95_ratio=gates.max_tpot_p95_ratio,
            golden_prompts=tuple(prompts),
        ),
        on_gate_failure=OnGateFailure(spec.on_gate_failure),
    )
