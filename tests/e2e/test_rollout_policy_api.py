"""The rollout policy extension of :deployModel, canary steering and endpoints that follow an
alias, at the API: bad policies are 422 naming the field and change nothing; steering a rollout
that is not a canary is 409; following an alias that names nothing is 404."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.rollout_env import Deployed, make_deployed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModelFactory
) -> Iterator[Deployed]:
    deployed = make_deployed(tmp_path_factory.mktemp("policy"), tiny_model)
    try:
        yield deployed
    finally:
        deployed.server.stop()


def deploy(env: Deployed, rollout: Any) -> Any:
    with env.api() as api:
        return api.post(
            f"/management/v1/endpoints/{env.endpoint}:deployModel",
            json={"model": env.versions["v1"]["name"], "rollout": rollout},
        )


@pytest.mark.parametrize(
    ("rollout", "param"),
    [
        ({"strategy": "canary"}, "rollout.steps"),
        (
            {"strategy": "canary", "steps": [{"traffic_percent": 50, "hold_seconds": 1},
                                             {"traffic_percent": 10, "hold_seconds": 1}]},
            "rollout.steps",
        ),
        ({"strategy": "surge", "steps": [{"traffic_percent": 5, "hold_seconds": 1}]},
         "rollout.steps"),
        ({"strategy": "canary", "steps": [{"traffic_percent": 100, "hold_seconds": 1}]},
         "rollout.steps.0.traffic_percent"),
        ({"strategy": "blue-green"}, "rollout.strategy"),
        ({"sticky": "cookie"}, "rollout.sticky"),
        ({"gates": {"max_error_rate": 2}}, "rollout.gates.max_error_rate"),
        ({"gates": {"golden_prompts": [{"messages": [{"role": "user", "content": "hi"}],
                                        "expect_regex": "(unclosed"}]}},
         "rollout.gates.golden_prompts.0.expect_regex"),
        ({"on_gate_failure": "shrug"}, "rollout.on_gate_failure"),
        ({"strategy": "surge", "speed": "fast"}, "rollout.speed"),
    ],
)  # fmt: skip
def test_bad_policies_are_422_naming_the_field(
    env: Deployed, rollout: dict[str, Any], param: str
) -> None:
    with env.api() as api:
        before = api.get(f"/management/v1/endpoints/{env.endpoint}/deployments").json()
    resp = deploy(env, rollout)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["code"] == "validation_error" and body["param"] == param, body
    with env.api() as api:
        after = api.get(f"/management/v1/endpoints/{env.endpoint}/deployments").json()
    assert after == before


def test_a_policy_is_kept_and_steering_a_non_canary_is_409(env: Deployed) -> None:
    resp = deploy(env, {"strategy": "rolling"})
    assert resp.status_code == 200, resp.text
    operation = resp.json()
    assert operation["response"]["strategy"] == "rolling"
    with env.api() as api:
        paused = api.post(f"/management/v1/deployments/{operation['name']}:pause")
        assert paused.status_code == 409 and paused.json()["code"] == "not_a_canary"
        unknown = api.post("/management/v1/deployments/no-such-id:promote")
        assert unknown.status_code == 404
    assert env.wait_done(operation["name"])["response"]["rollout_status"] == "complete"


def test_following_an_alias(env: Deployed) -> None:
    path = f"/management/v1/endpoints/{env.endpoint}"
    with env.api() as api:
        missing = api.patch(path, json={"follow_alias": "production"})
        assert missing.status_code == 404, missing.text
        bad = api.patch(path, json={"follow_alias": "Prod\n"})
        assert bad.status_code == 422 and bad.json()["param"] == "follow_alias"
        api.patch(
            f"/management/v1/{env.versions['v1']['name']}", json={"version_aliases": ["production"]}
        )
        ok = api.patch(path, json={"follow_alias": "production", "rollout": {"strategy": "surge"}})
        assert ok.status_code == 200, ok.text
        assert ok.json()["follow_alias"] == "production"
        stop = api.patch(path, json={"follow_alias": None})
        assert stop.status_code == 200 and "follow_alias" not in stop.json()
