"""Reading a proxied request: its headers, its body (size-limited), and the fields the gateway
needs from the body (``model``, ``stream``, ``stream_options``).

The body is parsed once, by orjson; what it refuses (malformed JSON, nesting past 1024 levels,
NaN, lone surrogates) is a 400, never a second parse by the stdlib on the event loop and never
a ``RecursionError``. The body sent upstream is the client's own bytes, except that a stream
request without ``stream_options.include_usage`` gets it added (at the front of the object):
the gateway needs every stream's ``usage`` for the tokens-per-minute limits and the metrics,
and drops the usage event the client did not ask for (``sse``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import Receive, Scope

from turnout.errors import BadRequest, PayloadTooLarge
from turnout.gateway.rewrite import loads

# The client's id goes into the request line block sent upstream: visible ASCII only.
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_WITH_USAGE = b'"stream_options":{"include_usage":true},'


@dataclass(frozen=True, slots=True)
class Head:
    request_id: str
    token: str | None
    content_length: int | None


@dataclass(frozen=True, slots=True)
class Inbound:
    model: str
    stream: bool
    payload: dict[str, Any]
    #: what goes to the replica (the client's bytes, or with include_usage added)
    body: bytes
    #: the client asked for the usage event of a stream
    wants_usage: bool


def read_head(scope: Scope) -> Head:
    request_id: str | None = None
    token: str | None = None
    length: int | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                token = credential.strip()
        elif name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            request_id = value.decode("latin-1")
        elif name == b"content-length" and value.isdigit():
            length = int(value)
    return Head(request_id or new_request_id(), token, length)


def new_request_id() -> str:
    """A uuid4 in hex, without the cost of building a ``uuid.UUID``."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is over {limit} bytes; send a shorter one.")


async def read_body(head: Head, receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None when the client left first; 413 past ``limit`` bytes, by
    Content-Length up front or while a chunked body arrives."""
    if head.content_length is not None and head.content_length > limit:
        raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        part: bytes = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise _too_large(limit)
        parts.append(part)
        more = message.get("more_body", False)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def parse(body: bytes) -> Inbound:
    try:
        payload = loads(body)
    except ValueError as exc:
        raise BadRequest(
            f"The request body is not valid JSON ({exc}); send one JSON object.",
            code="invalid_json",
        ) from exc
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(
            "Field `model` is required: set it to the endpoint id.",
            param="model",
            code="validation_error",
        )
    stream = payload.get("stream") is True
    options = payload.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    if stream and not wants_usage:
        body = _with_usage(body, payload, options)
    return Inbound(model, stream, payload, body, wants_usage)


def _with_usage(body: bytes, payload: dict[str, Any], options: object) -> bytes:
    if "stream_options" not in payload:
        # A key added at the front: the object had no such key, so it stays unique.
        start = body.index(b"{") + 1
        return body[:start] + _WITH_USAGE + body[start:]
    if options is None or isinstance(options, dict):
        with_usage = {**(options or {}), "include_usage": True}
        return orjson.dumps({**payload, "stream_options": with_usage})
    return body  # not an object: the engine answers that with its own 400
