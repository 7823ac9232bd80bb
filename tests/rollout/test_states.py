from __future__ import annotations

import itertools

import pytest

from turnout.rollout.states import (
    TERMINAL,
    TRANSITIONS,
    DeploymentState,
    Event,
    IllegalTransition,
    advance,
    is_done,
)


@pytest.mark.parametrize(("state", "event"), list(itertools.product(DeploymentState, Event)))
def test_every_pair_follows_the_table(state: DeploymentState, event: Event) -> None:
    if (state, event) in TRANSITIONS:
        assert advance(state, event) is TRANSITIONS[(state, event)]
    else:
        with pytest.raises(IllegalTransition):
            advance(state, event)


def test_done_is_exactly_terminal() -> None:
    assert {s for s in DeploymentState if is_done(s)} == set(TERMINAL)
    # No transition leaves a terminal state.
    assert not [pair for pair in TRANSITIONS if pair[0] in TERMINAL]
