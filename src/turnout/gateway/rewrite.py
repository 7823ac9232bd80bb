"""Make every engine's answer Turnout's (DESIGN §4 "Inference"; issue 11 item 2).

A replica answers with its own model name and fingerprint (vLLM: ``vllm-0.32.0-…``, and only on
a stream's last chunk); the client must see the endpoint id and the fingerprint of the version
that served it, on every chunk. Both are rewritten in the replica's bytes with anchored byte
searches rather than a JSON load/dump, because the round trip was the largest cost of the
proxy's own work (and a dump would reformat numbers and strings). A missing fingerprint is
inserted right after ``model``.

Why a byte search is safe here: everything a user or the model controls (prompt, content,
tool-call arguments) is inside JSON *strings*, where every ``"`` is escaped, so the unescaped
sequence ``"model":`` can only be an object key. No nested object of a chat or completion
response has a ``model`` or ``system_fingerprint`` key. Whole bodies are parsed anyway (for
``usage``), so there the search is also checked: each key must occur exactly once, as the
top-level key, else the body takes the JSON path, which also adds a missing key.

``time_info`` is added from the gateway's own clock when the engine sends none (vLLM never
does): on whole answers, and on a stream's usage chunk (or its ``finish_reason`` chunks when
the client did not ask for usage).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

MODEL_KEY = re.compile(rb'"model"\s*:\s*(?:"(?:[^"\\]|\\.)*"|null)')
FINGERPRINT_KEY = re.compile(rb'"system_fingerprint"\s*:\s*(?:"(?:[^"\\]|\\.)*"|null)')


def loads(data: bytes) -> Any:
    """Parse JSON with orjson; raise ``ValueError`` for anything that is not JSON.

    orjson refuses nesting past 1024 levels, NaN and lone surrogates with a ``ValueError``; its
    answer is final (no second, slower parse by the stdlib on the event loop).
    """
    return orjson.loads(data)


def _exact_loads(data: bytes) -> Any:
    """The stdlib's parse (it keeps integers of any size), guarded against deep nesting."""
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError("the JSON nests too deeply") from exc


class Usage(NamedTuple):
    prompt_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_of(payload: object) -> Usage | None:
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    return Usage(
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )


def engine_queue_time(payload: object) -> float | None:
    """The engine's own ``time_info.queue_time``, when it reports one."""
    if isinstance(payload, dict):
        info = payload.get("time_info")
        if isinstance(info, dict) and isinstance(info.get("queue_time"), int | float):
            return float(info["queue_time"])
    return None


def _dump(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=1024)
def key_value(key: str, value: str) -> bytes:
    """``"key":"value"`` as JSON bytes; cached, as endpoints and fingerprints repeat."""
    return _dump(key) + b":" + _dump(value)


def append_member(obj: bytes, member: bytes) -> bytes:
    """Add ``member`` (``"key":value``) to the JSON object ``obj`` before its closing brace."""
    end = obj.rstrip()
    return end[:-1] + b"," + member + b"}" + obj[len(end) :]


TimeInfo = Callable[[], bytes]  # the ``"time_info":{...}`` member, measured when called


class Rewritten(NamedTuple):
    body: bytes
    payload: dict[str, Any] | None  #: the parsed answer (None: it was not a JSON object)
    usage: Usage | None


def rewrite_json(
    body: bytes,
    model: str,
    fingerprint: str | None,
    time_info: TimeInfo | None = None,
    parsed: dict[str, Any] | None = None,
) -> Rewritten:
    """Rewrite a whole JSON answer (``parsed``: the body parsed already, to spare a second
    parse); a body that is not a JSON object passes unchanged."""
    if parsed is not None:
        payload = parsed
    else:
        try:
            payload = loads(body)
        except ValueError:
            return Rewritten(body, None, None)
        if not isinstance(payload, dict):
            return Rewritten(body, None, None)
    usage = usage_of(payload)
    add_time = time_info is not None and "time_info" not in payload
    out: bytes | None = None
    if "model" in payload and body.count(b'"model"') == 1:
        out = _replace(body, MODEL_KEY, key_value("model", model))
        if out is not None and fingerprint is not None:
            out = _set_fingerprint(out, payload, fingerprint)
    if out is None:
        # A key missing (to be added) or found more than once: the exact but slower way (the
        # stdlib keeps integers orjson would turn into floats).
        try:
            exact = _exact_loads(body)
        except ValueError:  # pragma: no cover - orjson accepted it, and it is the stricter one
            return Rewritten(body, payload, usage)
        exact["model"] = model
        if fingerprint is not None:
            exact["system_fingerprint"] = fingerprint
        out = _dump(exact)
    if add_time:
        assert time_info is not None
        out = append_member(out, time_info())
    return Rewritten(out, payload, usage)


def _set_fingerprint(body: bytes, payload: dict[str, Any], fingerprint: str) -> bytes | None:
    """Replace the top-level fingerprint, or insert it after ``model``; None: ambiguous."""
    count = body.count(b'"system_fingerprint"')
    if "system_fingerprint" in payload and count == 1:
        return _replace(body, FINGERPRINT_KEY, key_value("system_fingerprint", fingerprint))
    if "system_fingerprint" not in payload and count == 0:
        match = MODEL_KEY.search(body)
        if match is None:  # pragma: no cover - model was just written
            return None
        kv = key_value("system_fingerprint", fingerprint)
        return body[: match.end()] + b"," + kv + body[match.end() :]
    return None


def _replace(body: bytes, pattern: re.Pattern[bytes], replacement: bytes) -> bytes | None:
    match = pattern.search(body)
    if match is None:
        return None
    return body[: match.start()] + replacement + body[match.end() :]
