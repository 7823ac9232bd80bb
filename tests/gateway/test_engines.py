"""Issue 11 item 2: the gateway answers the same way whatever the engine, here vLLM's wire
format (docs/engines.md) against the built-in engine's, through a real gateway on loopback."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from cerebras.cloud.sdk import Cerebras
from cerebras.cloud.sdk import InternalServerError as CerebrasServerError

from conftest import KEY_A, FakeReplica, GatewayServer, route, table

Replicas = Callable[[str], FakeReplica]
Gateway = Callable[..., GatewayServer]

CHAT = "/v1/chat/completions"
FP = "fp_0123456789"


@pytest.fixture
def gw(replicas: Replicas, gateway: Gateway) -> GatewayServer:
    return gateway(table(route("ep-1", "org-a", [replicas("a")], fingerprint=FP)))


def post(gw: GatewayServer, body: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY_A}"}
    return httpx.post(gw.url + CHAT, json=body, headers=headers, timeout=30)


def events(text: str) -> list[dict[str, Any]]:
    lines = [ln[len("data: ") :] for ln in text.split("\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


@pytest.mark.parametrize("shape", ["builtin", "vllm"])
def test_every_chunk_carries_the_endpoint_and_our_fingerprint(
    gw: GatewayServer, shape: str
) -> None:
    r = post(gw, {"model": "ep-1", "messages": [], "stream": True, "shape": shape})
    chunks = events(r.text)
    assert {c["model"] for c in chunks} == {"ep-1"}
    assert [c["system_fingerprint"] for c in chunks] == [FP] * len(chunks)
    # The usage the client did not ask for never reaches it; time_info rides on the last chunk.
    assert all(c["choices"] and "usage" not in c for c in chunks)
    assert ["time_info" in c for c in chunks] == [False] * (len(chunks) - 1) + [True]
    info = chunks[-1]["time_info"]
    assert set(info) == {"queue_time", "prompt_time", "completion_time", "total_time", "created"}
    assert info["total_time"] >= info["completion_time"] >= 0


def test_vllm_stream_usage_when_the_client_asks(replicas: Replicas, gateway: Gateway) -> None:
    a = replicas("a")
    gw = gateway(table(route("ep-1", "org-a", [a], fingerprint=FP)))
    body = {"model": "ep-1", "messages": [], "stream": True, "shape": "vllm"}
    r = post(gw, {**body, "stream_options": {"include_usage": True}})
    chunks = events(r.text)
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 43
    assert usage["system_fingerprint"] == FP and "time_info" in usage
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks[:-1]) == "a says hi"

    # Without the option the gateway asks the engine for usage anyway (it counts tokens)...
    post(gw, body)
    assert a.seen[-1].body["stream_options"] == {"include_usage": True}
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'tokens_total{endpoint="ep-1",kind="prompt",version="1"} 80.0' in metrics


def test_vllm_whole_answer(gw: GatewayServer) -> None:
    r = post(gw, {"model": "ep-1", "messages": [], "shape": "vllm"})
    body = r.json()
    assert body["model"] == "ep-1" and body["system_fingerprint"] == FP
    assert set(body["time_info"]) >= {"queue_time", "completion_time", "total_time", "created"}
    assert body["usage"]["prompt_tokens"] == 40


@pytest.mark.parametrize("stream", [False, True])
def test_vllm_error_body_is_flat_with_the_same_status(gw: GatewayServer, stream: bool) -> None:
    r = post(gw, {"model": "ep-1", "messages": [], "stream": stream, "vllm_error": True})
    assert r.status_code == 400
    assert r.json() == {
        "message": "max_tokens=5000 cannot be greater than max_model_len=2048. Please request "
        "fewer output tokens. (parameter=max_tokens, value=5000)",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "validation_error",
    }
    assert r.headers["x-turnout-version"] == "1"


def test_engine_5xx_that_is_not_json_is_flat_and_hides_the_engine(gw: GatewayServer) -> None:
    r = post(gw, {"model": "ep-1", "messages": [], "plain_error": 500})
    assert r.status_code == 500
    assert r.json() == {
        "message": "Endpoint ep-1's replica failed (HTTP 500); retry the request.",
        "type": "api_error",
        "param": None,
        "code": "engine_error",
    }


def test_vllm_error_mid_stream_reaches_the_sdks_as_an_error(gw: GatewayServer) -> None:
    body = {"model": "ep-1", "messages": [], "stream": True, "shape": "vllm"}
    r = post(gw, {**body, "vllm_error_mid": True})
    lines = [ln for ln in r.text.split("\n") if ln.startswith("data: ")]
    assert json.loads(lines[-2][6:]) == {
        "error": {
            "message": "Endpoint ep-1's replica failed (HTTP 500); retry the request.",
            "type": "api_error",
            "param": None,
            "code": "engine_error",
        },
        "status_code": 500,
    }
    assert lines[-1] == "data: [DONE]"

    messages: Any = [{"role": "user", "content": "hi"}]
    extra = {"shape": "vllm", "vllm_error_mid": True}
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0) as client:
        stream = client.chat.completions.create(
            model="ep-1", messages=messages, stream=True, extra_body=extra
        )
        with pytest.raises(openai.APIError, match="replica failed"):
            list(stream)
    cerebras = Cerebras(base_url=gw.url, api_key=KEY_A, warm_tcp_connection=False, max_retries=0)
    try:
        stream = cerebras.chat.completions.create(
            model="ep-1", messages=messages, stream=True, extra_body=extra
        )
        with pytest.raises(CerebrasServerError):
            list(stream)  # type: ignore[call-overload]
    finally:
        cerebras.close()


def test_tcp_warming_answers_the_cerebras_sdk(gw: GatewayServer) -> None:
    r = httpx.get(gw.url + "/v1/tcp_warming", headers={"Authorization": f"Bearer {KEY_A}"})
    assert r.status_code == 200
    # The SDK warms its connection on construction by default; then a real call works.
    client = Cerebras(base_url=gw.url, api_key=KEY_A, max_retries=0)
    try:
        done = client.chat.completions.create(
            model="ep-1", messages=[{"role": "user", "content": "hi"}], extra_body={"shape": "vllm"}
        )
        assert done.system_fingerprint == FP  # type: ignore[union-attr]
        assert done.time_info is not None  # type: ignore[union-attr]
    finally:
        client.close()
