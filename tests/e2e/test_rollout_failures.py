"""Rollouts that fail, get cancelled, queue up, or lose their server half-way: the previous
version keeps answering and every deployment ends terminal."""

from __future__ import annotations

import json
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.rollout_env import Deployed, make_deployed, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModelFactory
) -> Iterator[Deployed]:
    root = tmp_path_factory.mktemp("failures")
    # A slow test-double engine holds streams open for ~15 s, so a test can catch the drain step.
    templates = root / "engines.json"
    slow = {"argv": ["{python}", str(Path(__file__).with_name("slow_engine.py")), "--host",
                     "{host}", "--port", "{port}", "--served-name", "{served_name}"]}  # fmt: skip
    templates.write_text(json.dumps({"slow": slow}))
    env = make_deployed(
        root,
        tiny_model,
        {"TURNOUT_DRAIN_TIMEOUT": "120", "TURNOUT_ENGINE_TEMPLATES": str(templates)},
    )
    env.server.cli(
        "admin", "endpoint", "create", "acme-slow", "--org", "acme", "--arch", "tiny-llama",
        "--engine", "slow",
    )  # fmt: skip
    broken = root / "weights-in" / "broken-engine"
    shutil.copytree(tiny_model(seed=1), broken)
    config = json.loads((broken / "config.json").read_text())
    config["hidden_act"] = "no-such-activation"  # weights verify; the engine cannot build the model
    (broken / "config.json").write_text(json.dumps(config))
    env.upload("broken", broken)
    try:
        assert env.wait_done(env.deploy("v1"))["response"]["rollout_status"] == "complete"
        yield env
    finally:
        env.server.stop()


