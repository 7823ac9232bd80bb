"""The built-in engine over HTTP: a real `turnout engine serve` process on the tiny model."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engine.harness import EngineProcess

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello, how are you?"}]


def _events(client: httpx.Client, path: str, body: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    with client.stream("POST", path, json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _reference(model_dir: Path, messages: list[dict[str, str]], n: int) -> tuple[str, int, int]:
    """Greedy text, prompt length and token count from plain `model.generate` on the weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    new = out[0, ids["input_ids"].shape[1] :]
    return tok.decode(new, skip_special_tokens=True), ids["input_ids"].shape[1], len(new)


def test_health_ready_models(client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["system_fingerprint"].startswith("fp_")
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]


def test_chat_matches_generate_and_counts_tokens(
    client: httpx.Client, tiny_model: Callable[..., Path]
) -> None:
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 12, "temperature": 0}
    resp = client.post(CHAT, json=body)
    assert resp.status_code == 200
    data = resp.json()
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert data["model"] == "tiny"
    assert data["system_fingerprint"].startswith("fp_")
    text, prompt_len, produced = _reference(tiny_model(seed=0), HELLO, 12)
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": text}
    assert choice["finish_reason"] == ("length" if produced == 12 else "stop")
    usage = data["usage"]
    assert usage["prompt_tokens"] == prompt_len
    assert usage["completion_tokens"] == produced
    assert usage["total_tokens"] == prompt_len + produced
    times = data["time_info"]
    assert set(times) == {"queue_time", "prompt_time", "completion_time", "total_time", "created"}
    assert times["total_time"] >= times["completion_time"] >= 0


def test_chat_stream_matches_non_stream(client: httpx.Client) -> None:
    body = {"messages": HELLO, "max_completion_tokens": 10, "temperature": 0}
    whole = client.post(CHAT, json=body).json()
    events = _events(client, CHAT, {**body, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(
        c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks
    )
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    final = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    assert [c["choices"][0]["finish_reason"] for c in final] == ["length"]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    assert "time_info" in usage


def test_stream_without_include_usage_has_no_usage(client: httpx.Client) -> None:
    events = _events(client, CHAT, {"messages": HELLO, "max_tokens": 3})
    assert events[-1] == "[DONE]"
    assert all("usage" not in c for c in events[:-1])


def test_completions_stream_and_not(client: httpx.Client) -> None:
    body = {"prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0}
    data = client.post("/v1/completions", json=body).json()
    assert data["object"] == "text_completion"
    assert data["usage"]["completion_tokens"] == 8
    assert data["choices"][0]["finish_reason"] == "length"
    events = _events(client, "/v1/completions", body)
    assert events[-1] == "[DONE]"
    text = "".join(c["choices"][0]["text"] for c in events[:-1])
    assert text == data["choices"][0]["text"]
    # Token ids are a prompt too.
    ids = client.post("/v1/completions", json={**body, "prompt": [5, 6, 7]})
    assert ids.status_code == 200 and ids.json()["usage"]["prompt_tokens"] == 3


def test_stop_sequence_trims_and_stops(client: httpx.Client) -> None:
    body = {"prompt": "The quick brown fox", "max_tokens": 20, "temperature": 0}
    full = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    stop = full[3:6]
    assert len(stop) == 3
    data = client.post("/v1/completions", json={**body, "stop": [stop, "zzzz-never"]}).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == full[: full.index(stop)]
    assert data["usage"]["completion_tokens"] < 20
    events = _events(client, "/v1/completions", {**body, "stop": stop})
    streamed = "".join(c["choices"][0]["text"] for c in events[:-1])
    assert streamed == choice["text"]


def test_seed_repeats_sampled_output(client: httpx.Client) -> None:
    body = {"messages": HELLO, "max_tokens": 16, "temperature": 1.0, "top_p": 0.9, "seed": 7}
    first = client.post(CHAT, json=body).json()["choices"][0]["message"]["content"]
    again = client.post(CHAT, json=body).json()["choices"][0]["message"]["content"]
    other = client.post(CHAT, json={**body, "seed": 8}).json()["choices"][0]["message"]["content"]
    assert first == again
    assert first != other
    greedy = {**body, "temperature": 0}
    g1 = client.post(CHAT, json=greedy).json()["choices"][0]["message"]["content"]
    g2 = client.post(CHAT, json=greedy).json()["choices"][0]["message"]["content"]
    assert g1 == g2


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"messages": HELLO, "n": 2}, 400, "n", "unsupported_parameter"),
        ({"messages": HELLO, "tools": [{"type": "function"}]}, 400, "tools", None),
        ({"messages": HELLO, "logprobs": True}, 400, "logprobs", None),
        ({"messages": HELLO, "response_format": {"type": "json_object"}}, 400, None, None),
        ({"messages": []}, 400, "messages", "bad_request"),
        ({"messages": HELLO, "max_tokens": 100000}, 400, "max_tokens", "context_length_exceeded"),
        ({"messages": [{"role": "user", "content": "word " * 600}]}, 400, "messages", None),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role", None),
        ({"messages": HELLO, "temperature": 9}, 400, "temperature", "validation_error"),
    ],
)
def test_bad_requests(
    client: httpx.Client, body: dict[str, Any], status: int, param: str | None, code: str | None
) -> None:
    resp = client.post(CHAT, json=body)
    assert resp.status_code == status
    err = resp.json()
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code


