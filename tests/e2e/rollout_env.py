"""A running Turnout with one org, keys, an endpoint and synced tiny-model versions."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import TinyModelFactory
from tests.e2e.server import TurnoutServer
from turnout.client import TurnoutClient


@dataclass
class Deployed:
    server: TurnoutServer
    management_key: str
    inference_key: str
    endpoint: str
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def api(self) -> httpx.Client:
        """Raw HTTP with the management key (wire-level assertions)."""
        return self.server.http(self.management_key)

    def client(self) -> TurnoutClient:
        return self.server.client(self.management_key)

    def upload(self, label: str, model_dir: Path) -> dict[str, Any]:
        with self.client() as client:
            body = client.wait_sync(
                client.upload("acme", "tiny-llama", str(model_dir)), timeout=120, interval=0.2
            )
        assert body["response"]["sync_status"] == "done", body
        self.versions[label] = body
        return body

    def deploy(self, label: str) -> str:
        with self.client() as client:
            return str(client.deploy(self.endpoint, self.versions[label]["name"])["name"])

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        with self.client() as client:
            return client.deployment(deployment_id)

    def wait_done(self, deployment_id: str, timeout: float = 180) -> dict[str, Any]:
        with self.client() as client:
            return client.wait_deployment(
                client.deployment(deployment_id), timeout=timeout, interval=0.2
            )

    def fingerprint(self, label: str) -> str:
        return "fp_" + self.versions[label]["response"]["digest"].split(":", 1)[1][:10]

    def version_id(self, label: str) -> int:
        return int(self.versions[label]["name"].rsplit("/", 1)[1])


def wait_until(fetch: Any, done: Any, timeout: float = 120, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if done(last):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting; last seen: {last}")


def make_deployed(
    root: Path,
    tiny_model: TinyModelFactory,
    env: dict[str, str] | None = None,
    replicas: int = 1,
    endpoint_args: tuple[str, ...] = (),
    role: str = "all",
) -> Deployed:
    weights = root / "weights-in"
    for seed in (1, 2):
        shutil.copytree(tiny_model(seed=seed), weights / f"seed{seed}")
    server = TurnoutServer(
        root / "data", env={"TURNOUT_ALLOWED_LOCAL_ROOTS": str(weights), **(env or {})}, role=role
    )
    server.cli("admin", "org", "create", "acme")
    mk = server.cli(
        "admin", "key", "create", "--org", "acme", "--kind", "management"
    ).stdout.strip()
    ik = server.cli("admin", "key", "create", "--org", "acme", "--kind", "inference").stdout.strip()
    server.cli(
        "admin", "endpoint", "create", "acme-tiny", "--org", "acme", "--arch", "tiny-llama",
        "--replicas", str(replicas), *endpoint_args,
    )  # fmt: skip
    server.start()
    deployed = Deployed(server, mk, ik, "acme-tiny")
    deployed.upload("v1", weights / "seed1")
    deployed.upload("v2", weights / "seed2")
    return deployed
