"""The deployment state machine: an enum, a transition table and one pure function."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class DeploymentState(StrEnum):
    #: Accepted and queued behind earlier deployments of the same endpoint.
    NOT_STARTED = "not_started"
    #: The rollout worker is starting, switching to, or draining for this deployment.
    IN_PROGRESS = "in_progress"
    #: Serving: the endpoint's traffic goes to this deployment's replicas.
    COMPLETE = "complete"
    #: Stopped before the switch; the previous deployment kept serving. ``error`` says why.
    FAILED = "failed"
    #: Cancelled by a caller before it completed; the previous deployment kept serving.
    CANCELLED = "cancelled"


class Event(StrEnum):
    START = "start"
    SWITCHED_AND_DRAINED = "switched_and_drained"
    FAIL = "fail"
    CANCEL = "cancel"


class IllegalTransition(Exception):
    def __init__(self, state: DeploymentState, event: Event) -> None:
        super().__init__(f"deployment in state {state} cannot take event {event}")
        self.state = state
        self.event = event


S, E = DeploymentState, Event

TRANSITIONS: Final[dict[tuple[DeploymentState, Event], DeploymentState]] = {
    (S.NOT_STARTED, E.START): S.IN_PROGRESS,
    (S.NOT_STARTED, E.CANCEL): S.CANCELLED,
    (S.NOT_STARTED, E.FAIL): S.FAILED,
    (S.IN_PROGRESS, E.SWITCHED_AND_DRAINED): S.COMPLETE,
    (S.IN_PROGRESS, E.FAIL): S.FAILED,
    (S.IN_PROGRESS, E.CANCEL): S.CANCELLED,
}

TERMINAL: Final = frozenset({S.COMPLETE, S.FAILED, S.CANCELLED})
ACTIVE: Final = frozenset({S.NOT_STARTED, S.IN_PROGRESS})


def advance(state: DeploymentState, event: Event) -> DeploymentState:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


def is_done(state: DeploymentState) -> bool:
    return state in TERMINAL


class Step(StrEnum):
    """The numbered steps of a rollout (DESIGN §3), stored as the deployment's ``step``."""

    SUBMITTED = "submitted"
    STARTING = "starting"
    WARMING = "warming"
    #: Rolling strategy: replacing one replica at a time; both versions serve meanwhile.
    ROLLING = "rolling"
    SWITCHED = "switched"
    DRAINING = "draining"
    DONE = "done"


#: Steps after which traffic already goes to the new deployment.
SWITCHED_STEPS: Final = (Step.SWITCHED.value, Step.DRAINING.value, Step.DONE.value)