def serving_version(env: Deployed, endpoint: str | None = None) -> int:
    resp = httpx.post(
        env.server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {env.inference_key}"},
        json={
            "model": endpoint or env.endpoint,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
        },
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    return int(resp.headers["x-turnout-version"])


def test_engine_crash_at_start_fails_and_old_version_serves(deployed: Deployed) -> None:
    before = serving_version(deployed)
    done = deployed.wait_done(deployed.deploy("broken"))
    assert done["response"]["rollout_status"] == "failed"
    assert done["error"]["code"] == "replica_failed"
    # Tenants get no engine log lines (issue 13); the operator reads them with `turnout admin`.
    assert "no-such-activation" not in done["error"]["message"]
    shown = deployed.server.cli("admin", "deployment", "show", done["name"]).stdout
    assert "no-such-activation" in shown
    assert serving_version(deployed) == before
    with deployed.api() as api:
        status = api.get(f"/management/v1/endpoints/{deployed.endpoint}").json()
    assert [d["state"] for d in status["deployed_models"]] == ["complete"]
    assert status["deployed_models"][0]["replicas"] == {"ready": 1, "total": 1}


def test_cancel_mid_rollout_keeps_old_version(deployed: Deployed) -> None:
    before = serving_version(deployed)
    target = "v2" if before == deployed.version_id("v1") else "v1"
    deployment_id = deployed.deploy(target)
    wait_until(
        lambda: deployed.deployment(deployment_id),
        lambda b: b["response"]["rollout_status"] == "in_progress",
    )
    with deployed.api() as api:
        resp = api.post(
            f"/management/v1/endpoints/{deployed.endpoint}/deployments/{deployment_id}:cancel"
        )
    assert resp.status_code == 200, resp.text
    done = deployed.wait_done(deployment_id)
    assert (
        done["response"]["rollout_status"] == "cancelled" and done["error"]["code"] == "cancelled"
    )
    assert serving_version(deployed) == before
    # The cancelled rollout's replicas are gone.
    with deployed.api() as api:
        status = api.get(f"/management/v1/endpoints/{deployed.endpoint}").json()
    assert status["deployed_models"][0]["replicas"] == {"ready": 1, "total": 1}


def test_back_to_back_deployments_run_in_order(deployed: Deployed) -> None:
    first = deployed.deploy("v2")
    second = deployed.deploy("v1")
    a, b = deployed.wait_done(first), deployed.wait_done(second)
    assert a["response"]["rollout_status"] == b["response"]["rollout_status"] == "complete"
    first_done = max(e["at"] for e in a["response"]["events"])
    second_started = min(e["at"] for e in b["response"]["events"] if e["step"] == "starting")
    assert second_started >= first_done
    assert serving_version(deployed) == deployed.version_id("v1")


def test_kill_9_during_drain_then_restart(deployed: Deployed) -> None:
    slow = "acme-slow"
    with deployed.api() as api:
        first = api.post(
            f"/management/v1/endpoints/{slow}:deployModel",
            json={"model": deployed.versions["v1"]["name"]},
        ).json()["name"]
    assert deployed.wait_done(first)["response"]["rollout_status"] == "complete"
    assert serving_version(deployed, slow) == deployed.version_id("v1")
    # A long stream holds the old replica in the drain step.
    holding = threading.Event()

    def long_stream() -> None:
        body = {"model": slow, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        try:
            url = deployed.server.url + "/v1/chat/completions"
            auth = {"Authorization": f"Bearer {deployed.inference_key}"}
            with httpx.stream("POST", url, json=body, timeout=120, headers=auth) as resp:
                for _ in resp.iter_raw():
                    holding.set()
        except httpx.HTTPError:
            pass  # the server is killed under it

    reader = threading.Thread(target=long_stream, daemon=True)
    reader.start()
    assert holding.wait(60)
    with deployed.api() as api:
        second = api.post(
            f"/management/v1/endpoints/{slow}:deployModel",
            json={"model": deployed.versions["v2"]["name"]},
        ).json()["name"]
    wait_until(
        lambda: deployed.deployment(second),
        lambda b: b["response"].get("step") == "draining",
        timeout=120,
        interval=0.05,
    )
    deployed.server.stop(signal.SIGKILL)
    reader.join(timeout=30)
    deployed.server.start()
    done = deployed.wait_done(second)
    assert done["response"]["rollout_status"] == "complete"
    version = wait_until(lambda: _try_version(deployed, slow), lambda v: v is not None, timeout=120)
    assert version == deployed.version_id("v2")
    # The tiny-llama endpoint came back too, on fresh replicas of its serving version.
    assert wait_until(lambda: _try_version(deployed), lambda v: v is not None, timeout=120)


def _try_version(env: Deployed, endpoint: str | None = None) -> int | None:
    try:
        return serving_version(env, endpoint)
    except AssertionError:
        return None


def test_readiness_timeout_fails_the_deployment(
    tmp_path: Path, tiny_model: TinyModelFactory
) -> None:
    env = make_deployed(tmp_path, tiny_model, {"TURNOUT_READY_TIMEOUT": "0.5"})
    try:
        done = env.wait_done(env.deploy("v1"))
        assert done["response"]["rollout_status"] == "failed"
        assert done["error"]["code"] == "readiness_timeout"
        resp = httpx.post(
            env.server.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {env.inference_key}"},
            json={"model": env.endpoint, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert resp.status_code == 503 and resp.json()["code"] == "endpoint_not_ready"
        with env.api() as api:
            status = api.get(f"/management/v1/endpoints/{env.endpoint}").json()
        assert status["deployed_models"] == []
    finally:
        env.server.stop()


def _stream_in_background(env: Deployed, endpoint: str, holding: threading.Event) -> list[str]:
    """Start a long stream on ``endpoint``; returns the list its lines are collected into."""
    lines: list[str] = []

    def read() -> None:
        body = {"model": endpoint, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        auth = {"Authorization": f"Bearer {env.inference_key}"}
        url = env.server.url + "/v1/chat/completions"
        with httpx.stream("POST", url, json=body, timeout=120, headers=auth) as resp:
            for line in resp.iter_lines():
                lines.append(line)
                holding.set()

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_status_lists_each_deployment_once_and_delete_stops_replicas(deployed: Deployed) -> None:
    endpoint = "acme-gone"
    deployed.server.cli(
        "admin", "endpoint", "create", endpoint, "--org", "acme", "--arch", "tiny-llama",
        "--engine", "slow",
    )  # fmt: skip
    with deployed.client() as client:
        first = client.deploy(endpoint, deployed.versions["v1"]["name"])["name"]
        assert deployed.wait_done(first)["response"]["rollout_status"] == "complete"
        holding = threading.Event()
        _stream_in_background(deployed, endpoint, holding)
        assert holding.wait(60)
        second = client.deploy(endpoint, deployed.versions["v2"]["name"])["name"]
        wait_until(
            lambda: deployed.deployment(second),
            lambda b: b["response"].get("step") == "draining",
            timeout=120,
            interval=0.05,
        )
        # Draining: v2 serves and still runs (its old replica drains); it is listed once.
        listed = [m["id"] for m in client.endpoint(endpoint)["deployed_models"]]
        assert listed == [second]
        assert deployed.wait_done(second)["response"]["rollout_status"] == "complete"

    # Delete the serving endpoint while a stream is in flight on its replica.
    records = deployed.server.data_dir / "run" / "replicas"
    pids = [json.loads(p.read_text())["pid"] for p in records.glob(f"{endpoint}-*.json")]
    assert len(pids) == 1
    holding = threading.Event()
    lines = _stream_in_background(deployed, endpoint, holding)
    assert holding.wait(60)
    deployed.server.cli("admin", "endpoint", "delete", endpoint)

    def status_code() -> int:
        return httpx.post(
            deployed.server.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {deployed.inference_key}"},
            json={"model": endpoint, "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        ).status_code

    # The CLI writes the store; the server's worker notices on its next pass.
    wait_until(status_code, lambda code: code == 404, timeout=30)
    # The stream in flight finishes; then the replica's process is stopped.
    wait_until(
        lambda: [x for x in lines if x], lambda got: got[-1:] == ["data: [DONE]"], timeout=60
    )
    wait_until(lambda: [p for p in pids if _alive(p)], lambda alive: alive == [], timeout=60)
    assert not list(records.glob(f"{endpoint}-*.json"))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
