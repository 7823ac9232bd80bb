"""`turnout serve --role gateway` as its own process: every error in the flat body, unknown
routes and methods included (no FastAPI ``{"detail": ...}``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from turnout.demo.server import ServerProcess

FLAT = {"message", "type", "param", "code"}


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", role="gateway")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_gateway_role_answers_every_error_flat(gateway_process: ServerProcess) -> None:
    import httpx

    with httpx.Client(base_url=gateway_process.url, timeout=30) as http:
        assert http.get("/healthz").status_code == 200
        cases = [
            ("GET", "/nope", 404),
            ("GET", "/management/v1/orgs/x/endpoints", 404),
            ("POST", "/v1/models", 405),
            ("PUT", "/healthz", 405),
            ("GET", "/v1/completions", 405),
            ("POST", "/v1/chat/completions", 401),
            ("GET", "/v1/models", 401),
            ("GET", "/api/v1/metrics/organizations/acme", 401),
        ]
        for method, path, status in cases:
            r = http.request(method, path)
            assert r.status_code == status, (method, path, r.text)
            assert set(r.json()) == FLAT, (method, path, r.text)
        assert http.get("/v1/tcp_warming").status_code == 200
