"""Property-based fuzzing of /management/v1 and /admin/v1 from the server's own /openapi.json
(issue 13), with schemathesis against a real `turnout serve`: no 5xx, every status a route
answers is documented, every body matches its documented schema, and every error body is the
flat ``{message, type, param, code}``.

Bounded (a fixed number of examples per operation, derandomized) so it runs in CI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from tests.e2e.hardening_env import ADMIN_TOKEN
from tests.e2e.server import TurnoutServer

pytestmark = pytest.mark.slow

EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TurnoutServer, str]]:
    root = tmp_path_factory.mktemp("fuzz")
    server = TurnoutServer(root / "data", env={"TURNOUT_ADMIN_TOKEN": ADMIN_TOKEN})
    server.cli("admin", "org", "create", "acme")
    key = server.cli("admin", "key", "create", "--org", "acme", "--kind", "management")
    server.cli("admin", "endpoint", "create", "acme-tiny", "--org", "acme", "--arch", "tiny-llama")
    server.start()
    try:
        yield server, key.stdout.strip()
    finally:
        server.stop()


def _operations(url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(url + "/openapi.json").include(
        path_regex="^/(management|admin)/v1/"
    )
    return [result.ok() for result in schema.get_all_operations()]


def _fuzz(operation: Any, url: str, token: str, problems: list[str]) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def fuzz(case: Any) -> None:
        response = case.call(base_url=url, headers={"Authorization": f"Bearer {token}"})
        try:
            case.validate_response(response, checks=CHECKS)
        # Schemathesis raises its failures as a BaseExceptionGroup: each is collected, then all
        # are reported together.
        except (Exception, FailureGroup) as exc:
            problems.append(f"{case.method} {case.formatted_path}: {exc}"[:800])
            return
        if response.status_code >= 400:
            body = response.json()
            if set(body) != {"message", "type", "param", "code"}:
                problems.append(f"{case.method} {case.formatted_path}: not flat: {body}"[:800])

    fuzz()


def test_fuzz_management_and_admin_apis(server: tuple[TurnoutServer, str]) -> None:
    running, management_key = server
    operations = _operations(running.url)
    assert len(operations) >= 20
    problems: list[str] = []
    for operation in operations:
        token = ADMIN_TOKEN if operation.path.startswith("/admin/") else management_key
        _fuzz(operation, running.url, token, problems)
    assert not problems, f"{len(problems)} problems:\n\n" + "\n\n".join(problems[:12])


def test_the_fuzzed_server_is_still_healthy(server: tuple[TurnoutServer, str]) -> None:
    running, _ = server
    with running.http(None) as anon:
        assert anon.get("/healthz").status_code == 200
    assert "Traceback" not in Path(running.log_path).read_text()
