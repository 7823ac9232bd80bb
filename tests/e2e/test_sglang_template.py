"""SGLang by its template: Turnout starts `python -m sglang.launch_server` with SGLang's own
flags and routes to it only once `/health_generate` answers. No SGLang runs on this CPU, so the
engine is a fake that answers SGLang's command line and wire format (tests/fakes/sglang)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.rollout_env import make_deployed

pytestmark = pytest.mark.slow

FAKES = Path(__file__).resolve().parents[1] / "fakes"


def test_an_sglang_endpoint_serves_through_the_gateway(
    tmp_path: Path, tiny_model: TinyModelFactory
) -> None:
    path = os.pathsep.join(p for p in (str(FAKES), os.environ.get("PYTHONPATH", "")) if p)
    env = make_deployed(
        tmp_path, tiny_model, {"PYTHONPATH": path}, endpoint_args=("--engine", "sglang")
    )
    try:
        done = env.wait_done(env.deploy("v1"))
        assert done["response"]["rollout_status"] == "complete", done
        (log,) = (env.server.data_dir / "run" / "logs").glob("acme-tiny-*.log")
        started = log.read_text()
        assert "-m sglang.launch_server --model-path" in started
        assert "--context-length 512 --dtype auto --tp-size 1" in started  # tiny-llama's serving
        auth = {"Authorization": f"Bearer {env.inference_key}"}
        with httpx.Client(base_url=env.server.url, headers=auth, timeout=30) as http:
            reply = http.post(
                "/v1/chat/completions",
                json={"model": env.endpoint, "messages": [{"role": "user", "content": "hi"}]},
            )
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["model"] == env.endpoint
            assert body["system_fingerprint"] == env.fingerprint("v1")
            assert body["choices"][0]["message"]["content"].startswith("weights ")
            lines = []
            with http.stream(
                "POST",
                "/v1/chat/completions",
                json={"model": env.endpoint, "messages": [], "stream": True},
            ) as stream:
                lines = [line for line in stream.iter_lines() if line.startswith("data:")]
        assert lines[-1] == "data: [DONE]" and len(lines) > 2
        assert reply.headers["x-turnout-version"] == str(env.version_id("v1"))
    finally:
        env.server.stop()
