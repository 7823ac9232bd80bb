"""Proofs through a real server (issue 13): a rollback that works (API and `turnout rollback`),
cancel (the cancelled deployment's replicas are gone, a queued deployment, 409 after the
switch), org isolation of deployments, and a revoked inference key refused at once.

The endpoint runs the stub engine (tests/e2e/stub_engine.py): its answers name the weights
that served them, and a test holds a rollout at a step through the stub's gate files."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.hardening_env import (
    ADMIN_TOKEN,
    alive,
    chat,
    deployed_with_stub,
    engine_pids,
    kill_leftovers,
)
from tests.e2e.rollout_env import Deployed, wait_until

pytestmark = pytest.mark.slow

V1 = "/management/v1"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModelFactory) -> Iterator[Any]:
    # Streams take ~6 s (20 chunks, 0.3 s apart): long enough to hold a rollout in its drain.
    deployed, gates = deployed_with_stub(
        tmp_path_factory.mktemp("proofs"), tiny_model, {"TURNOUT_DRAIN_TIMEOUT": "120"},
        chunks=20, delay=0.3,
    )  # fmt: skip
    pids: set[int] = set()
    try:
        assert deployed.wait_done(deployed.deploy("v1"))["response"]["rollout_status"] == "complete"
        yield deployed, gates
        pids = engine_pids(deployed)
    finally:
        deployed.server.stop()
        kill_leftovers(pids)


def served_by(env: Deployed) -> str:
    """The label (v1/v2) of the weights that really answered, from the engine's own text."""
    resp = chat(env)
    assert resp.status_code == 200, resp.text
    tag = resp.json()["choices"][0]["message"]["content"].removeprefix("v:")
    by_digest = {v["response"]["digest"].split(":", 1)[1]: k for k, v in env.versions.items()}
    label = by_digest[tag]
    assert int(resp.headers["x-turnout-version"]) == env.version_id(label)
    return label


def replicas_of(env: Deployed, deployment_id: str) -> list[dict[str, Any]]:
    with env.server.http(ADMIN_TOKEN) as admin:
        rows = admin.get("/admin/v1/replicas").json()["replicas"]
    return [r for r in rows if r["deployment_id"] == deployment_id]


def test_rollback_via_the_api_and_the_cli(env: tuple[Deployed, Path]) -> None:
    deployed, _ = env
    assert served_by(deployed) == "v1"
    assert deployed.wait_done(deployed.deploy("v2"))["response"]["rollout_status"] == "complete"
    assert served_by(deployed) == "v2"
    with deployed.api() as api:
        back = api.post(f"{V1}/endpoints/{deployed.endpoint}:rollback")
    assert back.status_code == 200, back.text
    assert back.json()["response"]["version_id"] == deployed.version_id("v1")
    assert deployed.wait_done(back.json()["name"])["response"]["rollout_status"] == "complete"
    assert served_by(deployed) == "v1"
    out = deployed.server.cli(
        "rollback", deployed.endpoint, "--wait", "--json", "--url", deployed.server.url,
        "--key", deployed.management_key,
    )  # fmt: skip
    body = json.loads(out.stdout)
    assert body["response"]["rollout_status"] == "complete", body
    assert body["response"]["version_id"] == deployed.version_id("v2")
    assert served_by(deployed) == "v2"


def test_cancel_stops_the_cancelled_deployments_replicas(env: tuple[Deployed, Path]) -> None:
    deployed, gates = env
    before = served_by(deployed)
    target = "v1" if before == "v2" else "v2"
    (gates / "hold-ready").touch()  # the new replica never gets ready: the rollout waits
    try:
        deployment_id = deployed.deploy(target)
        starting = wait_until(
            lambda: replicas_of(deployed, deployment_id), lambda rows: rows and rows[0]["address"]
        )
        records = deployed.server.data_dir / "run" / "replicas"
        engine = {
            int(json.loads(p.read_text())["pid"])
            for p in records.glob("*.json")
            if json.loads(p.read_text())["deployment_id"] == deployment_id
        }
        assert engine, starting
        with deployed.api() as api:
            resp = api.post(
                f"{V1}/endpoints/{deployed.endpoint}/deployments/{deployment_id}:cancel"
            )
        assert resp.status_code == 200, resp.text
        done = deployed.wait_done(deployment_id)
    finally:
        (gates / "hold-ready").unlink(missing_ok=True)
    assert done["response"]["rollout_status"] == "cancelled"
    # Its replicas: no rows, no processes.
    wait_until(lambda: replicas_of(deployed, deployment_id), lambda rows: rows == [])
    wait_until(lambda: {p for p in engine if alive(p)}, lambda left: left == set())
    assert served_by(deployed) == before


