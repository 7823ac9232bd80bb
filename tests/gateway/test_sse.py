"""The stream rewriter on the built-in engine's chunks and on vLLM's (docs/engines.md)."""

from __future__ import annotations

import json
from typing import Any

from turnout.gateway.rewrite import Usage
from turnout.gateway.sse import SSERewriter

VLLM_STREAM = (
    b'data: {"id":"chatcmpl-85","object":"chat.completion.chunk","created":1796178715,'
    b'"model":"facts-endpoint","choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    b'"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n'
    b'data: {"id":"chatcmpl-85","object":"chat.completion.chunk","created":1796178715,'
    b'"model":"facts-endpoint","choices":[{"index":0,"delta":{"content":"The"},"logprobs":null,'
    b'"finish_reason":null,"token_ids":null}]}\n\n'
    b'data: {"id":"chatcmpl-85","object":"chat.completion.chunk","created":1796178715,'
    b'"model":"facts-endpoint","choices":[{"index":0,"delta":{"content":" turnout"},'
    b'"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}]}\n\n'
    b'data: {"id":"chatcmpl-85","object":"chat.completion.chunk","created":1796178715,'
    b'"model":"facts-endpoint","choices":[],"usage":{"prompt_tokens":40,"total_tokens":43,'
    b'"completion_tokens":3},"system_fingerprint":"vllm-0.32.0-83558d41"}\n\n'
    b"data: [DONE]\n\n"
)
VLLM_ERROR = (
    b'data: {"error": {"message": "EngineCore encountered an issue. See stack trace (above) for'
    b' the root cause.", "type": "InternalServerError", "param": null, "code": 500}}\n\n'
    b"data: [DONE]\n\n"
)


def time_info() -> bytes:
    return b'"time_info":{"total_time":0.25}'


def rewriter(fingerprint: str | None = "fp_new", wants_usage: bool = False) -> SSERewriter:
    return SSERewriter("ep-1", fingerprint, wants_usage=wants_usage, time_info=time_info)


def chunk(**extra: object) -> bytes:
    payload = {"id": "c", "model": "m", "system_fingerprint": "fp_x", "choices": [], **extra}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def parse(stream: bytes) -> list[dict[str, Any]]:
    return [json.loads(ln[6:]) for ln in stream.split(b"\n") if ln.startswith(b"data: {")]


def test_events_split_across_chunks_are_held_only_to_the_newline() -> None:
    rw = rewriter(wants_usage=True)
    stream = chunk(n=1) + chunk(n=2, usage={"prompt_tokens": 1, "completion_tokens": 2})
    stream += b"data: [DONE]\n\n"
    out = b""
    for i in range(0, len(stream), 7):
        out += rw.feed(stream[i : i + 7])
    out += rw.flush()
    events = parse(out)
    assert [e["n"] for e in events] == [1, 2]
    assert {e["model"] for e in events} == {"ep-1"}
    assert {e["system_fingerprint"] for e in events} == {"fp_new"}
    assert events[1]["time_info"] == {"total_time": 0.25}
    assert out.endswith(b"data: [DONE]\n\n")
    assert rw.usage == Usage(1, 2) and rw.done


def test_complete_lines_go_out_with_their_chunk() -> None:
    rw = rewriter(None)
    first = chunk()
    assert parse(rw.feed(first[:-1]))[0]["model"] == "ep-1"  # held: only the blank line
    assert rw.feed(b"\n") == b"\n"


def test_content_that_looks_like_a_key_is_left_alone() -> None:
    rw = rewriter()
    tricky = 'say "model": "x" and \\"system_fingerprint\\" "finish_reason":"stop"'
    (event,) = parse(rw.feed(chunk(choices=[{"delta": {"content": tricky}}])))
    assert event["choices"] == [{"delta": {"content": tricky}}]
    assert event["model"] == "ep-1" and event["system_fingerprint"] == "fp_new"
    assert "time_info" not in event


def test_missing_fields_are_added() -> None:
    rw = rewriter()
    (event,) = parse(rw.feed(b'data: {"id":"c"}\r\n\r\n'))
    assert event == {"id": "c", "model": "ep-1", "system_fingerprint": "fp_new"}


def test_vllm_stream_client_asked_for_usage() -> None:
    rw = rewriter(wants_usage=True)
    events = parse(rw.feed(VLLM_STREAM))
    assert len(events) == 4
    assert all(e["model"] == "ep-1" for e in events)
    assert all(e["system_fingerprint"] == "fp_new" for e in events)
    assert events[3]["choices"] == [] and events[3]["usage"]["completion_tokens"] == 3
    assert [("time_info" in e) for e in events] == [False, False, False, True]
    assert "".join(e["choices"][0]["delta"]["content"] for e in events[:3]) == "The turnout"
    assert rw.usage == Usage(40, 3) and rw.done and not rw.failed


def test_vllm_stream_usage_the_client_did_not_ask_for_is_dropped() -> None:
    rw = rewriter(wants_usage=False)
    out = rw.feed(VLLM_STREAM)
    events = parse(out)
    assert len(events) == 3 and all(e["choices"] for e in events)
    assert all(e["system_fingerprint"] == "fp_new" for e in events)
    # time_info rides on the finish_reason chunk instead.
    assert [("time_info" in e) for e in events] == [False, False, True]
    assert rw.usage == Usage(40, 3)
    assert out.endswith(b"data: [DONE]\n\n")


def test_vllm_error_event_becomes_turnouts_shape() -> None:
    rw = rewriter()
    (event,) = parse(rw.feed(VLLM_ERROR))
    assert event == {
        "error": {
            "message": "Endpoint ep-1's replica failed (HTTP 500); retry the request.",
            "type": "api_error",
            "param": None,
            "code": "engine_error",
        },
        "status_code": 500,
    }
    assert rw.failed == 500 and rw.done
