"""The client CLI against a real `turnout serve`: exit codes, --json, --wait and chat."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.server import TurnoutServer, free_port

pytestmark = pytest.mark.slow


@dataclass
class Env:
    server: TurnoutServer
    weights: Path
    env: dict[str, str]

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


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModelFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("client")
    weights = root / "weights-in"
    for seed in (1, 2):
        shutil.copytree(tiny_model(seed=seed), weights / f"seed{seed}")
    # Valid shapes, so the sync passes, but the engine cannot build the model: it crashes at start.
    broken = shutil.copytree(weights / "seed1", weights / "broken")
    config = json.loads((broken / "config.json").read_text())
    config["hidden_act"] = "no-such-activation"
    (broken / "config.json").write_text(json.dumps(config))
    server = TurnoutServer(root / "data", env={"TURNOUT_ALLOWED_LOCAL_ROOTS": str(weights)})
    server.cli("admin", "org", "create", "acme")
    mk = server.cli("admin", "key", "create", "--org", "acme", "--kind", "management").stdout
    ik = server.cli("admin", "key", "create", "--org", "acme", "--kind", "inference").stdout
    server.cli("admin", "endpoint", "create", "acme-tiny", "--org", "acme", "--arch", "tiny-llama")
    server.start()
    client_env = {
        **os.environ,
        "TURNOUT_URL": server.url,
        "TURNOUT_ORG": "acme",
        "TURNOUT_MANAGEMENT_KEY": mk.strip(),
        "TURNOUT_API_KEY": ik.strip(),
        "COLUMNS": "200",
    }
    client_env.pop("TURNOUT_DATA_DIR", None)
    try:
        yield Env(server, weights, client_env)
    finally:
        server.stop()


def test_upload_wait_and_version_commands(env: Env) -> None:
    v1 = env.json(
        "models", "upload", "tiny-llama", str(env.weights / "seed1"), "--alias", "production",
        "--fingerprint-suffix", "cli", "--wait",
    )  # fmt: skip
    assert v1["done"] and v1["response"]["sync_status"] == "done"
    assert v1["response"]["version_aliases"] == ["production"]
    assert v1["name"] == "orgs/acme/models/tiny-llama/versions/1"

    listed = env.json("models", "list", "tiny-llama")
    assert [v["name"] for v in listed["model_versions"]] == [v1["name"]]
    table = env.run("models", "list", "tiny-llama")
    assert table.returncode == 0 and "production" in table.stdout

    assert env.json("models", "get", "tiny-llama", "production")["name"] == v1["name"]
    aliased = env.json("models", "alias", "tiny-llama", "1", "production", "stable")
    assert aliased["version_aliases"] == ["production", "stable"]
    assert env.json("models", "get", "tiny-llama", "stable")["name"] == v1["name"]

    v2 = env.json("models", "upload", "tiny-llama", str(env.weights / "seed2"), "--wait")
    assert v2["name"].endswith("/versions/2")
    assert env.json("models", "delete", "tiny-llama", "2")["deleted"] is True
    assert env.run("models", "get", "tiny-llama", "2").returncode == 2


def test_api_refusal_is_exit_2_with_its_message(env: Env) -> None:
    missing = env.run("models", "get", "tiny-llama", "999")
    assert missing.returncode == 2
    assert "999" in missing.stderr and missing.stdout == ""
    bad_key = env.run("endpoints", "list", TURNOUT_MANAGEMENT_KEY="tmk_wrong")
    assert bad_key.returncode == 2
    taken = env.run("models", "upload", "tiny-llama", "s3://x/y", "--alias", "Bad_Alias!")
    assert taken.returncode == 2


def test_unreachable_server_is_exit_3(env: Env) -> None:
    result = env.run("endpoints", "list", TURNOUT_URL=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 3
    assert "cannot reach" in result.stderr


def test_deploy_wait_status_and_chat(env: Env) -> None:
    done = env.json("deploy", "acme-tiny", "tiny-llama@production", "--wait")
    assert done["done"] and done["response"]["rollout_status"] == "complete"
    assert done["response"]["version_id"] == 1 and done["response"]["version_alias"] == "production"

    status = env.json("endpoints", "status", "acme-tiny")
    assert [m["serving"] for m in status["deployed_models"]] == [True]
    history = env.json("deployments", "list", "acme-tiny")["deployments"]
    assert [d["name"] for d in history] == [done["name"]]
    assert env.json("deployments", "get", done["name"])["response"]["rollout_status"] == "complete"
    assert [e["endpoint_id"] for e in env.json("endpoints", "list")["endpoints"]] == ["acme-tiny"]

    chat = env.run("chat", "acme-tiny", "hi", "--max-tokens", "8", "--temperature", "0")
    assert chat.returncode == 0, chat.stderr
    reply = chat_reply(env, "hi", 8)
    assert reply and chat.stdout.rstrip("\n") == reply


def chat_reply(env: Env, prompt: str, max_tokens: int) -> str:
    """The same question without streaming; greedy decoding gives the same answer."""
    with env.server.http(env.env["TURNOUT_API_KEY"]) as http:
        resp = http.post(
            "/v1/chat/completions",
            json={
                "model": "acme-tiny",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"])


def test_deploy_of_a_crashing_version_is_exit_1_with_its_error(env: Env) -> None:
    broken = env.json("models", "upload", "tiny-llama", str(env.weights / "broken"), "--wait")
    version = broken["name"].rsplit("/", 1)[1]
    result = env.run("deploy", "acme-tiny", f"tiny-llama@{version}", "--wait")
    assert result.returncode == 1
    history = env.json("deployments", "list", "acme-tiny")["deployments"]
    assert history[0]["response"]["rollout_status"] == "failed"
    assert history[0]["error"]["message"].splitlines()[0] in result.stderr.replace("\n", " ")
    # The version that served before keeps serving.
    status = env.json("endpoints", "status", "acme-tiny")
    assert [m["serving"] for m in status["deployed_models"]] == [True]