def test_cancel_of_a_queued_deployment(env: tuple[Deployed, Path]) -> None:
    deployed, gates = env
    before = served_by(deployed)
    target = "v1" if before == "v2" else "v2"
    (gates / "hold-ready").touch()
    try:
        running = deployed.deploy(target)
        # Held before the switch (its replica never gets ready): starting, then warming.
        wait_until(
            lambda: deployed.deployment(running),
            lambda b: b["response"]["step"] in ("starting", "warming"),
        )
        queued = deployed.deploy(before)
        assert deployed.deployment(queued)["response"]["rollout_status"] == "not_started"
        with deployed.api() as api:
            resp = api.post(f"{V1}/endpoints/{deployed.endpoint}/deployments/{queued}:cancel")
        assert resp.status_code == 200, resp.text
        assert resp.json()["response"]["rollout_status"] == "cancelled"
    finally:
        (gates / "hold-ready").unlink(missing_ok=True)
    assert deployed.wait_done(running)["response"]["rollout_status"] == "complete"
    cancelled = deployed.deployment(queued)
    assert cancelled["response"]["rollout_status"] == "cancelled"
    assert "starting" not in {e["step"] for e in cancelled["response"]["events"]}
    assert replicas_of(deployed, queued) == []
    assert served_by(deployed) == target
    with deployed.api() as api:  # a finished deployment cannot be cancelled
        late = api.post(f"{V1}/endpoints/{deployed.endpoint}/deployments/{running}:cancel")
    assert late.status_code == 409 and late.json()["code"] == "deployment_done"


def test_cancel_after_the_switch_is_409(env: tuple[Deployed, Path]) -> None:
    deployed, _ = env
    before = served_by(deployed)
    target = "v1" if before == "v2" else "v2"
    lines: list[str] = []
    holding = threading.Event()

    def stream() -> None:
        body = {"model": deployed.endpoint, "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        auth = {"Authorization": f"Bearer {deployed.inference_key}"}
        with httpx.stream("POST", deployed.server.url + "/v1/chat/completions", json=body,
                          headers=auth, timeout=60) as resp:  # fmt: skip
            for line in resp.iter_lines():
                lines.append(line)
                holding.set()

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    assert holding.wait(30)
    deployment_id = deployed.deploy(target)
    wait_until(
        lambda: deployed.deployment(deployment_id),
        lambda b: b["response"]["step"] == "draining",
        interval=0.05,
    )
    with deployed.api() as api:
        resp = api.post(f"{V1}/endpoints/{deployed.endpoint}/deployments/{deployment_id}:cancel")
    assert resp.status_code == 409, resp.text
    assert resp.json()["code"] == "deployment_switched" and ":rollback" in resp.json()["message"]
    reader.join(60)
    assert [x for x in lines if x][-1] == "data: [DONE]"  # the draining stream finished
    assert deployed.wait_done(deployment_id)["response"]["rollout_status"] == "complete"
    assert served_by(deployed) == target


def test_deployments_are_invisible_to_another_org(env: tuple[Deployed, Path]) -> None:
    deployed, _ = env
    server = deployed.server
    server.cli("admin", "org", "create", "evil")
    evil_key = server.cli(
        "admin", "key", "create", "--org", "evil", "--kind", "management"
    ).stdout.strip()
    server.cli("admin", "endpoint", "create", "evil-ep", "--org", "evil", "--arch", "tiny-llama")
    with deployed.api() as api:
        mine = api.get(f"{V1}/endpoints/{deployed.endpoint}/deployments").json()["deployments"]
    some = mine[0]["name"]
    with server.http(evil_key) as evil:
        for method, path in (
            ("GET", f"{V1}/deployments/{some}"),
            ("GET", f"{V1}/endpoints/{deployed.endpoint}/deployments"),
            ("GET", f"{V1}/endpoints/{deployed.endpoint}"),
            ("POST", f"{V1}/endpoints/{deployed.endpoint}/deployments/{some}:cancel"),
            ("POST", f"{V1}/endpoints/{deployed.endpoint}:rollback"),
        ):
            resp = evil.request(method, path)
            assert resp.status_code == 404, (method, path, resp.text)
            # The same answer as for something that does not exist at all.
            unknown = evil.request(
                method,
                path.replace(some, "00000000-0000-4000-8000-000000000000").replace(
                    deployed.endpoint, "no-such-endpoint"
                ),
            )
            assert unknown.status_code == 404 and unknown.json()["code"] == resp.json()["code"]
        acme_version = deployed.versions["v1"]["name"]
        own_endpoint = evil.post(
            f"{V1}/endpoints/evil-ep:deployModel", json={"model": acme_version}
        )
        assert own_endpoint.status_code == 403, own_endpoint.text
        acme_endpoint = evil.post(
            f"{V1}/endpoints/{deployed.endpoint}:deployModel", json={"model": acme_version}
        )
        assert acme_endpoint.status_code == 404, acme_endpoint.text
    with deployed.api() as api:
        after = api.get(f"{V1}/endpoints/{deployed.endpoint}/deployments").json()["deployments"]
    assert [d["name"] for d in after] == [d["name"] for d in mine]


def test_a_revoked_inference_key_is_refused_at_once(env: tuple[Deployed, Path]) -> None:
    deployed, _ = env
    server = deployed.server
    created = json.loads(
        server.cli("admin", "key", "create", "--org", "acme", "--kind", "inference",
                   "--json").stdout
    )  # fmt: skip
    key = created["key"]
    wait_until(lambda: chat(deployed, key=key).status_code, lambda code: code == 200, timeout=10)
    server.cli("admin", "key", "revoke", created["id"])  # another process: the server polls
    # Refused within about a second (the gateway reloads keys every second); a generous bound
    # here, since the machine is shared: what matters is that it happens without a restart.
    wait_until(lambda: chat(deployed, key=key).status_code, lambda code: code == 401, timeout=5,
               interval=0.05)  # fmt: skip
    assert {chat(deployed, key=key).status_code for _ in range(10)} == {401}
