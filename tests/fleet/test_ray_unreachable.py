"""A wrong Ray address is said, not waited on: `turnout serve --placement ray` keeps serving
its API and logs that the cluster cannot be reached (ray.init alone would retry for ever)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.e2e.rollout_env import wait_until
from tests.e2e.server import TurnoutServer, free_port

pytestmark = pytest.mark.ray


def test_an_unreachable_cluster_is_reported_and_the_api_keeps_serving(tmp_path: Path) -> None:
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the ray extra must be installed under CI")
        pytest.skip("ray is not installed (pip install -e '.[ray]')")
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    server = TurnoutServer(
        tmp_path / "data", env={"TURNOUT_PLACEMENT": "ray", "TURNOUT_RAY_ADDRESS": nowhere}
    )
    server.start()
    try:
        said = wait_until(
            server.log_tail, lambda t: f"cannot reach the Ray cluster at {nowhere}" in t, 60
        )
        assert "ConnectionRefusedError" in said
        with server.http(None) as http:
            assert http.get("/healthz").status_code == 200
    finally:
        server.stop()
