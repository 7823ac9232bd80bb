"""Every stored status of Turnout, each an enum with its transition table (a leaf module).

The store types its columns with these enums; the rollout controller and the API change a
deployment only through :func:`advance`, so an illegal move raises instead of being written.

A deployment has a ``state`` (the published ``rollout_status``) and, while it runs, a ``step``
of the rollout (DESIGN §3)::

    not_started ──start──▶ in_progress ──complete──▶ complete
         │                    │  steps: submitted → starting → warming → switched → draining → done
         │                    │         (starting → rolling → switched for a rolling rollout;
         │                    │          warming → canary ⇄ judging (⇄ paused) → switched)
         └──fail / cancel─────┴──fail / cancel (only before the switch)──▶ failed / cancelled
"""

from __future__ import annotations

from dataclasses import dataclass
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
    #: Cancelled by a caller before it switched; the previous deployment kept serving.
    CANCELLED = "cancelled"


class Step(StrEnum):
    """The numbered steps of a rollout (DESIGN §3), stored as the deployment's ``step``."""

    #: Queued; nothing started yet.
    SUBMITTED = "submitted"
    #: New replicas are being started (also: started again after a worker restart).
    STARTING = "starting"
    #: Waiting for the new replicas' readiness and warm-up generation.
    WARMING = "warming"
    #: Rolling strategy: replacing one replica at a time; both versions serve meanwhile.
    #: In place: reloading the new weights into one replica at a time.
    ROLLING = "rolling"
    #: Canary: the new version gets its step's share of traffic (``traffic_percent``).
    CANARY = "canary"
    #: Canary: the step's hold runs while its gates are judged.
    JUDGING = "judging"
    #: Canary: held at its step by a caller or a failing gate (``on_gate_failure: pause``).
    PAUSED = "paused"
    #: Canary: a caller skipped the remaining steps; the switch comes next.
    PROMOTING = "promoting"
    #: Traffic goes to this deployment (the switch is one stored write).
    SWITCHED = "switched"
    #: Old replicas finish their in-flight requests, then stop.
    DRAINING = "draining"
    #: Complete.
    DONE = "done"


class Event(StrEnum):
    #: The worker takes a queued deployment.
    START = "start"
    #: The rollout moves to another step (see :data:`STEP_MOVES`).
    PROGRESS = "progress"
    #: Old replicas are drained: the deployment serves.
    COMPLETE = "complete"
    FAIL = "fail"
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class Status:
    state: DeploymentState
    step: Step

    def __str__(self) -> str:
        return f"{self.state}/{self.step}"


class IllegalTransition(Exception):
    def __init__(self, status: Status, event: Event, to_step: Step | None, why: str) -> None:
        target = f" to step {to_step}" if to_step else ""
        super().__init__(f"deployment at {status} cannot take event {event}{target}: {why}")
        self.status = status
        self.event = event
        self.why = why


S, E, P = DeploymentState, Event, Step

TRANSITIONS: Final[dict[tuple[DeploymentState, Event], DeploymentState]] = {
    (S.NOT_STARTED, E.START): S.IN_PROGRESS,
    (S.NOT_STARTED, E.CANCEL): S.CANCELLED,
    (S.NOT_STARTED, E.FAIL): S.FAILED,
    (S.IN_PROGRESS, E.PROGRESS): S.IN_PROGRESS,
    (S.IN_PROGRESS, E.COMPLETE): S.COMPLETE,
    (S.IN_PROGRESS, E.FAIL): S.FAILED,
    (S.IN_PROGRESS, E.CANCEL): S.CANCELLED,
}

#: The steps a running rollout may move to from each step. A step may repeat (each repeat is
#: one more event in the deployment's history); going back to ``starting`` is the restart of an
#: interrupted rollout, legal only before the switch.
_CANARY_MOVES: Final = frozenset({P.CANARY, P.JUDGING, P.PAUSED, P.PROMOTING, P.SWITCHED})

STEP_MOVES: Final[dict[Step, frozenset[Step]]] = {
    P.SUBMITTED: frozenset({P.STARTING}),
    P.STARTING: frozenset({P.STARTING, P.WARMING, P.ROLLING}),
    P.WARMING: frozenset({P.WARMING, P.STARTING, P.SWITCHED, P.CANARY}),
    P.ROLLING: frozenset({P.ROLLING, P.STARTING, P.SWITCHED}),
    P.CANARY: _CANARY_MOVES | {P.STARTING},
    P.JUDGING: _CANARY_MOVES | {P.STARTING},
    P.PAUSED: frozenset({P.PAUSED, P.CANARY, P.PROMOTING, P.STARTING}),
    P.PROMOTING: frozenset({P.SWITCHED, P.STARTING}),
    P.SWITCHED: frozenset({P.DRAINING}),
    P.DRAINING: frozenset({P.DRAINING}),
    P.DONE: frozenset(),
}

#: Steps in which a canary's new version takes part of the traffic.
CANARY_STEPS: Final = frozenset({P.CANARY, P.JUDGING, P.PAUSED, P.PROMOTING})

#: Steps after which traffic already goes to the new deployment: it can no longer fail or be
#: cancelled (that would cut the new version's requests); it completes, or is rolled back.
SWITCHED_STEPS: Final = frozenset({P.SWITCHED, P.DRAINING, P.DONE})

TERMINAL: Final = frozenset({S.COMPLETE, S.FAILED, S.CANCELLED})
ACTIVE: Final = frozenset({S.NOT_STARTED, S.IN_PROGRESS})


def advance(status: Status, event: Event, to_step: Step | None = None) -> Status:
    """The status after ``event`` (and, for ``progress``, the move to ``to_step``).

    Raises :class:`IllegalTransition` for any move the tables do not allow.
    """
    state = TRANSITIONS.get((status.state, event))
    if state is None:
        raise IllegalTransition(status, event, to_step, f"not allowed in state {status.state}")
    if event in (E.FAIL, E.CANCEL) and status.step in SWITCHED_STEPS:
        raise IllegalTransition(status, event, to_step, "traffic already switched")
    step = status.step
    if event is E.START:
        step = P.STARTING
    elif event is E.PROGRESS:
        if to_step is None or to_step not in STEP_MOVES[status.step]:
            raise IllegalTransition(status, event, to_step, f"step {status.step} cannot move so")
        step = to_step
    elif event is E.COMPLETE:
        if status.step not in SWITCHED_STEPS:
            raise IllegalTransition(status, event, to_step, "traffic has not switched yet")
        step = P.DONE
    return Status(state, step)


def is_done(state: DeploymentState) -> bool:
    return state in TERMINAL


class ReplicaState(StrEnum):
    #: Row written; the process is being started, or is loading its weights.
    STARTING = "starting"
    #: Ready path answered and the warm-up generation passed: it may get traffic.
    READY = "ready"
    #: Crashed and waiting for its restart backoff to pass.
    RESTARTING = "restarting"
    #: Gets no new requests; stopped once its in-flight requests finish.
    DRAINING = "draining"
    #: Exited on purpose.
    STOPPED = "stopped"
    #: Gave up: failed to load, or crashed too often. The replica's ``error`` says why.
    FAILED = "failed"
    #: Its process or its node is gone (found so by a reconcile pass); it gets replaced.
    LOST = "lost"


#: Replica states that will not serve again: the controller replaces such replicas.
REPLICA_GONE: Final = frozenset({ReplicaState.FAILED, ReplicaState.STOPPED, ReplicaState.LOST})
