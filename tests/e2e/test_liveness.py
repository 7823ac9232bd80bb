"""Engines are watched: a replica whose process lives but does not answer (frozen with
SIGSTOP) is taken out of routing and restarted, while the endpoint keeps answering."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.rollout_env import Deployed, make_deployed, wait_until

pytestmark = pytest.mark.slow


def pids(env: Deployed) -> dict[str, int]:
    records = (env.server.data_dir / "run" / "replicas").glob("*.json")
    return {r["replica_id"]: r["pid"] for r in (json.loads(p.read_text()) for p in records)}


def ask(env: Deployed) -> httpx.Response:
    return httpx.post(
        env.server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {env.inference_key}"},
        json={
            "model": env.endpoint,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
        },
        timeout=60,
    )


@pytest.mark.timeout(300)
def test_a_frozen_replica_is_restarted_and_the_endpoint_keeps_answering(
    tmp_path: Path, tiny_model: TinyModelFactory
) -> None:
    env = make_deployed(
        tmp_path,
        tiny_model,
        {"TURNOUT_HEALTH_INTERVAL": "0.5", "TURNOUT_HEALTH_TIMEOUT": "1"},
        replicas=2,
    )
    try:
        assert env.wait_done(env.deploy("v1"))["response"]["rollout_status"] == "complete"
        before = pids(env)
        frozen_id, frozen_pid = sorted(before.items())[0]
        os.kill(frozen_pid, signal.SIGSTOP)
        try:
            answers = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                answers.append(ask(env).status_code)
        finally:
            with contextlib.suppress(ProcessLookupError):  # gone once it has been killed
                os.kill(frozen_pid, signal.SIGCONT)
        assert answers and set(answers) == {200}, answers
        # The frozen process was killed and its replica restarted under the same id.
        now = wait_until(
            lambda: pids(env), lambda p: p.get(frozen_id) not in (None, frozen_pid), timeout=60
        )
        assert set(now) == set(before)
        listed = wait_until(
            lambda: json.loads(env.server.cli("admin", "replica", "list", "--json").stdout),
            lambda body: {r["state"] for r in body["replicas"]} == {"ready"},
            timeout=60,
        )
        assert len(listed["replicas"]) == 2
        log = env.server.log_tail(200_000)
        assert f"replica {frozen_id} is unhealthy" in log
        assert ask(env).status_code == 200
    finally:
        env.server.stop()
