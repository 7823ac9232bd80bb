"""Turnout's one exception tree. Services raise these; one handler per HTTP app renders them.

Every error renders as the inference API's flat body ``{message, type, param, code}`` with the
class's HTTP ``status``. Messages name the thing that was wrong and say what to do.

    TurnoutError (500, api_error)
    ├── BadRequest (400, invalid_request_error)
    │   ├── UnsupportedParameter (400)
    │   └── ContextLengthExceeded (400)
    ├── ValidationFailed (422, validation_error)
    ├── Unauthenticated (401, authentication_error)
    ├── PermissionDenied (403, permission_error)
    │   └── SourceNotAllowed (403) — a weight_uri outside what the operator allowed the org
    ├── NotFound (404, not_found_error)
    ├── Conflict (409, conflict_error)
    │   ├── AliasTaken (409)
    │   └── VersionInUse (409)
    ├── PayloadTooLarge (413, invalid_request_error)
    ├── RateLimited (429, too_many_requests_error)
    ├── EndpointNotReady (503, service_unavailable_error)
    ├── UpstreamBadResponse (502) — a replica answered with something that is not HTTP
    ├── UpstreamTimeout (504) — a replica stopped sending before its response was complete
    └── ConfigError (500) — a bad setting found at start, never a client's fault

Errors from lower layers (SQLAlchemy, boto3, aiohttp) are translated where they are caught,
with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import ClassVar


class TurnoutError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def body(self) -> dict[str, str | None]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


class BadRequest(TurnoutError):
    status = 400
    type = "invalid_request_error"
    default_code = "bad_request"


class UnsupportedParameter(BadRequest):
    default_code = "unsupported_parameter"


class ContextLengthExceeded(BadRequest):
    default_code = "context_length_exceeded"


class ValidationFailed(TurnoutError):
    status = 422
    type = "invalid_request_error"
    default_code = "validation_error"


class Unauthenticated(TurnoutError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(TurnoutError):
    status = 403
    type = "permission_error"
    default_code = "permission_denied"


class SourceNotAllowed(PermissionDenied):
    """The message names the rule, never what the server can see (paths, roots, buckets)."""

    default_code = "weight_uri_not_allowed"


class NotFound(TurnoutError):
    status = 404
    type = "not_found_error"
    default_code = "not_found"


class Conflict(TurnoutError):
    status = 409
    type = "conflict_error"
    default_code = "conflict"


class AliasTaken(Conflict):
    default_code = "alias_taken"


class VersionInUse(Conflict):
    default_code = "version_in_use"


class PayloadTooLarge(TurnoutError):
    status = 413
    type = "invalid_request_error"
    default_code = "payload_too_large"


class RateLimited(TurnoutError):
    status = 429
    type = "too_many_requests_error"
    default_code = "rate_limited"


class EndpointNotReady(TurnoutError):
    status = 503
    type = "service_unavailable_error"
    default_code = "endpoint_not_ready"


class UpstreamBadResponse(TurnoutError):
    status = 502
    type = "api_error"
    default_code = "upstream_bad_response"


class UpstreamTimeout(TurnoutError):
    status = 504
    type = "api_error"
    default_code = "upstream_timeout"


class ConfigError(TurnoutError):
    default_code = "config_error"
