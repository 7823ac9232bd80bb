"""Rewrite ``model`` and ``system_fingerprint`` in replica responses (DESIGN §4 "Inference").

A replica answers with its own model name and fingerprint; the client must see the endpoint id
and the fingerprint of the version that served it. Both are rewritten in the replica's bytes
with two anchored byte searches rather than a JSON load/dump, because the round trip was the
largest cost of the proxy's own work (and a dump would reformat numbers and strings).

Why a byte search is safe here: everything a user or the model controls (prompt, content,
tool-call arguments) is inside JSON *strings*, where every ``"`` is escaped, so the unescaped
sequence ``"model":`` can only be an object key. No nested object of a chat or completion
response has a ``model`` or ``system_fingerprint`` key. Whole bodies are parsed anyway (for
``usage``), so there the search is also checked: each key must occur exactly once, as the
top-level key, else the body takes the JSON path, which also adds a missing key.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple

_MODEL = re.compile(rb'"model"\s*:\s*(?:"(?:[^"\\]|\\.)*"|null)')
_FINGERPRINT = re.compile(rb'"system_fingerprint"\s*:\s*(?:"(?:[^"\\]|\\.)*"|null)')


def _std_loads(data: bytes) -> Any:
    return json.loads(data)


def _orjson_loads(data: bytes) -> Any:
    try:
        return _orjson_fast(data)
    except ValueError:
        # orjson refuses what the stdlib accepts (NaN, lone surrogates): let the stdlib
        # decide, so the error message (or the value) is the same with or without orjson.
        return json.loads(data)


try:
    from orjson import loads as _orjson_fast
except ImportError:  # optional speed-up: several times faster on request bodies
    loads: Callable[[bytes], Any] = _std_loads
else:
    loads = _orjson_loads


class Usage(NamedTuple):
    prompt_tokens: int
    completion_tokens: int


def _usage_of(payload: object) -> Usage | None:
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


def _dump(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=1024)
def key_value(key: str, value: str) -> bytes:
    """``"key":"value"`` as JSON bytes; cached, as endpoints and fingerprints repeat."""
    return _dump(key) + b":" + _dump(value)


def rewrite_json(body: bytes, model: str, fingerprint: str | None) -> tuple[bytes, Usage | None]:
    """Rewrite a whole JSON response; a body that is not a JSON object passes unchanged."""
    try:
        payload = loads(body)
    except ValueError:
        return body, None
    if not isinstance(payload, dict):
        return body, None
    usage = _usage_of(payload)
    if "model" in payload and body.count(b'"model"') == 1:
        out = _replace(body, _MODEL, key_value("model", model))
        if out is not None and fingerprint is not None:
            if "system_fingerprint" in payload and body.count(b'"system_fingerprint"') == 1:
                out = _replace(out, _FINGERPRINT, key_value("system_fingerprint", fingerprint))
            else:
                out = None
        if out is not None:
            return out, usage
    # A key missing (to be added) or found more than once: the exact but slower way (the
    # stdlib keeps integers orjson would turn into floats).
    try:
        payload = json.loads(body)
    except ValueError:  # pragma: no cover - orjson accepted it, and it is the stricter one
        return body, None
    payload["model"] = model
    if fingerprint is not None:
        payload["system_fingerprint"] = fingerprint
    return _dump(payload), usage


def _replace(body: bytes, pattern: re.Pattern[bytes], replacement: bytes) -> bytes | None:
    match = pattern.search(body)
    if match is None:
        return None
    return body[: match.start()] + replacement + body[match.end() :]


class SSERewriter:
    """Rewrites a ``text/event-stream`` body chunk by chunk.

    Only the bytes after the last newline of a chunk are held back (a ``data:`` line split
    across chunks); every complete line goes out with the chunk that completed it.
    """

    __slots__ = ("_model_kv", "_fp_kv", "_model", "_fingerprint", "_held", "usage")

    def __init__(self, model: str, fingerprint: str | None) -> None:
        self._model = model
        self._fingerprint = fingerprint
        self._model_kv = key_value("model", model)
        self._fp_kv = key_value("system_fingerprint", fingerprint) if fingerprint else b""
        self._held = b""
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk if self._held else chunk
        cut = data.rfind(b"\n") + 1
        self._held = data[cut:]
        if cut == 0:
            return b""
        lines = data[:cut].split(b"\n")
        for i, line in enumerate(lines):
            if line.startswith(b"data:") and b"{" in line:
                lines[i] = self._rewrite_line(line)
        return b"\n".join(lines)

    def flush(self) -> bytes:
        """What is left after the upstream ended without a final newline."""
        held, self._held = self._held, b""
        if held.startswith(b"data:") and b"{" in held:
            return self._rewrite_line(held)
        return held

    def _rewrite_line(self, line: bytes) -> bytes:
        if b'"usage"' in line:
            # Once per stream (the final chunk): parse it for the token counters.
            return self._rewrite_parsed(line)
        match = _MODEL.search(line)
        if match is None:
            return self._rewrite_parsed(line)
        line = line[: match.start()] + self._model_kv + line[match.end() :]
        if not self._fp_kv:
            return line
        match = _FINGERPRINT.search(line)
        if match is None:
            return self._rewrite_parsed(line)
        return line[: match.start()] + self._fp_kv + line[match.end() :]

    def _rewrite_parsed(self, line: bytes) -> bytes:
        end = b"\r" if line.endswith(b"\r") else b""
        body = line[5:].strip()
        rewritten, usage = rewrite_json(body, self._model, self._fingerprint)
        if usage is not None:
            self.usage = usage
        return b"data: " + rewritten + end
