"""The CLI's progressive-rollout commands against a real `turnout serve`: `deploy --canary
--gate --wait`, flag mistakes refused before anything is submitted, `deployments
pause|resume|promote|watch`, and `endpoints follow` with `models alias`.

The endpoint runs the test-double engine of tests/e2e/behaving_engine.py (its behaviour comes
with each version's config.json): it starts in well under a second, and a version that answers
500 to every 3rd request is what a failing gate needs. Canary gates count real requests, so the
tests that need them keep client threads in a loop through the gateway meanwhile.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.server import TurnoutServer
from turnout.client import TurnoutClient, version_name
from turnout.demo.load import ClientLoop

pytestmark = pytest.mark.slow

ENDPOINT = "acme-behaving"
ENGINE = {
    "behaving": {
        "argv": [
            "{python}", str(Path(__file__).parents[1] / "e2e" / "behaving_engine.py"),
            "--model-dir", "{model_dir}", "--host", "{host}", "--port", "{port}",
            "--served-name", "{served_name}",
        ],
        "ready_path": "/health",
        "reload_path": "/update_weights_from_disk",
    }
}  # fmt: skip
# Two good versions (different weights, so different digests) to move between, and a bad one.
BEHAVIOURS = {
    "good": {"answer": "4", "first_delay": 0.01, "token_delay": 0.005},
    "good2": {"answer": "4", "first_delay": 0.01, "token_delay": 0.005, "tokens": 9},
    "errors": {"answer": "4", "error_every": 3, "first_delay": 0.01, "token_delay": 0.005},
}


@dataclass
class Env:
    server: TurnoutServer
    env: dict[str, str]
    versions: dict[str, int]  # label -> version number
    surge_deployment: str  # the fixture's first deployment, a plain surge

    def run(self, *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "turnout.cli.main", *args],
            env={**self.env, **overrides},
            capture_output=True,
            text=True,
            timeout=150,
        )

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def client(self) -> TurnoutClient:
        return self.server.client(self.env["TURNOUT_MANAGEMENT_KEY"])

    def serving_version(self) -> int:
        with self.client() as client:
            (serving,) = [m for m in client.endpoint(ENDPOINT)["deployed_models"] if m["serving"]]
        return int(serving["model"].rsplit("/", 1)[1])

    def other_good_version(self) -> int:
        """The good version that does not serve now: something to deploy."""
        serving = self.serving_version()
        return next(v for k, v in self.versions.items() if k.startswith("good") and v != serving)

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        with self.client() as client:
            return client.deployment(deployment_id)

    def deployment_count(self) -> int:
        with self.client() as client:
            return len(client.deployments(ENDPOINT)["deployments"])


def said(result: subprocess.CompletedProcess[str]) -> str:
    """stderr as one line: rich wraps long messages and boxes usage errors."""
    return " ".join(result.stderr.replace("│", " ").split())


def wait_until(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if done(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting; last seen: {last}")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModelFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("cli-rollouts")
    templates = root / "engines.json"
    templates.write_text(json.dumps(ENGINE))
    weights = root / "weights-in"
    for label, behaviour in BEHAVIOURS.items():
        folder = shutil.copytree(tiny_model(seed=1), weights / label)
        config = json.loads((folder / "config.json").read_text())
        config["turnout_test"] = behaviour
        (folder / "config.json").write_text(json.dumps(config))
    server = TurnoutServer(
        root / "data",
        env={
            "TURNOUT_ALLOWED_LOCAL_ROOTS": str(weights),
            "TURNOUT_ENGINE_TEMPLATES": str(templates),
        },
    )
    server.cli("admin", "org", "create", "acme")
    mk = server.cli("admin", "key", "create", "--org", "acme", "--kind", "management").stdout
    ik = server.cli("admin", "key", "create", "--org", "acme", "--kind", "inference").stdout
    server.cli(
        "admin", "endpoint", "create", ENDPOINT, "--org", "acme", "--arch", "tiny-llama",
        "--engine", "behaving",
    )  # fmt: skip
    server.start()
    try:
        versions = {}
        with server.client(mk.strip()) as client:
            for label in BEHAVIOURS:
                synced = client.wait_sync(
                    client.upload("acme", "tiny-llama", str(weights / label)), timeout=120
                )
                assert synced["response"]["sync_status"] == "done", synced
                versions[label] = int(synced["name"].rsplit("/", 1)[1])
            first = client.deploy(ENDPOINT, version_name("acme", "tiny-llama", versions["good"]))
            done = client.wait_deployment(first, timeout=120, interval=0.2)
            assert done["response"]["rollout_status"] == "complete", done
        client_env = {
            **os.environ,
            "TURNOUT_URL": server.url,
            "TURNOUT_ORG": "acme",
            "TURNOUT_MANAGEMENT_KEY": mk.strip(),
            "TURNOUT_API_KEY": ik.strip(),
            "COLUMNS": "200",
        }
        client_env.pop("TURNOUT_DATA_DIR", None)
        yield Env(server, client_env, versions, done["response"]["deployment_id"])
    finally:
        server.stop()


@dataclass
class Load(ClientLoop):
    """Client threads in a loop through the gateway, so that canary gates have requests to
    count; ``failed`` holds every answer that was not a 200."""

    env: Env
    threads: int = field(default=2, kw_only=True)
    answered: int = 0
    failed: list[str] = field(default_factory=list)

    def run(self, index: int) -> None:
        body = {"model": ENDPOINT, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 8}  # fmt: skip
        headers = {"Authorization": f"Bearer {self.env.env['TURNOUT_API_KEY']}"}
        with httpx.Client(base_url=self.env.server.url, timeout=60, trust_env=False) as http:
            while not self.stopping.is_set():
                try:
                    resp = http.post("/v1/chat/completions", json=body, headers=headers)
                    if resp.status_code != 200:
                        self.failed.append(f"{resp.status_code}: {resp.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failed.append(repr(exc))
                self.answered += 1


def test_deploy_canary_wait_completes_and_shows_the_split_and_gates(env: Env) -> None:
    new = env.other_good_version()
    with Load(env) as load:
        result = env.run(
            "deploy", ENDPOINT, f"tiny-llama@{new}", "--canary", "20,60", "--hold", "1",
            "--gate", "error_rate=0.1", "--gate", "min_requests=1", "--wait", "--json",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    r = body["response"]
    assert r["rollout_status"] == "complete" and r["version_id"] == new
    assert r["strategy"] == "canary" and r["traffic_percent"] == 100
    assert {g["name"]: g["verdict"] for g in r["gates"]} == {
        "min_requests": "pass",
        "max_error_rate": "pass",
    }
    messages = [e["message"] for e in r["events"]]
    assert any(m.startswith("step 1/2: 20% of traffic") for m in messages), messages
    assert any(m.startswith("step 2/2: 60% of traffic") for m in messages), messages
    # The live view went to stderr (stdout is the JSON alone): the split and the gates' verdicts.
    shown = said(result)
    assert "traffic new 100%" in shown and "max_error_rate" in shown and "pass" in shown
    assert env.serving_version() == new
    assert load.answered > 0 and not load.failed


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--gate", "nosuch=1"), "--gate takes NAME=VALUE with NAME one of error_rate"),
        (("--gate", "error_rate"), "--gate takes NAME=VALUE"),
        (("--gate", "error_rate=lots"), "--gate error_rate=lots: error_rate takes a number"),
        (("--gate", "min_requests=2.5"), "min_requests takes a whole number"),
        (("--canary", "5,x"), "--canary takes percentages like 5,50"),
        # Refused by the API (422 naming the field): the same exit code, its message.
        (("--canary", "150"), "rollout.steps"),
        (("--canary", "50,20"), "canary steps must raise the traffic share step by step"),
    ],
)
def test_a_bad_gate_or_canary_flag_is_exit_2_and_submits_nothing(
    env: Env, flags: tuple[str, ...], message: str
) -> None:
    before = env.deployment_count()
    result = env.run("deploy", ENDPOINT, f"tiny-llama@{env.other_good_version()}", *flags)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in said(result), result.stderr
    assert result.stdout == ""
    assert env.deployment_count() == before


def test_pause_resume_and_promote_steer_a_running_canary(env: Env) -> None:
    new = env.other_good_version()
    with Load(env) as load:
        submitted = env.json(
            "deploy", ENDPOINT, f"tiny-llama@{new}", "--canary", "20,60", "--hold", "600",
            "--gate", "min_requests=1",
        )  # fmt: skip
        deployment_id = submitted["response"]["deployment_id"]

        def step() -> str | None:
            now: str | None = env.deployment(deployment_id)["response"].get("step")
            return now

        wait_until(step, lambda s: s == "judging")
        paused = env.json("deployments", "pause", deployment_id)["response"]
        assert paused["step"] == "paused" and paused["traffic_percent"] == 20
        time.sleep(1.5)  # more than a judging interval: still held
        held = env.json("deployments", "get", deployment_id)["response"]
        assert held["step"] == "paused" and held["rollout_status"] == "in_progress"

        resumed = env.run("deployments", "resume", deployment_id)
        assert resumed.returncode == 0, resumed.stderr
        shown = said(resumed)  # the deployment rendered for people, on stderr
        assert "step canary (canary)" in shown and "traffic new 20%" in shown, shown
        wait_until(step, lambda s: s == "judging")
        promoted = env.json("deployments", "promote", deployment_id)["response"]
        assert promoted["step"] == "promoting"

        watched = env.run("deployments", "watch", deployment_id, "--json")
    assert watched.returncode == 0, watched.stderr
    done = json.loads(watched.stdout)
    assert done["done"] and done["response"]["rollout_status"] == "complete"
    messages = [e["message"] for e in done["response"]["events"]]
    assert "pause requested" in messages and "promote requested" in messages
    assert not [m for m in messages if m.startswith("step 2/2")]  # promoted past it
    assert env.serving_version() == new
    assert load.answered > 0 and not load.failed
    over = env.run("deployments", "pause", deployment_id)
    assert over.returncode == 2 and "applies while a canary step runs" in said(over)


@pytest.mark.parametrize("action", ["pause", "resume", "promote"])
def test_steering_a_surge_is_exit_2_with_the_api_message(env: Env, action: str) -> None:
    result = env.run("deployments", action, env.surge_deployment)
    assert result.returncode == 2
    assert f"is a surge rollout; only canary rollouts can {action}" in said(result)
    assert result.stdout == ""


def test_watch_follows_a_canary_its_gate_fails_to_exit_1(env: Env) -> None:
    serving = env.serving_version()
    with Load(env, threads=3):
        submitted = env.json(
            "deploy", ENDPOINT, f"tiny-llama@{env.versions['errors']}", "--canary", "50",
            "--hold", "600", "--gate", "min_requests=6", "--gate", "error_rate=0.1",
        )  # fmt: skip
        deployment_id = submitted["response"]["deployment_id"]
        watched = env.run("deployments", "watch", deployment_id)
    assert watched.returncode == 1, watched.stderr
    assert watched.stdout == ""
    shown = said(watched)
    assert "gate_failed: gate failed: error rate" in shown and "> 0.1 over" in shown
    again = env.run("deployments", "watch", deployment_id)  # already over: same verdict
    assert again.returncode == 1
    assert env.serving_version() == serving


def test_an_endpoint_following_an_alias_deploys_where_models_alias_moves_it(env: Env) -> None:
    serving, new = env.serving_version(), env.other_good_version()
    refused = env.run("endpoints", "follow", ENDPOINT, "none", "--canary", "50")
    assert refused.returncode == 2 and "a policy needs an alias to follow" in said(refused)

    env.json("models", "alias", "tiny-llama", str(serving), "production")
    followed = env.json(
        "endpoints", "follow", ENDPOINT, "production", "--canary", "50", "--hold", "1",
        "--gate", "min_requests=1",
    )  # fmt: skip
    assert followed["follow_alias"] == "production"
    before = env.deployment_count()
    with Load(env) as load:
        env.json("models", "alias", "tiny-llama", str(serving))  # no aliases: frees the name
        env.json("models", "alias", "tiny-llama", str(new), "production")

        def newest() -> dict[str, Any]:
            newest_now: dict[str, Any] = env.json("deployments", "list", ENDPOINT)["deployments"][0]
            return newest_now

        moved = wait_until(
            newest, lambda d: d["response"]["version_id"] == new and d["done"], timeout=90
        )
    r = moved["response"]
    assert r["rollout_status"] == "complete", moved
    assert r["version_alias"] == "production" and r["strategy"] == "canary"
    assert env.deployment_count() == before + 1
    assert env.serving_version() == new
    assert not load.failed

    stopped = env.json("endpoints", "follow", ENDPOINT, "none")
    assert stopped.get("follow_alias") is None  # the API leaves null fields out
    env.json("models", "alias", "tiny-llama", str(new))
    env.json("models", "alias", "tiny-llama", str(serving), "production")
    time.sleep(3)  # several passes of the worker, which checks followed aliases every second
    assert env.deployment_count() == before + 1
    assert env.serving_version() == new
