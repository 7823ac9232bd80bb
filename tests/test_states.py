"""The transition tables: every (state, step, event, to-step) combination either follows the
tables or raises; nothing else can change a deployment."""

from __future__ import annotations

import itertools

import pytest

from turnout.states import (
    STEP_MOVES,
    SWITCHED_STEPS,
    TERMINAL,
    TRANSITIONS,
    DeploymentState,
    Event,
    IllegalTransition,
    Status,
    Step,
    advance,
    is_done,
)

S, E, P = DeploymentState, Event, Step


def expected(status: Status, event: Event, to_step: Step) -> Status | None:
    """The tables read directly: what ``advance`` must return, or None when it must raise."""
    state = TRANSITIONS.get((status.state, event))
    if state is None:
        return None
    if event in (E.FAIL, E.CANCEL):
        return None if status.step in SWITCHED_STEPS else Status(state, status.step)
    if event is E.START:
        return Status(state, P.STARTING)
    if event is E.COMPLETE:
        return Status(state, P.DONE) if status.step in SWITCHED_STEPS else None
    return Status(state, to_step) if to_step in STEP_MOVES[status.step] else None


@pytest.mark.parametrize(
    ("state", "step", "event", "to_step"),
    list(itertools.product(DeploymentState, Step, Event, Step)),
)
def test_every_combination_follows_the_tables(
    state: DeploymentState, step: Step, event: Event, to_step: Step
) -> None:
    status = Status(state, step)
    want = expected(status, event, to_step)
    if want is None:
        with pytest.raises(IllegalTransition):
            advance(status, event, to_step)
    else:
        assert advance(status, event, to_step) == want


def test_the_published_rollout_sequence_is_legal() -> None:
    status = advance(Status(S.NOT_STARTED, P.SUBMITTED), E.START)
    for step in (P.WARMING, P.SWITCHED, P.DRAINING):
        status = advance(status, E.PROGRESS, step)
    assert advance(status, E.COMPLETE) == Status(S.COMPLETE, P.DONE)


def test_nothing_fails_or_is_cancelled_after_the_switch() -> None:
    for step in SWITCHED_STEPS:
        for event in (E.FAIL, E.CANCEL):
            with pytest.raises(IllegalTransition, match="traffic already switched"):
                advance(Status(S.IN_PROGRESS, step), event)


def test_done_is_exactly_terminal() -> None:
    assert {s for s in DeploymentState if is_done(s)} == set(TERMINAL)
    # No transition leaves a terminal state.
    assert not [pair for pair in TRANSITIONS if pair[0] in TERMINAL]
