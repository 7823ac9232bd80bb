"""vLLM started from Turnout's ``vllm`` template serves SmolLM2 to the ``openai`` client, and
its wire format is what the gateway expects to normalise (docs/engines.md, "vLLM on CPU").
Last, on the same process: SIGTERM while a stream runs lets the stream finish."""

from __future__ import annotations

import json
import os
import signal

import httpx
import openai
import pytest

from tests.engines_vllm.conftest import MAX_MODEL_LEN, SERVED_NAME, VllmProcess

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1200)]

MESSAGES = [{"role": "user", "content": "Name three colours."}]


def client_for(engine: VllmProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=engine.url + "/v1", api_key="unused", max_retries=0)


def test_health_and_models_name_the_served_endpoint(vllm_v1: VllmProcess) -> None:
    assert httpx.get(vllm_v1.url + "/health").status_code == 200
    models = httpx.get(vllm_v1.url + "/v1/models").json()["data"]
    assert [m["id"] for m in models] == [SERVED_NAME]
    assert models[0]["max_model_len"] == MAX_MODEL_LEN  # the template's --max-model-len


def test_plain_chat_through_the_openai_client(vllm_v1: VllmProcess) -> None:
    with client_for(vllm_v1) as client:
        answer = client.chat.completions.create(
            model=SERVED_NAME, messages=MESSAGES, max_tokens=8, temperature=0
        )
    assert answer.model == SERVED_NAME
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None and 1 <= answer.usage.completion_tokens <= 8
    # vLLM's own fingerprint (vllm-<version>-<hash>): the gateway puts the version's in its place.
    assert (answer.system_fingerprint or "").startswith("vllm-")


def test_streaming_chat_through_the_openai_client(vllm_v1: VllmProcess) -> None:
    with client_for(vllm_v1) as client:
        stream = client.chat.completions.create(
            model=SERVED_NAME,
            messages=MESSAGES,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},  # exactly max_tokens tokens
        )
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["length"]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None and usage_chunk.usage.completion_tokens == 8
    assert {c.model for c in chunks} == {SERVED_NAME}


def test_stream_wire_format(vllm_v1: VllmProcess) -> None:
    body = {"model": SERVED_NAME, "messages": MESSAGES, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", vllm_v1.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    # What the gateway must fill in: vLLM sends no time_info, and its fingerprint only on the
    # last chunk, where DESIGN §4 wants the version's fingerprint on every chunk.
    assert not any("time_info" in c for c in chunks)
    assert [("system_fingerprint" in c) for c in chunks] == [False] * (len(chunks) - 1) + [True]


def test_max_tokens_beyond_the_context_is_a_400(vllm_v1: VllmProcess) -> None:
    too_many = MAX_MODEL_LEN + 1
    with client_for(vllm_v1) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, max_tokens=too_many)
    assert caught.value.status_code == 400
    # The raw body: nested under "error", with the status as "code" (Turnout's is flat).
    resp = httpx.post(
        vllm_v1.url + "/v1/chat/completions",
        json={"model": SERVED_NAME, "messages": MESSAGES, "max_tokens": too_many, "stream": True},
    )
    assert resp.status_code == 400
    assert resp.headers["content-type"] == "application/json"  # not a stream, even when asked
    error = resp.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", "max_tokens", 400)
    assert f"max_model_len={MAX_MODEL_LEN}" in error["message"]


def test_unknown_model_is_a_404(vllm_v1: VllmProcess) -> None:
    resp = httpx.post(
        vllm_v1.url + "/v1/chat/completions",
        json={"model": "no-such-endpoint", "messages": MESSAGES, "max_tokens": 2},
    )
    assert resp.status_code == 404
    error = resp.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("NotFoundError", "model", 404)


#: Few enough that the rest of the stream fits the template's --shutdown-timeout on a busy CPU.
SIGTERM_MAX_TOKENS = 32


def test_sigterm_lets_a_running_stream_finish(vllm_v1: VllmProcess) -> None:
    """With the template's ``--shutdown-timeout`` vLLM finishes the stream (every token, then
    ``[DONE]``) before it exits. Without it (vLLM's default, 0) the stream ends in an error
    chunk; docs/engines.md records both. Runs last: it stops the module's vLLM."""
    engine = vllm_v1
    assert "--shutdown-timeout" in engine.argv
    body = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": SIGTERM_MAX_TOKENS,
        "ignore_eos": True,
        "stream": True,
    }
    lines: list[str] = []
    with httpx.stream("POST", engine.url + "/v1/chat/completions", json=body, timeout=120) as resp:
        for line in resp.iter_lines():
            if line:
                lines.append(line)
            if len(lines) == 4:
                os.kill(engine.proc.pid, signal.SIGTERM)
    assert lines[-1] == "data: [DONE]", engine.log_tail()
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert not [c for c in chunks if "error" in c]
    tokens = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(tokens) == SIGTERM_MAX_TOKENS
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert engine.proc.wait(timeout=120) == 0  # and then it exits on its own
