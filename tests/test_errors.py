"""The error tree: every class maps to one of DESIGN §4's statuses and renders the flat body."""

from __future__ import annotations

import turnout.errors as errors

# DESIGN §4's statuses, plus the gateway's 502/504 for a replica that broke or went silent.
ALLOWED = {400, 401, 403, 404, 409, 413, 422, 429, 500, 502, 503, 504}


def _subclasses(cls: type[errors.TurnoutError]) -> list[type[errors.TurnoutError]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def test_every_error_maps_to_a_design_status() -> None:
    classes = [errors.TurnoutError, *_subclasses(errors.TurnoutError)]
    assert len(classes) > 10
    for cls in classes:
        assert cls.status in ALLOWED, cls
    # The tree itself (components may subclass it with fields of their own, e.g. Retry-After).
    for cls in (c for c in classes if c.__module__ == errors.__name__):
        body = cls("something is wrong; do this", param="field").body()
        assert set(body) == {"message", "type", "param", "code"}
        assert body["param"] == "field" and body["code"]


def test_not_ready_is_503_endpoint_not_ready() -> None:
    exc = errors.EndpointNotReady("no replica")
    assert (exc.status, exc.code) == (503, "endpoint_not_ready")
