from __future__ import annotations

import json

from turnout.gateway.rewrite import Usage, rewrite_json

VLLM_WHOLE = (
    b'{"id": "chatcmpl-8910fde85f12af19", "object": "chat.completion", "created": 1796178712,'
    b' "model": "facts-endpoint", "choices": [{"index": 0, "message": {"role": "assistant",'
    b' "content": "The railway"}, "finish_reason": "length"}], "service_tier": null,'
    b' "system_fingerprint": "vllm-0.32.0-83558d41", "usage": {"prompt_tokens": 40,'
    b' "total_tokens": 48, "completion_tokens": 8}, "metrics": null}'
)


def time_info() -> bytes:
    return b'"time_info":{"queue_time":0.5}'


def test_rewrite_json_sets_fields_and_reads_usage() -> None:
    body = json.dumps({"model": "m", "usage": {"prompt_tokens": 2, "completion_tokens": 5}})
    out, payload, usage = rewrite_json(body.encode(), "ep", "fp_1")
    assert json.loads(out) == {
        "model": "ep",
        "system_fingerprint": "fp_1",
        "usage": {"prompt_tokens": 2, "completion_tokens": 5},
    }
    assert usage == Usage(2, 5)
    assert payload is not None and payload["model"] == "m"
    assert rewrite_json(b"not json", "ep", None) == (b"not json", None, None)


def test_vllm_answer_gets_our_fingerprint_and_time_info() -> None:
    out, _, usage = rewrite_json(VLLM_WHOLE, "ep-1", "fp_0123456789", time_info)
    body = json.loads(out)
    assert body["model"] == "ep-1"
    assert body["system_fingerprint"] == "fp_0123456789"
    assert body["time_info"] == {"queue_time": 0.5}
    assert body["choices"][0]["message"]["content"] == "The railway"
    assert usage == Usage(40, 8)
    # Untouched bytes stay as the replica wrote them (no re-dump).
    assert b'"created": 1796178712' in out


def test_engine_time_info_is_kept() -> None:
    body = b'{"model":"m","system_fingerprint":"x","time_info":{"queue_time":1}}'
    out, _, _ = rewrite_json(body, "ep", "fp_1", time_info)
    assert json.loads(out)["time_info"] == {"queue_time": 1}


def test_missing_fingerprint_is_inserted_after_model() -> None:
    out, _, _ = rewrite_json(b'{"id":"c","model":"m","choices":[]}', "ep", "fp_1")
    assert out == b'{"id":"c","model":"ep","system_fingerprint":"fp_1","choices":[]}'


def test_deep_nesting_is_not_json_rather_than_a_recursion_error() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert rewrite_json(deep, "ep", None).payload is None
