"""Rewrite a replica's ``text/event-stream`` answer chunk by chunk, the same for every engine.

Per ``data:`` event: ``model`` becomes the endpoint id and ``system_fingerprint`` the serving
version's, replaced or inserted in the bytes (the fast path: two regex searches and one slice,
no JSON parse). Parsed instead, which happens about once per stream: an event with ``usage``
(counted for the metrics and tokens-per-minute limits; dropped when the gateway asked for it
and the client did not), an error event (made Turnout's shape, see ``engine_errors``), or one
without a ``model`` key. ``time_info`` from the gateway's clock goes on the usage event the
client asked for, else on the ``finish_reason`` events, unless the engine sent its own.

Only the bytes after the last newline of a chunk are held back (a ``data:`` line split across
chunks); every complete line goes out with the chunk that completed it.
"""

from __future__ import annotations

import logging
from typing import Any

from turnout.gateway.engine_errors import error_event, flat_error, inner_error
from turnout.gateway.rewrite import (
    FINGERPRINT_KEY,
    MODEL_KEY,
    TimeInfo,
    Usage,
    append_member,
    key_value,
    loads,
    rewrite_json,
    usage_of,
)

logger = logging.getLogger(__name__)


class SSERewriter:
    __slots__ = (
        "_model",
        "_fingerprint",
        "_model_kv",
        "_fp_kv",
        "_held",
        "_wants_usage",
        "_time_info",
        "usage",
        "done",
        "failed",
    )

    def __init__(
        self, model: str, fingerprint: str | None, *, wants_usage: bool, time_info: TimeInfo
    ) -> None:
        self._model = model
        self._fingerprint = fingerprint
        self._model_kv = key_value("model", model)
        self._fp_kv = key_value("system_fingerprint", fingerprint) if fingerprint else b""
        self._held = b""
        #: the client asked for ``stream_options.include_usage`` (else the gateway did)
        self._wants_usage = wants_usage
        self._time_info = time_info
        self.usage: Usage | None = None
        #: the replica sent ``data: [DONE]``
        self.done = False
        #: the status of the error event the replica sent (0: none)
        self.failed = 0

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk if self._held else chunk
        cut = data.rfind(b"\n") + 1
        self._held = data[cut:]
        if cut == 0:
            return b""
        lines = data[:cut].split(b"\n")
        kept = []
        for line in lines:
            if line.startswith(b"data:"):
                if b"{" in line:
                    rewritten = self._rewrite_line(line)
                    if rewritten is None:
                        continue
                    line = rewritten
                elif b"[DONE]" in line:
                    self.done = True
            kept.append(line)
        return b"\n".join(kept)

    def flush(self) -> bytes:
        """What is left after the upstream ended without a final newline."""
        held, self._held = self._held, b""
        if held.startswith(b"data:") and b"{" in held:
            return self._rewrite_line(held) or b""
        if held.startswith(b"data:") and b"[DONE]" in held:
            self.done = True
        return held

    def _rewrite_line(self, line: bytes) -> bytes | None:
        if b'"error"' in line or (
            b'"usage"' in line and b'"usage":null' not in line and b'"usage": null' not in line
        ):
            return self._rewrite_parsed(line)
        match = MODEL_KEY.search(line)
        if match is None:
            return self._rewrite_parsed(line)
        start, end = match.span()
        if not self._fp_kv:
            line = line[:start] + self._model_kv + line[end:]
        else:
            found = FINGERPRINT_KEY.search(line)
            if found is None:  # vLLM: on every chunk but its last
                line = line[:start] + self._model_kv + b"," + self._fp_kv + line[end:]
            elif found.start() > end:
                line = (
                    line[:start]
                    + self._model_kv
                    + line[end : found.start()]
                    + self._fp_kv
                    + line[found.end() :]
                )
            else:
                line = (
                    line[: found.start()]
                    + self._fp_kv
                    + line[found.end() : start]
                    + self._model_kv
                    + line[end:]
                )
        if (
            not self._wants_usage
            and (b'"finish_reason":"' in line or b'"finish_reason": "' in line)
            and b'"time_info"' not in line
        ):
            line = append_member(line, self._time_info())
        return line

    def _rewrite_parsed(self, line: bytes) -> bytes | None:
        end = b"\r" if line.endswith(b"\r") else b""
        body = line[5:].strip()
        try:
            payload = loads(body)
        except ValueError:
            return line  # not JSON: the client's parser decides
        if not isinstance(payload, dict):
            return line
        if inner_error(payload):
            return self._error(payload) + end
        usage = usage_of(payload)
        if usage is not None:
            self.usage = usage
            if payload.get("choices") == [] and not self._wants_usage:
                return None  # the gateway asked for it; the client did not
        add_time = usage is not None if self._wants_usage else _finishes(payload.get("choices"))
        rewritten = rewrite_json(
            body, self._model, self._fingerprint, self._time_info if add_time else None, payload
        )
        return b"data: " + rewritten.body + end

    def _error(self, payload: dict[str, Any]) -> bytes:
        inner = payload["error"]
        code = inner.get("code") if isinstance(inner, dict) else None
        status = payload.get("status_code", code)
        if not isinstance(status, int) or not 400 <= status <= 599:
            status = 500
        self.failed = status
        logger.warning("endpoint %s: the replica sent an error event: %s", self._model, payload)
        return error_event(flat_error(payload, status, self._model), status)


def _finishes(choices: object) -> bool:
    return isinstance(choices, list) and any(
        isinstance(c, dict) and isinstance(c.get("finish_reason"), str) for c in choices
    )
