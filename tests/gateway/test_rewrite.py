from __future__ import annotations

import json

from turnout.gateway.rewrite import SSERewriter, Usage, rewrite_json


def chunk(**extra: object) -> bytes:
    payload = {"id": "c", "model": "m", "system_fingerprint": "fp_x", "choices": [], **extra}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def parse(stream: bytes) -> list[dict[str, object]]:
    out = []
    for line in stream.split(b"\n"):
        if line.startswith(b"data: {"):
            out.append(json.loads(line[6:]))
    return out


def test_rewrite_json_sets_fields_and_reads_usage() -> None:
    body = json.dumps({"model": "m", "usage": {"prompt_tokens": 2, "completion_tokens": 5}})
    out, usage = rewrite_json(body.encode(), "ep", "fp_1")
    assert json.loads(out) == {
        "model": "ep",
        "system_fingerprint": "fp_1",
        "usage": {"prompt_tokens": 2, "completion_tokens": 5},
    }
    assert usage == Usage(2, 5)
    assert rewrite_json(b"not json", "ep", None) == (b"not json", None)


def test_events_split_across_chunks_are_held_only_to_the_newline() -> None:
    rw = SSERewriter("ep-1", "fp_new")
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
    assert out.endswith(b"data: [DONE]\n\n")
    assert rw.usage == Usage(1, 2)


def test_complete_lines_go_out_with_their_chunk() -> None:
    rw = SSERewriter("ep-1", None)
    first = chunk()
    assert parse(rw.feed(first[:-1]))[0]["model"] == "ep-1"  # held: only the blank line
    assert rw.feed(b"\n") == b"\n"


def test_content_that_looks_like_a_key_is_left_alone() -> None:
    rw = SSERewriter("ep-1", "fp_new")
    tricky = 'say "model": "x" and \\"system_fingerprint\\"'
    (event,) = parse(rw.feed(chunk(choices=[{"delta": {"content": tricky}}])))
    assert event["choices"] == [{"delta": {"content": tricky}}]
    assert event["model"] == "ep-1" and event["system_fingerprint"] == "fp_new"


def test_missing_fields_are_added() -> None:
    rw = SSERewriter("ep-1", "fp_new")
    (event,) = parse(rw.feed(b'data: {"id":"c"}\r\n\r\n'))
    assert event == {"id": "c", "model": "ep-1", "system_fingerprint": "fp_new"}
