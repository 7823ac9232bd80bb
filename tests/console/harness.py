"""A real `turnout serve` for the console tests: one org (and another), keys, an endpoint, a
second endpoint whose replicas never become ready, and two synced tiny-model versions."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import TinyModelFactory
from tests.e2e.server import TurnoutServer
from turnout.client import TurnoutClient

__all__ = ["ENDPOINT", "ORG", "STUCK_ENDPOINT", "V1", "ConsoleEnv", "TurnoutServer"]

V1 = "/management/v1"
ORG = "acme"
ENDPOINT = "acme-tiny"
#: An endpoint whose replicas never become ready, so a rollout onto it waits in its start
#: step for as long as a test needs (readiness times out only after TURNOUT_READY_TIMEOUT).
STUCK_ENDPOINT = "acme-stuck"
NEVER_READY = {"never-ready": {"argv": ["{python}", "-c", "import time; time.sleep(3600)"]}}


@dataclass
class ConsoleEnv:
    server: TurnoutServer
    management_key: str
    inference_key: str
    versions: dict[str, str] = field(default_factory=dict)  # label -> version name

    def api(self) -> httpx.Client:
        """Raw HTTP with the management key."""
        return self.server.http(self.management_key)

    def client(self) -> TurnoutClient:
        return self.server.client(self.management_key)

    def upload(self, label: str, weights: Path) -> None:
        with self.client() as client:
            body = client.wait_sync(client.upload(ORG, "tiny-llama", str(weights)), timeout=120)
        assert body["response"]["sync_status"] == "done", body
        self.versions[label] = body["name"]

    def deploy_and_wait(self, label: str, endpoint: str = ENDPOINT) -> dict[str, Any]:
        with self.client() as client:
            return client.wait_deployment(
                client.deploy(endpoint, self.versions[label]), timeout=180
            )

    def endpoint_status(self, endpoint: str = ENDPOINT) -> dict[str, Any]:
        with self.client() as client:
            return client.endpoint(endpoint)

    def answering_version(self) -> str:
        """Which version the gateway sends a real request to (x-turnout-version)."""
        with self.server.http(self.inference_key) as http:
            resp = http.post(
                "/v1/completions",
                json={"model": ENDPOINT, "prompt": "Hello", "max_tokens": 2},
                timeout=60,
            )
        assert resp.status_code == 200, resp.text
        return resp.headers["x-turnout-version"]


def make_console_env(root: Path, tiny_model: TinyModelFactory) -> ConsoleEnv:
    weights = root / "weights-in"
    for seed in (1, 2):
        shutil.copytree(tiny_model(seed=seed), weights / f"seed{seed}")
    templates = root / "engines.json"
    templates.write_text(json.dumps(NEVER_READY))
    env = {
        "TURNOUT_ALLOWED_LOCAL_ROOTS": str(weights),
        "TURNOUT_ENGINE_TEMPLATES": str(templates),
        # Traffic windows of 5 s, not a minute: the charts fill while a test watches.
        "TURNOUT_METRICS_WINDOW": "5",
    }
    server = TurnoutServer(root / "data", env=env)
    server.cli("admin", "org", "create", ORG)
    server.cli("admin", "org", "create", "other-org")
    mk = server.cli("admin", "key", "create", "--org", ORG, "--kind", "management").stdout.strip()
    ik = server.cli("admin", "key", "create", "--org", ORG, "--kind", "inference").stdout.strip()
    for endpoint, engine in ((ENDPOINT, "builtin"), (STUCK_ENDPOINT, "never-ready")):
        server.cli(
            "admin", "endpoint", "create", endpoint, "--org", ORG, "--arch", "tiny-llama",
            "--engine", engine,
        )  # fmt: skip
    server.start()
    console = ConsoleEnv(server, mk, ik)
    try:
        console.upload("v1", weights / "seed1")
        console.upload("v2", weights / "seed2")
    except BaseException:
        server.stop()
        raise
    return console
