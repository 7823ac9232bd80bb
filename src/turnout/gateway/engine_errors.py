"""Engines' error bodies in Turnout's shape, so every engine fails the same way (DESIGN §4).

vLLM (and OpenAI-style servers) nest the error: ``{"error": {"message", "type", "param",
"code": 400}}``, with Python exception names as the type and the HTTP status as an integer
code; FastAPI-based servers answer unknown routes with ``{"detail": "Not Found"}``; the
built-in engine already answers Turnout's flat body. A whole answer becomes the flat body
``{"message", "type", "param", "code"}`` with the same HTTP status. An error event inside a
stream stays wrapped, ``{"error": {...flat...}, "status_code": N}``, because that is what the
OpenAI and Cerebras SDKs recognise as an error event (they raise on a ``data:`` whose JSON has
an ``error`` key; the Cerebras SDK takes the status from ``status_code``).

A 5xx's message is replaced by one of ours: engines put stack-trace hints and internals there
(vLLM: "EngineCore encountered an issue. See stack trace (above)..."); the proxy logs theirs.
"""

from __future__ import annotations

import json
from typing import Any

#: HTTP status -> (type, default code), as Turnout's own error classes render them.
_BY_STATUS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "bad_request"),
    401: ("authentication_error", "invalid_api_key"),
    402: ("invalid_request_error", "payment_required"),
    403: ("permission_error", "permission_denied"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("api_error", "request_timeout"),
    409: ("conflict_error", "conflict"),
    413: ("invalid_request_error", "payload_too_large"),
    422: ("invalid_request_error", "validation_error"),
    429: ("too_many_requests_error", "rate_limited"),
    503: ("service_unavailable_error", "engine_unavailable"),
}


def _kind(status: int) -> tuple[str, str]:
    found = _BY_STATUS.get(status)
    if found is not None:
        return found
    if status >= 500:
        return ("api_error", "engine_error")
    return ("invalid_request_error", "bad_request")


def _inner(payload: object) -> dict[str, Any]:
    """The object holding message/type/param/code, whichever way the engine wrapped it."""
    if not isinstance(payload, dict):
        return {}
    nested = payload.get("error")
    if isinstance(nested, dict):
        return nested
    if isinstance(nested, str):
        return {"message": nested}
    if isinstance(payload.get("detail"), str):
        return {"message": payload["detail"]}
    return payload


def _code(code: object, status: int, message: str, param: str | None) -> str:
    if isinstance(code, str) and code:
        return code
    if status == 400 and "maximum context length" in message:
        return "context_length_exceeded"
    if status == 400 and param:
        return "validation_error"
    if status == 404 and param == "model":
        return "model_not_found"
    return _kind(status)[1]


def flat_error(payload: object, status: int, endpoint_id: str) -> dict[str, Any]:
    """Turnout's flat body for an engine's error answer (``payload``: its parsed JSON, or
    None when it was not JSON)."""
    inner = _inner(payload)
    message = inner.get("message")
    param = inner.get("param")
    if isinstance(param, str) and param.startswith("body."):
        param = param[len("body.") :]  # a pydantic location; the client knows the field
    if not isinstance(param, str):
        param = None
    if status >= 500:
        message = f"Endpoint {endpoint_id}'s replica failed (HTTP {status}); retry the request."
    elif not isinstance(message, str) or not message:
        message = f"Endpoint {endpoint_id}'s replica refused the request (HTTP {status})."
    # A Turnout-shaped type is kept; an exception class name ("BadRequestError") is not.
    error_type = inner.get("type")
    if not isinstance(error_type, str) or not error_type.endswith("_error") or status >= 500:
        error_type = _kind(status)[0]
    return {
        "message": message,
        "type": error_type,
        "param": param,
        "code": _code(inner.get("code"), status, message, param),
    }


def error_event(error: dict[str, Any], status: int) -> bytes:
    """An SSE ``data:`` line (no trailing newline) carrying ``error``."""
    return b"data: " + json.dumps({"error": error, "status_code": status}).encode()


def stream_error(status: int, code: str, message: str) -> dict[str, Any]:
    """The gateway's own error for a stream that broke off (the replica died or stalled)."""
    return {"message": message, "type": _kind(status)[0], "param": None, "code": code}


def inner_error(payload: object) -> bool:
    """Whether a stream event's JSON is an error event."""
    return isinstance(payload, dict) and isinstance(payload.get("error"), dict | str)
