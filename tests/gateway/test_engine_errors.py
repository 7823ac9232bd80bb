"""Engines' error bodies (docs/engines.md's vLLM samples) in Turnout's flat shape."""

from __future__ import annotations

import pytest

from turnout.gateway.engine_errors import flat_error


@pytest.mark.parametrize(
    ("payload", "status", "expected"),
    [
        (
            {
                "error": {
                    "message": "max_tokens=5000 cannot be greater than max_model_len=2048.",
                    "type": "BadRequestError",
                    "param": "max_tokens",
                    "code": 400,
                }
            },
            400,
            {
                "message": "max_tokens=5000 cannot be greater than max_model_len=2048.",
                "type": "invalid_request_error",
                "param": "max_tokens",
                "code": "validation_error",
            },
        ),
        (
            {
                "error": {
                    "message": "This model's maximum context length is 2048 tokens. However...",
                    "type": "BadRequestError",
                    "param": "input_tokens",
                    "code": 400,
                }
            },
            400,
            {
                "message": "This model's maximum context length is 2048 tokens. However...",
                "type": "invalid_request_error",
                "param": "input_tokens",
                "code": "context_length_exceeded",
            },
        ),
        (
            {"error": {"message": "bad", "type": "Bad Request", "param": "body.temperature"}},
            400,
            {
                "message": "bad",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "validation_error",
            },
        ),
        (
            {"detail": "Not Found"},
            404,
            {"message": "Not Found", "type": "not_found_error", "param": None, "code": "not_found"},
        ),
        (
            None,
            503,
            {
                "message": "Endpoint ep's replica failed (HTTP 503); retry the request.",
                "type": "service_unavailable_error",
                "param": None,
                "code": "engine_unavailable",
            },
        ),
        (  # the built-in engine's body is Turnout's already
            {
                "message": "prompt too long",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            },
            400,
            {
                "message": "prompt too long",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            },
        ),
    ],
)
def test_flat_error(payload: object, status: int, expected: dict[str, object]) -> None:
    assert flat_error(payload, status, "ep") == expected
