"""Rewrite ``model`` and ``system_fingerprint`` in replica responses (DESIGN §4 "Inference").

A replica answers with its own model name and fingerprint; the client must see the endpoint id
and the fingerprint of the version that served it. Non-streaming bodies are small enough for a
JSON load/dump. Stream events are rewritten per ``data:`` line with two anchored byte searches,
because a per-event JSON round trip is the largest cost left on the streaming path.

Why a byte search is safe here: everything a user or the model controls (prompt, content,
tool-call arguments) is inside JSON *strings*, where every ``"`` is escaped, so the unescaped
sequence ``"model":`` can only be an object key. No nested object of a chat or completion chunk
has a ``model`` or ``system_fingerprint`` key. A line where either key is missing takes the
JSON path, which also adds the key.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

_MODEL = re.compile(rb'"model"\s*:\s*(?:"(?:[^"\\]|\\.)*"|null)')
_FINGERPRINT = re.compile(rb'"system_fingerprint"\s*:\s*(?:"(?:[^"\\]|\\.)*"|null)')


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


def rewrite_json(body: bytes, model: str, fingerprint: str | None) -> tuple[bytes, Usage | None]:
    """Rewrite a whole JSON response; a body that is not a JSON object passes unchanged."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body, None
    if not isinstance(payload, dict):
        return body, None
    payload["model"] = model
    if fingerprint is not None:
        payload["system_fingerprint"] = fingerprint
    return _dump(payload), _usage_of(payload)


class SSERewriter:
    """Rewrites a ``text/event-stream`` body chunk by chunk.

    Only the bytes after the last newline of a chunk are held back (a ``data:`` line split
    across chunks); every complete line goes out with the chunk that completed it.
    """

    __slots__ = ("_model_kv", "_fp_kv", "_model", "_fingerprint", "_held", "usage")

    def __init__(self, model: str, fingerprint: str | None) -> None:
        self._model = model
        self._fingerprint = fingerprint
        self._model_kv = b'"model":' + _dump(model)
        self._fp_kv = b'"system_fingerprint":' + _dump(fingerprint) if fingerprint else b""
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
