"""The rolling strategy: no room to surge, so replicas are replaced one at a time, and clients
see no failure while both versions serve side by side."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.rollout_env import make_deployed
from tests.e2e.test_rollout import Load

pytestmark = pytest.mark.slow


@pytest.mark.timeout(400)
def test_rolling_replaces_one_replica_at_a_time_without_failures(
    tmp_path: Path, tiny_model: TinyModelFactory
) -> None:
    env = make_deployed(tmp_path, tiny_model, {"TURNOUT_MAX_REPLICAS": "2"}, replicas=2)
    try:
        first = env.wait_done(env.deploy("v1"))
        assert first["response"]["rollout_status"] == "complete"
        assert "rolling" not in [e["step"] for e in first["response"]["events"]]  # room to surge
        with Load(env, streaming=1, plain=2) as load:
            time.sleep(2)
            done = env.wait_done(env.deploy("v2"), timeout=300)
            complete_at = max(e["at"] for e in done["response"]["events"])
            time.sleep(3)
        assert done["response"]["rollout_status"] == "complete", done
        steps = [e["step"] for e in done["response"]["events"]]
        assert "rolling" in steps and steps[-1] == "done"
        errors = [o.error for o in load.outcomes if o.error]
        assert not errors, errors[:5]
        after = [o for o in load.outcomes if o.started > complete_at]
        assert after and {o.version for o in after} == {env.version_id("v2")}
        with env.api() as api:
            status = api.get(f"/management/v1/endpoints/{env.endpoint}").json()
        (serving,) = status["deployed_models"]
        assert serving["id"] == done["name"] and serving["replicas"] == {"ready": 2, "total": 2}
    finally:
        env.server.stop()
