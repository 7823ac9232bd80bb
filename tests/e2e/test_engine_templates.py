"""External engines by command template: an operator's template file adds an engine, and an
endpoint created with it runs its replicas through that command."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.rollout_env import make_deployed
from tests.e2e.server import TurnoutServer

pytestmark = pytest.mark.slow

CUSTOM = {
    "small-batch": {
        "argv": [
            "{python}", "-m", "turnout.engine", "serve", "--model-dir", "{model_dir}",
            "--host", "{host}", "--port", "{port}", "--served-name", "{served_name}",
            "--max-batch-size", "2",
        ],
        "health_path": "/health",
        "ready_path": "/ready",
    }
}  # fmt: skip


def test_endpoint_runs_a_configured_engine_template(
    tmp_path: Path, tiny_model: TinyModelFactory
) -> None:
    templates = tmp_path / "engines.json"
    templates.write_text(json.dumps(CUSTOM))
    env = make_deployed(tmp_path, tiny_model, {"TURNOUT_ENGINE_TEMPLATES": str(templates)})
    try:
        env.server.cli(
            "admin", "endpoint", "create", "acme-custom", "--org", "acme", "--arch", "tiny-llama",
            "--engine", "small-batch",
        )  # fmt: skip
        listed = json.loads(env.server.cli("admin", "endpoint", "list", "--json").stdout)
        engines = {e["endpoint_id"]: e["engine"] for e in listed["endpoints"]}
        assert engines == {"acme-tiny": "builtin", "acme-custom": "small-batch"}
        with env.api() as api:
            resp = api.post(
                "/management/v1/endpoints/acme-custom:deployModel",
                json={"model": env.versions["v1"]["name"]},
            )
        assert env.wait_done(resp.json()["name"])["response"]["rollout_status"] == "complete"
        logs = list((env.server.data_dir / "run" / "logs").glob("acme-custom-*.log"))
        assert logs and "--max-batch-size 2" in logs[0].read_text()
        answer = httpx.post(
            env.server.url + "/v1/completions",
            headers={"Authorization": f"Bearer {env.inference_key}"},
            json={"model": "acme-custom", "prompt": "Hello", "max_tokens": 4},
            timeout=60,
        )
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] >= 1
        unknown = env.server.cli(
            "admin", "endpoint", "create", "acme-x", "--org", "acme", "--arch", "tiny-llama",
            "--engine", "nope", check=False,
        )  # fmt: skip
        assert unknown.returncode == 2 and "small-batch" in unknown.stderr
    finally:
        env.server.stop()


def test_bad_template_file_is_refused_with_its_problem(tmp_path: Path) -> None:
    templates = tmp_path / "engines.json"
    templates.write_text(json.dumps({"bad": {"argv": ["serve", "{modeldir}"]}}))
    server = TurnoutServer(tmp_path / "data", env={"TURNOUT_ENGINE_TEMPLATES": str(templates)})
    result = server.cli("admin", "arch", "list", check=False)
    assert result.returncode != 0 and "modeldir" in result.stderr