def test_unknown_fields_are_accepted(client: httpx.Client) -> None:
    resp = client.post(CHAT, json={"messages": HELLO, "max_tokens": 2, "x_custom": {"a": 1}})
    assert resp.status_code == 200


def test_openai_client(engine: EngineProcess) -> None:
    from openai import OpenAI

    with OpenAI(base_url=engine.url + "/v1", api_key="unused") as oa:
        resp = oa.chat.completions.create(
            model="tiny",
            messages=HELLO,
            max_tokens=5,
            temperature=0,  # type: ignore[arg-type]
        )
        assert resp.usage is not None and resp.usage.completion_tokens == 5
        stream = oa.chat.completions.create(
            model="tiny",
            messages=HELLO,  # type: ignore[arg-type]
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert "".join(parts) == resp.choices[0].message.content


def test_disconnect_mid_stream_frees_slot(client: httpx.Client, engine: EngineProcess) -> None:
    before = client.get("/v1/engine/stats").json()["cancelled"]
    body = {"prompt": "Hello", "max_tokens": 500, "temperature": 0, "stream": True}
    with httpx.Client(base_url=engine.url, timeout=60) as other:
        with other.stream("POST", "/v1/completions", json=body) as resp:
            lines = resp.iter_lines()
            while not next(lines).startswith("data: "):
                pass
            assert client.get("/v1/engine/stats").json()["active"] == 1
        # Leaving the block closed the connection mid-stream.
    deadline = time.monotonic() + 30
    stats = client.get("/v1/engine/stats").json()
    while stats["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = client.get("/v1/engine/stats").json()
    assert (stats["active"], stats["queued"]) == (0, 0)
    assert stats["cancelled"] == before + 1


def test_health_is_live_while_generating(client: httpx.Client, engine: EngineProcess) -> None:
    # The stalled side (503) needs a step that does not finish: test_control.py, with a model
    # double. Here the real scheduler under work must not look stalled.
    body = {"prompt": "Hello", "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.Client(base_url=engine.url, timeout=60) as other:
        with other.stream("POST", "/v1/completions", json=body) as resp:
            lines = resp.iter_lines()
            while not next(lines).startswith("data: "):
                pass
            health = client.get("/health")
            assert health.status_code == 200
            assert health.json()["ready"] is True and health.json()["swapping"] is False
            for _ in lines:
                pass
    after = client.get("/health").json()
    assert (after["active"], after["seconds_since_progress"]) == (0, 0.0)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": '
         '"a\\ud800b"}], "max_tokens": 2}', "messages.0.content"),
        ("/v1/completions", '{"model": "tiny", "prompt": "x\\udc00", "max_tokens": 2}', "prompt"),
    ],
)  # fmt: skip
def test_lone_surrogates_name_the_field(
    client: httpx.Client, path: str, body: str, param: str
) -> None:
    resp = client.post(path, content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["param"] == param
    assert client.post("/v1/completions", json={
        "model": "tiny", "prompt": "hi", "max_tokens": 2}).status_code == 200  # fmt: skip
