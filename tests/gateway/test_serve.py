"""The gateway inside real `turnout serve` processes: `--role gateway` answers every error
flat; operator limits set with `turnout admin` and `/admin/v1` reach the gateway with the keys;
the Metrics API and the console's per-version view in role `all`, and a clear 404 for that
view in role `api`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import TinyModelFactory
from tests.e2e.rollout_env import Deployed, make_deployed, wait_until

from turnout.demo.server import ServerProcess

FLAT = {"message", "type", "param", "code"}
ADMIN_TOKEN = "admin-token-for-the-gateway-tests-0123456789"
METRICS_WINDOW = 4


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", role="gateway")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_gateway_role_answers_every_error_flat(gateway_process: ServerProcess) -> None:
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


def test_console_view_needs_the_gateway_in_process(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", role="api")
    server.cli("admin", "org", "create", "acme")
    key = server.cli("admin", "key", "create", "--org", "acme", "--kind", "management")
    server.cli("admin", "endpoint", "create", "acme-tiny", "--org", "acme", "--arch", "tiny-llama")
    server.start()
    try:
        r = httpx.get(
            server.url + "/management/v1/endpoints/acme-tiny/metrics",
            headers={"Authorization": f"Bearer {key.stdout.strip()}"},
        )
        assert r.status_code == 404
        assert r.json()["code"] == "metrics_not_available"
        assert "/api/v1/metrics/organizations/acme" in r.json()["message"]
    finally:
        server.stop()


@pytest.fixture
def deployed(tmp_path: Path, tiny_model: TinyModelFactory) -> Iterator[Deployed]:
    # Windows of a few seconds rather than the default minute: the test reads a complete one.
    env = {"TURNOUT_ADMIN_TOKEN": ADMIN_TOKEN, "TURNOUT_METRICS_WINDOW": str(METRICS_WINDOW)}
    deployed = make_deployed(tmp_path, tiny_model, env=env)
    try:
        done = deployed.wait_done(deployed.deploy("v1"))
        assert done["response"]["rollout_status"] == "complete"
        yield deployed
    finally:
        deployed.server.stop()


def chat(d: Deployed, http: httpx.Client, **body: Any) -> httpx.Response:
    payload = {"model": d.endpoint, "messages": [{"role": "user", "content": "hi"}]}
    return http.post("/v1/chat/completions", json={"max_tokens": 4, **payload, **body})


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_limits_and_metrics_through_turnout_serve(deployed: Deployed) -> None:
    d = deployed
    server = d.server
    http = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {d.inference_key}"}, timeout=60
    )
    admin = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    )
    with http, admin:
        # `turnout admin key limit` reaches the gateway with the keys (within its refresh).
        listed = json.loads(server.cli("admin", "key", "list", "--org", "acme", "--json").stdout)
        (key,) = [k for k in listed["keys"] if k["kind"] == "inference"]
        out = json.loads(
            server.cli("admin", "key", "limit", key["id"], "--rpm", "2", "--json").stdout
        )
        assert out["rpm"] == 2 and out["tpm"] is None
        limited = wait_until(
            lambda: chat(d, http), lambda r: "x-ratelimit-limit-requests" in r.headers
        )
        assert limited.headers["x-ratelimit-limit-requests"] == "2"
        statuses = [chat(d, http).status_code for _ in range(3)]
        assert 429 in statuses
        server.cli("admin", "key", "limit", key["id"], "--rpm", "0")  # lifted
        wait_until(lambda: chat(d, http), lambda r: "x-ratelimit-limit-requests" not in r.headers)

        # /admin/v1: the org may have one request in flight; a second is refused meanwhile.
        r = admin.post("/admin/v1/orgs/acme:limit", json={"max_concurrent": 1})
        assert r.status_code == 200 and r.json()["max_concurrent"] == 1
        r = admin.post(f"/admin/v1/keys/{key['id']}:limit", json={"tpm": 100000})
        assert r.json()["tpm"] == 100000 and r.json()["rpm"] is None

        def some_refused_for_concurrency() -> bool:
            body = {"model": d.endpoint, "prompt": "a", "max_tokens": 400, "stream": True}
            with ThreadPoolExecutor(6) as pool:
                answers = list(
                    pool.map(lambda _: http.post("/v1/completions", json=body), range(6))
                )
            codes = {r.json()["code"] for r in answers if r.status_code == 429}
            return codes == {"concurrency_limit_exceeded"} and any(r.is_success for r in answers)

        wait_until(some_refused_for_concurrency, bool, timeout=60)
        admin.post("/admin/v1/orgs/acme:limit", json={"max_concurrent": None})

        # The models list tells the endpoint's own creation time.
        with d.api() as api:
            created = api.get("/management/v1/endpoints/acme-tiny").json()["created"]
        assert http.get("/v1/models").json()["data"][0]["created"] == created

        # The console's view and the Metrics API show the last complete window: traffic (3
        # answers and one 400 from the engine) goes on until a complete window holds all of it.
        def traffic_then_view() -> dict[str, Any]:
            for _ in range(3):
                assert chat(d, http).status_code == 200
            assert chat(d, http, max_tokens=-1).status_code == 400
            with d.api() as api:
                return dict(api.get(f"/management/v1/endpoints/{d.endpoint}/metrics").json())

        view = wait_until(
            traffic_then_view,
            lambda v: v["versions"][0]["error_rate"] > 0,  # a window with the 400 in it
            timeout=60,
            interval=0.5,
        )
        assert view["window_seconds"] == METRICS_WINDOW
        (v1,) = view["versions"]
        assert v1["version_id"] == d.version_id("v1")
        assert 0 < v1["error_rate"] < 1
        assert v1["ttft_p50_ms"] > 0 and v1["ttft_p95_ms"] >= v1["ttft_p50_ms"]

        text = http.get("/api/v1/metrics/organizations/acme").text
        found = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        base = (("endpoint", d.endpoint), ("organization_id", "acme"), ("version", "1"))
        assert found[("inference_endpoint_status", base)] == 1.0
        assert found[("requests_count_total", base)] >= 1
        assert ("queue_time_seconds", tuple(sorted((*base, ("percentile", "p99"))))) in found
