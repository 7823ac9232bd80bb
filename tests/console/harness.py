"""A real `turnout serve` for the console tests: one org, keys, an endpoint and two synced
tiny-model versions. Copied down from tests/e2e (which is being reshaped) to what these tests
need, so they do not move with it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import TinyModelFactory

V1 = "/management/v1"
ORG = "acme"
ENDPOINT = "acme-tiny"
#: An endpoint whose replicas never become ready, so a rollout onto it waits in its start
#: step for as long as a test needs (readiness times out only after TURNOUT_READY_TIMEOUT).
STUCK_ENDPOINT = "acme-stuck"
NEVER_READY = {"never-ready": {"argv": ["{python}", "-c", "import time; time.sleep(3600)"]}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TurnoutServer:
    def __init__(self, data_dir: Path, *, env: dict[str, str], role: str = "all") -> None:
        self.data_dir = data_dir
        self.role = role
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "TURNOUT_DATA_DIR": str(data_dir), **env}
        self.log_path = data_dir.parent / f"server-{role}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "turnout.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise AssertionError(f"turnout {' '.join(args)} failed: {result.stderr}")
        return result.stdout.strip()

    def start(self, timeout: float = 60) -> TurnoutServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "turnout.cli.main", "serve", "--port", str(self.port)]
                + ["--role", self.role],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"turnout serve exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"turnout serve did not come up: {self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class ConsoleEnv:
    server: TurnoutServer
    management_key: str
    inference_key: str
    versions: dict[str, str] = field(default_factory=dict)  # label -> version name

    def api(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.management_key}"}
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=30)

    def upload(self, label: str, weights: Path) -> None:
        with self.api() as api:
            resp = api.post(
                f"{V1}/orgs/{ORG}/models:upload",
                json={"model_arch_id": "tiny-llama", "model": {"weight_uri": str(weights)}},
            )
            assert resp.status_code == 200, resp.text
            name = resp.json()["name"]
            body = wait_until(lambda: api.get(f"{V1}/{name}").json(), lambda b: b["done"])
        assert body["response"]["sync_status"] == "done", body
        self.versions[label] = name

    def deploy_and_wait(self, label: str, endpoint: str = ENDPOINT) -> dict[str, Any]:
        with self.api() as api:
            resp = api.post(
                f"{V1}/endpoints/{endpoint}:deployModel", json={"model": self.versions[label]}
            )
            assert resp.status_code == 200, resp.text
            op_id = resp.json()["name"]
            return wait_until(  # type: ignore[no-any-return]
                lambda: api.get(f"{V1}/deployments/{op_id}").json(), lambda b: b["done"], 180
            )

    def endpoint_status(self, endpoint: str = ENDPOINT) -> dict[str, Any]:
        with self.api() as api:
            body: dict[str, Any] = api.get(f"{V1}/endpoints/{endpoint}").json()
        return body

    def answering_version(self) -> str:
        """Which version the gateway sends a real request to (x-turnout-version)."""
        resp = httpx.post(
            self.server.url + "/v1/completions",
            headers={"Authorization": f"Bearer {self.inference_key}"},
            json={"model": ENDPOINT, "prompt": "Hello", "max_tokens": 2},
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        return resp.headers["x-turnout-version"]


def wait_until(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if done(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting; last seen: {last}")


def make_console_env(root: Path, tiny_model: TinyModelFactory) -> ConsoleEnv:
    weights = root / "weights-in"
    for seed in (1, 2):
        shutil.copytree(tiny_model(seed=seed), weights / f"seed{seed}")
    templates = root / "engines.json"
    templates.write_text(json.dumps(NEVER_READY))
    env = {"TURNOUT_ALLOWED_LOCAL_ROOTS": str(weights), "TURNOUT_ENGINE_TEMPLATES": str(templates)}
    server = TurnoutServer(root / "data", env=env)
    server.cli("admin", "org", "create", ORG)
    server.cli("admin", "org", "create", "other-org")
    mk = server.cli("admin", "key", "create", "--org", ORG, "--kind", "management")
    ik = server.cli("admin", "key", "create", "--org", ORG, "--kind", "inference")
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
