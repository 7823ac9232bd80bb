"""kill -9 of the server at every rollout step (issue 13, DESIGN §3 "every step is persisted"):
after a restart the deployment ends terminal, the endpoint answers with the new version, and
after the final orderly stop no engine process is left.

Replicas outlive a killed server by design (the restarted one adopts them), so "no leftover" is
checked after the last, orderly stop. A kill before the switch takes the "run again from the
start" branch; after it, the "complete the drain" branch.

``starting`` and ``warming`` are held by the stub engine's gate files. ``switched`` lasts only
between two writes of one step, so no kill lands there by timing: the test kills the server in
``draining`` and, before the restart, writes back exactly what a kill in ``switched`` leaves
persisted (step ``switched``, old replicas still ``ready``)."""

from __future__ import annotations

import signal
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.hardening_env import alive, chat, deployed_with_stub, engine_pids, kill_leftovers
from tests.e2e.rollout_env import Deployed, wait_until

pytestmark = pytest.mark.slow

RUN_AGAIN = "started again from the beginning after a restart"


def _served_label(env: Deployed) -> str | None:
    try:
        resp = chat(env)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    tag = resp.json()["choices"][0]["message"]["content"].removeprefix("v:")
    by_digest = {v["response"]["digest"].split(":", 1)[1]: k for k, v in env.versions.items()}
    return by_digest.get(tag)


def _hold_with_a_stream(env: Deployed) -> threading.Thread:
    """A long stream on the serving replica keeps a rollout in its drain step."""
    holding = threading.Event()

    def stream() -> None:
        body = {"model": env.endpoint, "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        auth = {"Authorization": f"Bearer {env.inference_key}"}
        try:
            with httpx.stream("POST", env.server.url + "/v1/chat/completions", json=body,
                              headers=auth, timeout=120) as resp:  # fmt: skip
                for _ in resp.iter_raw():
                    holding.set()
        except httpx.HTTPError:
            pass  # the server is killed under it

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    assert holding.wait(30)
    return reader


def _as_if_killed_at_switched(env: Deployed, deployment_id: str) -> None:
    """Write back what a kill between the switch and the drain leaves persisted."""
    with sqlite3.connect(env.server.data_dir / "turnout.db") as db:
        db.execute("UPDATE deployments SET step = 'switched' WHERE id = ?", (deployment_id,))
        moved = db.execute(
            "UPDATE replicas SET state = 'ready' WHERE endpoint_id = ? AND deployment_id != ? "
            "AND state = 'draining'",
            (env.endpoint, deployment_id),
        ).rowcount
    assert moved == 1


@pytest.mark.timeout(400)
@pytest.mark.parametrize("step", ["starting", "warming", "switched", "draining"])
def test_kill_9_at_every_rollout_step(
    step: str, tmp_path: Path, tiny_model: TinyModelFactory
) -> None:
    env, gates = deployed_with_stub(
        tmp_path, tiny_model, {"TURNOUT_DRAIN_TIMEOUT": "120"}, chunks=40, delay=0.5
    )
    seen: set[int] = set()
    try:
        assert env.wait_done(env.deploy("v1"))["response"]["rollout_status"] == "complete"
        gate = {"starting": "hold-ready", "warming": "hold-warmup"}.get(step)
        if gate:
            (gates / gate).touch()
        else:
            _hold_with_a_stream(env)
        deployment_id = env.deploy("v2")
        wait_until(
            lambda: env.deployment(deployment_id),
            lambda b: b["response"]["step"] == ("draining" if step == "switched" else step),
            timeout=120,
            interval=0.05,
        )
        seen |= engine_pids(env)
        env.server.stop(signal.SIGKILL)
        if step == "switched":
            _as_if_killed_at_switched(env, deployment_id)
        if gate:
            (gates / gate).unlink()
        env.server.start()
        done = env.wait_done(deployment_id)
        seen |= engine_pids(env)
        assert done["response"]["rollout_status"] == "complete", done
        messages = [e["message"] for e in done["response"]["events"]]
        assert (RUN_AGAIN in messages) == (step in ("starting", "warming")), messages
        assert wait_until(lambda: _served_label(env), lambda label: label is not None) == "v2"
        assert {_served_label(env) for _ in range(5)} == {"v2"}
        with env.api() as api:
            status = api.get(f"/management/v1/endpoints/{env.endpoint}").json()
        assert [m["id"] for m in status["deployed_models"]] == [deployment_id]
        assert status["replicas"]["ready"] == status["replicas"]["total"] == 1
    finally:
        seen |= engine_pids(env)
        env.server.stop()
        leftovers = {pid for pid in seen if alive(pid)}
        kill_leftovers(leftovers)
    assert leftovers == set(), "engine processes outlived the orderly stop"
