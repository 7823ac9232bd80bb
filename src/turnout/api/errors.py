"""The one place where errors become HTTP responses (DESIGN §4's flat body), plus the body-size
guard. ``HTTPException`` appears only here."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from turnout.api.schemas.base import ErrorBody
from turnout.errors import PayloadTooLarge, TurnoutError

log = logging.getLogger(__name__)

#: What each error status means on the management and admin APIs (DESIGN §4).
_MEANING = {
    400: "Bad request: the body is not JSON, or a value cannot be used (the message says why)",
    401: "No key, or not a valid key for this API",
    403: "The key's org may not do this (another org's resource, or a source it was not allowed)",
    404: "No such org, architecture, version, alias, endpoint or deployment (or not yours)",
    409: "Conflict: alias held by another version, version in use, reused Idempotency-Key, ...",
    413: "The request body is over TURNOUT_MAX_BODY_BYTES",
    422: "Schema violation: `param` is the field path (code validation_error)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer, each with the flat
    error body, so clients and schema-driven tests know every answer a route gives."""
    return {s: {"model": ErrorBody, "description": _MEANING[s]} for s in sorted(statuses)}


def error_response(exc: TurnoutError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _param(loc: Sequence[str | int]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    return ".".join(parts)


def _shown(value: object) -> str:
    """A short repr of the offending value for the message (long ones are cut)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first: dict[str, Any] = (
        dict(errors[0]) if errors else {"loc": ("body",), "msg": "invalid", "type": ""}
    )
    if first.get("type") == "json_invalid":
        body = {
            "message": f"request body is not valid JSON ({first.get('ctx', {}).get('error', '')});"
            " send a JSON object with Content-Type: application/json",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_json",
        }
        return JSONResponse(body, status_code=400)
    param = _param(first.get("loc", ()))
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "extra_forbidden":
        msg = "unknown field; remove it (see GET /openapi.json for the schema)"
    elif first.get("type") == "string_pattern_mismatch":
        pattern = first.get("ctx", {}).get("pattern", "")
        msg = f"{_shown(first.get('input'))} does not match {pattern}"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    body = {
        "message": f"{param}: {msg}{more}",
        "type": "invalid_request_error",
        "param": param,
        "code": "validation_error",
    }
    return JSONResponse(body, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    async def on_turnout(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TurnoutError)
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_response(exc)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see GET /openapi.json"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        code = "not_found" if exc.status_code == 404 else f"http_{exc.status_code}"
        body = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(TurnoutError("internal error; the server log has the details"))

    app.add_exception_handler(TurnoutError, on_turnout)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


class BodySizeLimit:
    """Refuses bodies over ``max_bytes`` with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body is over the limit of {self.max_bytes} bytes; send a smaller body "
            "(weights go by weight_uri, never in the body)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await error_response(self._too_large())(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise self._too_large()
            return message

        await self.app(scope, counting_receive, send)
