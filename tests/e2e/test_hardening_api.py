"""API fidelity through a real server (issue 13): pattern violations are 422 with the field
path, odd version references are clean 404s, an endpoint's `updated` moves with a deployment,
and /openapi.json documents every error status a route answers with the flat error body."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.hardening_env import deployed_with_stub
from tests.e2e.rollout_env import Deployed

pytestmark = pytest.mark.slow

V1 = "/management/v1"
VERSIONS = f"{V1}/orgs/acme/models/tiny-llama/versions"


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModelFactory
) -> Iterator[Deployed]:
    deployed, _ = deployed_with_stub(tmp_path_factory.mktemp("api"), tiny_model)
    try:
        yield deployed
    finally:
        deployed.server.stop()


def _upload(env: Deployed, **model: Any) -> Any:
    with env.api() as api:
        return api.post(
            f"{V1}/orgs/acme/models:upload",
            json={"model_arch_id": "tiny-llama", "model": {"weight_uri": "s3://b/p", **model}},
        )


def _assert_422(resp: Any, param: str) -> None:
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert set(body) == {"message", "type", "param", "code"}
    assert body["code"] == "validation_error" and body["param"] == param, body


@pytest.mark.parametrize("alias", ["Prod", "prod\n", "p", "prod-", "9prod", "pro d"])
def test_alias_pattern_violations_are_422_with_the_field_path(env: Deployed, alias: str) -> None:
    _assert_422(_upload(env, version_aliases=["fine", alias]), "model.version_aliases.1")
    with env.api() as api:
        resp = api.patch(f"{VERSIONS}/1", json={"version_aliases": [alias]})
    _assert_422(resp, "version_aliases.0")


@pytest.mark.parametrize("suffix", ["", "has space", "x" * 65, "ok\n", "é"])
def test_fingerprint_suffix_violations_are_422(env: Deployed, suffix: str) -> None:
    _assert_422(_upload(env, system_fingerprint_suffix=suffix), "model.system_fingerprint_suffix")


def test_a_duplicate_alias_is_a_422(env: Deployed) -> None:
    with env.api() as api:
        resp = api.patch(f"{VERSIONS}/1", json={"version_aliases": ["twice", "twice"]})
    _assert_422(resp, "version_aliases")


@pytest.mark.parametrize("ref", ["²", "１", "99999999999999999999999", "prod%0A", "-1", "a%00b"])
def test_odd_version_references_are_clean_404s(env: Deployed, ref: str) -> None:
    with env.api() as api:
        for method in ("GET", "DELETE"):
            resp = api.request(method, f"{VERSIONS}/{ref}")
            assert resp.status_code == 404, (method, ref, resp.text)
            assert resp.json()["code"] == "version_not_found"
        resp = api.patch(f"{VERSIONS}/{ref}", json={"version_aliases": []})
        assert resp.status_code == 404, resp.text
        resp = api.post(
            f"{V1}/endpoints/{env.endpoint}:deployModel",
            json={"model": f"orgs/acme/models/tiny-llama/versions/{ref}"},
        )
        assert resp.status_code in (400, 404), resp.text
        assert set(resp.json()) == {"message", "type", "param", "code"}


def test_odd_ids_in_paths_are_clean_404s(env: Deployed) -> None:
    with env.api() as api:
        for path in (
            f"{V1}/deployments/not-a-uuid",
            f"{V1}/deployments/%C2%B2",
            f"{V1}/endpoints/ACME%0A",
            f"{V1}/endpoints/{env.endpoint}/deployments/x%00y:cancel",
            f"{V1}/orgs/ac%00me/endpoints",
        ):
            method = "POST" if path.endswith(":cancel") else "GET"
            resp = api.request(method, path)
            assert resp.status_code == 404, (path, resp.text)


def test_endpoint_updated_moves_when_a_deployment_is_submitted(env: Deployed) -> None:
    with env.api() as api:
        before = api.get(f"{V1}/endpoints/{env.endpoint}").json()
        # Timestamps are whole seconds: make sure a second has passed since the endpoint was made.
        while time.time() < before["updated"] + 1.2:
            time.sleep(0.1)
        deployment = api.post(
            f"{V1}/endpoints/{env.endpoint}:deployModel", json={"model": env.versions["v1"]["name"]}
        ).json()
        after = api.get(f"{V1}/endpoints/{env.endpoint}").json()
        listed = api.get(f"{V1}/orgs/acme/endpoints").json()["endpoints"]
    assert after["updated"] > before["updated"]
    assert after["updated"] == deployment["response"]["created"]
    assert [e["updated"] for e in listed if e["endpoint_id"] == env.endpoint] == [after["updated"]]
    assert env.wait_done(deployment["name"])["response"]["rollout_status"] == "complete"


def test_openapi_documents_every_error_with_the_flat_body(env: Deployed) -> None:
    with env.api() as api:
        spec = api.get("/openapi.json").json()
    flat = spec["components"]["schemas"]["ErrorBody"]
    assert set(flat["properties"]) == {"message", "type", "param", "code"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        if not path.startswith(("/management/v1", "/admin/v1")):
            continue
        for method, op in operations.items():
            errors = {s: r for s, r in op["responses"].items() if s.startswith(("4", "5"))}
            assert {"401", "422"} <= set(errors), (method, path)
            if "requestBody" in op:
                assert {"400", "413"} <= set(errors), (method, path)
            for status, response in errors.items():
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ErrorBody", (method, path, status)


def test_an_unknown_version_in_a_deploy_is_404_and_changes_nothing(env: Deployed) -> None:
    with env.api() as api:
        history = api.get(f"{V1}/endpoints/{env.endpoint}/deployments").json()["deployments"]
        resp = api.post(
            f"{V1}/endpoints/{env.endpoint}:deployModel",
            json={"model": "orgs/acme/models/tiny-llama/versions/no-such-alias"},
        )
        assert resp.status_code == 404 and resp.json()["code"] == "version_not_found"
        again = api.get(f"{V1}/endpoints/{env.endpoint}/deployments").json()["deployments"]
    assert again == history
