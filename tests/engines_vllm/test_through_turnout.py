"""vLLM behind Turnout, end to end: an endpoint with ``--engine vllm`` serves SmolLM2-135M
v1 to the `openai` client (plain and streaming) through the gateway, speaks Turnout's wire
(the endpoint id as ``model``, Turnout's fingerprint on every chunk, flat errors with vLLM's own
status) and rolls to v2 under streaming load without a failed or truncated request."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.rollout_env import Deployed
from tests.e2e.server import TurnoutServer
from tests.engines_vllm.conftest import CPU_ARGS
from turnout.demo.load import ClientLoop

# The module fixture builds SmolLM2 v1/v2 (once per session) and starts vLLM: minutes on CPU.
pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(1500)]

ENDPOINT = "acme-vllm"


@pytest.fixture(scope="module")
def env(
    vllm_python: Path, smollm2_versions: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    root = tmp_path_factory.mktemp("vllm-turnout")
    weights = root / "weights-in"
    for label, path in zip(("v1", "v2"), smollm2_versions, strict=True):
        shutil.copytree(path, weights / label)
    server = TurnoutServer(
        root / "data",
        env={
            "TURNOUT_ALLOWED_LOCAL_ROOTS": str(weights),
            "TURNOUT_VLLM_PYTHON": str(vllm_python),
            "TURNOUT_VLLM_ARGS": CPU_ARGS,
            # vLLM's CPU backend pins its threads to one logical CPU per physical core: the same
            # CPU for every process. A rollout runs v1 and v2 side by side, so let the OS spread
            # them; otherwise v2 starves behind v1's spinning threads and never gets ready.
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        },
    )
    server.cli("admin", "org", "create", "acme")
    mk = server.cli("admin", "key", "create", "--org", "acme", "--kind", "management").stdout
    ik = server.cli("admin", "key", "create", "--org", "acme", "--kind", "inference").stdout
    server.cli(
        "admin", "endpoint", "create", ENDPOINT, "--org", "acme", "--arch", "smollm2-135m",
        "--engine", "vllm",
    )  # fmt: skip
    server.start()
    deployed = Deployed(server, mk.strip(), ik.strip(), ENDPOINT)
    try:
        for label in ("v1", "v2"):
            with deployed.client() as client:
                body = client.wait_sync(
                    client.upload("acme", "smollm2-135m", str(weights / label)), timeout=300
                )
            assert body["response"]["sync_status"] == "done", body
            deployed.versions[label] = body
        first = deployed.wait_done(deployed.deploy("v1"), timeout=900)
        assert first["response"]["rollout_status"] == "complete", first
        yield deployed
    finally:
        server.stop(timeout=120)


def client(env: Deployed) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.server.url + "/v1", api_key=env.inference_key, max_retries=0)


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_plain_and_streaming_through_the_gateway(env: Deployed) -> None:
    fingerprint = env.fingerprint("v1")
    reply = client(env).chat.completions.create(model=ENDPOINT, messages=QUESTION, max_tokens=16)
    assert reply.model == ENDPOINT
    assert reply.system_fingerprint == fingerprint
    assert reply.choices[0].message.content and reply.usage and reply.usage.completion_tokens > 0
    chunks = list(
        client(env).chat.completions.create(
            model=ENDPOINT,
            messages=QUESTION,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks and {c.model for c in chunks} == {ENDPOINT}
    assert {c.system_fingerprint for c in chunks} == {fingerprint}  # ours, on every chunk
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_vllm_errors_reach_the_client_flat_with_their_status(env: Deployed) -> None:
    resp = httpx.post(
        env.server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {env.inference_key}"},
        json={"model": ENDPOINT, "messages": QUESTION, "max_tokens": 5000},  # > max_model_len
        timeout=60,
    )
    assert resp.status_code == 400
    body = resp.json()
    assert set(body) == {"message", "type", "param", "code"}, body
    assert "max_tokens" in body["message"] and body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client(env).chat.completions.create(model=ENDPOINT, messages=QUESTION, max_tokens=5000)


@dataclass
class StreamLoad(ClientLoop):
    """Streaming clients in a loop; a stream that ends without a finish_reason is truncated."""

    env: Deployed
    threads: int = field(default=3, kw_only=True)
    join_timeout: float | None = field(default=180, kw_only=True)
    outcomes: list[tuple[int | None, str | None]] = field(default_factory=list)

    def run(self, index: int) -> None:
        api = client(self.env)
        while not self.stopping.is_set():
            try:
                raw = api.chat.completions.with_raw_response.create(
                    model=ENDPOINT, messages=QUESTION, max_tokens=24, stream=True
                )
                finish = None
                for chunk in raw.parse():
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finish = chunk.choices[0].finish_reason
                version = int(raw.headers["x-turnout-version"])
                error = None if finish else "truncated: no finish_reason"
            except Exception as exc:  # every failure is an outcome the test asserts on
                version, error = None, f"{type(exc).__name__}: {exc}"
            self.outcomes.append((version, error))


@pytest.mark.timeout(1200)
def test_v1_to_v2_under_streaming_load(env: Deployed) -> None:
    with StreamLoad(env) as load:
        time.sleep(5)
        done = env.wait_done(env.deploy("v2"), timeout=900)
        time.sleep(5)
    assert done["response"]["rollout_status"] == "complete", done
    errors = [error for _, error in load.outcomes if error]
    assert not errors, errors[:5]
    versions = [v for v, _ in load.outcomes]
    assert env.version_id("v1") in versions and env.version_id("v2") in versions
    reply = client(env).chat.completions.create(model=ENDPOINT, messages=QUESTION, max_tokens=4)
    assert reply.system_fingerprint == env.fingerprint("v2")
