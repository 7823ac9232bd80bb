"""The management API tried as a new user would: a real `turnout serve`, the admin CLI, curl-like
HTTP calls (issue #2's walkthrough and every error it lists)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.server import TurnoutServer

V1 = "/management/v1"


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModelFactory
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("mgmt")
    weights = root / "weights-in"
    good = weights / "good"
    shutil.copytree(tiny_model(seed=1), good)
    corrupt = weights / "corrupt"
    shutil.copytree(good, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    wrong = weights / "wrong-config"
    shutil.copytree(good, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (wrong / "config.json").write_text(json.dumps(cfg))

    server = TurnoutServer(
        root / "data",
        env={"TURNOUT_ALLOWED_LOCAL_ROOTS": str(weights), "TURNOUT_MAX_BODY_BYTES": "65536"},
    )
    server.cli("admin", "org", "create", "my-org")
    server.cli("admin", "org", "create", "other-org")
    keys = {
        "mk": server.cli(
            "admin", "key", "create", "--org", "my-org", "--kind", "management"
        ).stdout.strip(),
        "ik": server.cli(
            "admin", "key", "create", "--org", "my-org", "--kind", "inference"
        ).stdout.strip(),
        "other": server.cli(
            "admin", "key", "create", "--org", "other-org", "--kind", "management"
        ).stdout.strip(),
    }
    server.cli(
        "admin", "endpoint", "create", "my-org-tiny", "--org", "my-org", "--arch", "tiny-llama"
    )
    server.cli(
        "admin", "endpoint", "create", "my-org-smol", "--org", "my-org", "--arch", "smollm2-135m"
    )
    server.cli(
        "admin", "endpoint", "create", "other-tiny", "--org", "other-org", "--arch", "tiny-llama"
    )
    server.start()
    try:
        yield {"server": server, "keys": keys, "good": good, "corrupt": corrupt, "wrong": wrong}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api(env: dict[str, Any]) -> Iterator[httpx.Client]:
    with env["server"].http(env["keys"]["mk"]) as client:
        yield client


def upload(
    api: httpx.Client, uri: str, aliases: list[str] | None = None, **extra: Any
) -> httpx.Response:
    model: dict[str, Any] = {"weight_uri": uri, **extra}
    if aliases is not None:
        model["version_aliases"] = aliases
    return api.post(
        f"{V1}/orgs/my-org/models:upload", json={"model_arch_id": "tiny-llama", "model": model}
    )


def wait_synced(api: httpx.Client, name: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = api.get(f"{V1}/{name}").json()
        if body["done"]:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{name} did not finish syncing")


def wait_deployed(api: httpx.Client, deployment_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = api.get(f"{V1}/deployments/{deployment_id}").json()
        if body["done"]:
            return body
        time.sleep(0.2)
    raise AssertionError(f"deployment {deployment_id} did not finish")


def assert_error(resp: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert set(body) == {"message", "type", "param", "code"}, body
    for word in words:
        assert word in body["message"], body
    return body


@pytest.fixture(scope="module")
def v1(api: httpx.Client, env: dict[str, Any]) -> dict[str, Any]:
    resp = upload(api, f"file://{env['good']}", ["production", "v1-stable"])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["name"] == "orgs/my-org/models/tiny-llama/versions/1"
    assert body["done"] is False
    assert body["response"]["customer_s3_uri"] == f"file://{env['good']}"
    assert body["response"]["version_aliases"] == ["production", "v1-stable"]
    assert body["response"]["sync_status"] in ("queued", "in_progress", "done")
    done = wait_synced(api, body["name"])
    assert done["response"]["sync_status"] == "done" and done["done"] is True
    assert done["response"]["digest"].startswith("sha256:")
    return done


def test_walkthrough_upload_alias_deploy_status(api: httpx.Client, v1: dict[str, Any]) -> None:
    listed = api.get(f"{V1}/orgs/my-org/models").json()
    assert "tiny-llama" in listed["model_architectures"]

    by_alias = api.get(f"{V1}/orgs/my-org/models/tiny-llama/versions/production").json()
    assert by_alias["name"] == v1["name"]

    patched = api.patch(
        f"{V1}/orgs/my-org/models/tiny-llama/versions/1",
        json={"version_aliases": ["production", "v1-stable", "latest"]},
    )
    assert patched.json() == {
        "name": "orgs/my-org/models/tiny-llama/versions/1",
        "version_aliases": ["production", "v1-stable", "latest"],
    }

    deployed = api.post(
        f"{V1}/endpoints/my-org-tiny:deployModel",
        json={"model": "orgs/my-org/models/tiny-llama/versions/production"},
    )
    assert deployed.status_code == 200, deployed.text
    op = deployed.json()
    assert set(op) == {"name", "done", "response"} and op["done"] is False
    info = op["response"]
    assert info["deployment_id"] == op["name"]
    assert info["version_id"] == 1 and isinstance(info["version_id"], int)
    assert info["rollout_status"] == "not_started"
    assert (info["endpoint_id"], info["org_name"], info["model_arch_id"]) == (
        "my-org-tiny",
        "my-org",
        "tiny-llama",
    )
    assert isinstance(info["created"], int) and isinstance(info["updated"], int)

    status = api.get(f"{V1}/endpoints/my-org-tiny").json()
    assert status["name"] == "my-org-tiny" and status["managing_org_name"] == "my-org"
    assert [d["id"] for d in status["deployed_models"]] == [op["name"]]
    shown = status["deployed_models"][0]
    assert shown["model"] == "orgs/my-org/models/tiny-llama/versions/1"
    # The rollout worker may already have picked it up.
    assert shown["version_alias"] == "production"
    assert shown["state"] in ("not_started", "in_progress")

    # The rollout worker runs it for real: a built-in engine replica on the tiny model.
    done = wait_deployed(api, op["name"])
    assert done["response"]["rollout_status"] == "complete", done
    steps = [e["step"] for e in done["response"]["events"]]
    assert steps[0] == "submitted" and steps[-1] == "done" and "switched" in steps
    status = api.get(f"{V1}/endpoints/my-org-tiny").json()
    (serving,) = status["deployed_models"]
    assert serving["id"] == op["name"] and serving["state"] == "complete" and serving["serving"]
    assert serving["replicas"] == {"ready": 1, "total": 1}
    history = api.get(f"{V1}/endpoints/my-org-tiny/deployments").json()["deployments"]
    assert history[0]["name"] == op["name"]

    endpoints = api.get(f"{V1}/orgs/my-org/endpoints").json()["endpoints"]
    assert {e["endpoint_id"] for e in endpoints} == {"my-org-tiny", "my-org-smol"}
    assert set(endpoints[0]) == {"endpoint_id", "model_arch_id", "created", "updated", "org_name"}

    # Deleting the serving version is refused, and the version stays.
    assert_error(api.delete(f"{V1}/orgs/my-org/models/tiny-llama/versions/1"), 409, "my-org-tiny")
    assert api.get(f"{V1}/orgs/my-org/models/tiny-llama/versions/1").status_code == 200
    assert_error(
        api.post(f"{V1}/endpoints/my-org-tiny/deployments/{op['name']}:cancel"), 409, "complete"
    )
    assert_error(api.post(f"{V1}/endpoints/my-org-tiny:rollback"), 409, "roll back")


def versions_snapshot(api: httpx.Client) -> list[Any]:
    return api.get(f"{V1}/orgs/my-org/models/tiny-llama/versions").json()["model_versions"]


def test_failed_syncs_name_the_problem(
    api: httpx.Client, env: dict[str, Any], v1: dict[str, Any]
) -> None:
    corrupt = wait_synced(api, upload(api, str(env["corrupt"])).json()["name"])
    assert corrupt["response"]["sync_status"] == "failed"
    assert "model.safetensors" in corrupt["error"]["message"]
    wrong = wait_synced(api, upload(api, f"file://{env['wrong']}").json()["name"])
    assert wrong["response"]["sync_status"] == "failed"
    assert "num_hidden_layers" in wrong["error"]["message"]
    # A failed version cannot be deployed.
    number = wrong["name"].rsplit("/", 1)[1]
    assert_error(
        api.post(
            f"{V1}/endpoints/my-org-tiny:deployModel",
            json={"model": f"orgs/my-org/models/tiny-llama/versions/{number}"},
        ),
        409,
        "failed",
    )


def test_bad_requests_change_nothing(
    api: httpx.Client, env: dict[str, Any], v1: dict[str, Any]
) -> None:
    before = versions_snapshot(api)
    path = f"{V1}/orgs/my-org/models/tiny-llama/versions/1"
    # Pattern violations are schema violations (issue 13): 422 naming the field path.
    assert_error(api.patch(path, json={"version_aliases": ["Bad_Alias"]}), 422, "Bad_Alias")
    assert_error(upload(api, str(env["good"]), ["1starts-with-digit"]), 422, "does not match")
    assert_error(upload(api, "file:///etc"), 403, "TURNOUT_ALLOWED_LOCAL_ROOTS")
    assert_error(api.get(f"{V1}/orgs/no-org/models"), 404, "no-org")
    assert_error(api.get(f"{V1}/orgs/my-org/models/no-arch/versions"), 404, "no-arch")
    assert_error(api.get(f"{V1}/orgs/my-org/models/tiny-llama/versions/99"), 404, "version 99")
    assert_error(api.get(f"{V1}/orgs/my-org/models/tiny-llama/versions/nope"), 404, "nope")
    assert_error(api.get(f"{V1}/endpoints/no-endpoint"), 404, "no-endpoint")
    deploy = f"{V1}/endpoints/my-org-tiny:deployModel"
    assert_error(
        api.post(deploy, json={"model": "orgs/my-org/models/tiny-llama/versions/nope"}), 404, "nope"
    )
    assert_error(api.post(deploy, json={"model": "not-a-name"}), 400, "orgs/<org_name>")
    smol = f"{V1}/endpoints/my-org-smol:deployModel"
    body = assert_error(
        api.post(smol, json={"model": "orgs/my-org/models/tiny-llama/versions/1"}), 400
    )
    assert body["code"] == "architecture_mismatch"
    bad_json = api.post(deploy, content=b'{"model": ', headers={"Content-Type": "application/json"})
    assert assert_error(bad_json, 400, "JSON")["code"] == "invalid_json"
    unknown = assert_error(api.post(deploy, json={"model": "x", "surprise": 1}), 422)
    assert unknown["param"] == "surprise" and unknown["code"] == "validation_error"
    missing = assert_error(
        api.post(f"{V1}/orgs/my-org/models:upload", json={"model_arch_id": "tiny-llama"}), 422
    )
    assert missing["param"] == "model"
    huge = {"model_arch_id": "tiny-llama", "model": {"weight_uri": "x" * 100_000}}
    assert_error(api.post(f"{V1}/orgs/my-org/models:upload", json=huge), 413, "limit")
    assert versions_snapshot(api) == before


def test_alias_held_by_another_version_is_409(
    api: httpx.Client, env: dict[str, Any], v1: dict[str, Any]
) -> None:
    second = wait_synced(api, upload(api, str(env["good"]), ["candidate"]).json()["name"])
    number = second["name"].rsplit("/", 1)[1]
    before = versions_snapshot(api)
    path = f"{V1}/orgs/my-org/models/tiny-llama/versions/{number}"
    assert_error(api.patch(path, json={"version_aliases": ["production"]}), 409, "version 1")
    assert_error(upload(api, str(env["good"]), ["production"]), 409, "version 1")
    assert versions_snapshot(api) == before
    # Identical content is stored once: the same digest as version 1.
    assert second["response"]["digest"] == v1["response"]["digest"]
    assert api.delete(path).json() == {"name": second["name"], "deleted": True}
    assert_error(api.get(path), 404)


def test_keys_and_org_scoping(env: dict[str, Any], v1: dict[str, Any]) -> None:
    server: TurnoutServer = env["server"]
    with server.http(None) as anon:
        assert_error(anon.get(f"{V1}/orgs/my-org/models"), 401, "Authorization")
    with server.http("tmk_not-a-real-key") as bad:
        assert_error(bad.get(f"{V1}/orgs/my-org/models"), 401)
    with server.http(env["keys"]["ik"]) as inference:
        assert_error(inference.get(f"{V1}/orgs/my-org/models"), 401, "management")
    with server.http(env["keys"]["other"]) as other:
        assert_error(other.get(f"{V1}/orgs/my-org/models"), 403, "other-org")
        assert_error(other.get(f"{V1}/orgs/my-org/models/tiny-llama/versions/1"), 403)
        # Endpoints of another org look exactly like unknown ones.
        assert_error(other.get(f"{V1}/endpoints/my-org-tiny"), 404, "my-org-tiny")
        assert_error(
            other.post(f"{V1}/endpoints/my-org-tiny:deployModel", json={"model": v1["name"]}), 404
        )
        assert other.get(f"{V1}/endpoints/other-tiny").status_code == 200
    listed = json.loads(server.cli("admin", "key", "list", "--org", "my-org", "--json").stdout)[
        "keys"
    ]
    revoked_id = next(k["id"] for k in listed if k["kind"] == "management")
    fresh = server.cli(
        "admin", "key", "create", "--org", "my-org", "--kind", "management"
    ).stdout.strip()
    server.cli("admin", "key", "revoke", revoked_id)
    with server.http(env["keys"]["mk"]) as revoked:
        assert_error(revoked.get(f"{V1}/orgs/my-org/models"), 401, "revoked")
    env["keys"]["mk"] = fresh


def test_idempotency_key_returns_the_original_operation(
    env: dict[str, Any], v1: dict[str, Any]
) -> None:
    with env["server"].http(env["keys"]["mk"]) as api:
        headers = {"Idempotency-Key": "upload-abc"}
        body = {"model_arch_id": "tiny-llama", "model": {"weight_uri": str(env["good"])}}
        first = api.post(f"{V1}/orgs/my-org/models:upload", json=body, headers=headers).json()
        second = api.post(f"{V1}/orgs/my-org/models:upload", json=body, headers=headers).json()
        assert first["name"] == second["name"]
        body["model"]["weight_uri"] = str(env["corrupt"])
        assert_error(api.post(f"{V1}/orgs/my-org/models:upload", json=body, headers=headers), 409)
        wait_synced(api, first["name"])
        deploy = {"model": first["name"]}
        d1 = api.post(
            f"{V1}/endpoints/my-org-tiny:deployModel", json=deploy, headers={"Idempotency-Key": "d"}
        ).json()
        d2 = api.post(
            f"{V1}/endpoints/my-org-tiny:deployModel", json=deploy, headers={"Idempotency-Key": "d"}
        ).json()
        assert d1["name"] == d2["name"]
        assert len(api.get(f"{V1}/endpoints/my-org-tiny/deployments").json()["deployments"]) == 2
        wait_deployed(api, d1["name"])


def test_openapi_and_health(env: dict[str, Any]) -> None:
    server: TurnoutServer = env["server"]
    with server.http(None) as anon:
        assert anon.get("/healthz").json()["status"] == "ok"
        spec = anon.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/management/v1/orgs/{org_name}/models",
        "/management/v1/orgs/{org_name}/models/{model_arch_id}/versions",
        "/management/v1/orgs/{org_name}/models:upload",
        "/management/v1/orgs/{org_name}/models/{model_arch_id}/versions/{version_id}",
        "/management/v1/orgs/{org_name}/endpoints",
        "/management/v1/endpoints/{endpoint_id}",
        "/management/v1/endpoints/{endpoint_id}:deployModel",
        "/management/v1/deployments/{deployment_id}",
        "/management/v1/endpoints/{endpoint_id}/deployments",
        "/management/v1/endpoints/{endpoint_id}/deployments/{deployment_id}:cancel",
        "/management/v1/endpoints/{endpoint_id}:rollback",
    ):
        assert path in paths, path
    assert {"get", "patch", "delete"} <= set(
        paths["/management/v1/orgs/{org_name}/models/{model_arch_id}/versions/{version_id}"]
    )


# The server refuses admin tokens shorter than 32 characters (issue 13).
ADMIN_TOKEN = "s3cret-s3cret-s3cret-s3cret-s3cret"


def test_admin_http_api(tmp_path: Path) -> None:
    server = TurnoutServer(tmp_path / "data", env={"TURNOUT_ADMIN_TOKEN": ADMIN_TOKEN}).start()
    try:
        with server.http(None) as anon:
            assert_error(
                anon.post("/admin/v1/orgs", json={"name": "acme"}), 401, "TURNOUT_ADMIN_TOKEN"
            )
        with server.http(ADMIN_TOKEN) as admin:
            assert admin.post("/admin/v1/orgs", json={"name": "acme"}).json()["name"] == "acme"
            key = admin.post("/admin/v1/keys", json={"org": "acme", "kind": "management"}).json()
            assert key["key"].startswith("tmk_")
            assert (
                "key" not in admin.get("/admin/v1/keys").json()["keys"][0]
                or admin.get("/admin/v1/keys").json()["keys"][0]["key"] is None
            )
            ep = admin.post(
                "/admin/v1/endpoints",
                json={"endpoint_id": "acme-tiny", "org": "acme", "arch": "tiny-llama"},
            )
            assert ep.status_code == 200, ep.text
            assert_error(
                admin.post(
                    "/admin/v1/endpoints",
                    json={"endpoint_id": "acme-tiny", "org": "acme", "arch": "tiny-llama"},
                ),
                409,
            )
            assert_error(
                admin.post(
                    "/admin/v1/endpoints", json={"endpoint_id": "x2", "org": "acme", "arch": "nope"}
                ),
                404,
            )
            assert [
                e["endpoint_id"] for e in admin.get("/admin/v1/endpoints").json()["endpoints"]
            ] == ["acme-tiny"]
            assert admin.delete("/admin/v1/endpoints/acme-tiny").status_code == 200
        with server.http(key["key"]) as api:
            assert "tiny-llama" in api.get(f"{V1}/orgs/acme/models").json()["model_architectures"]
    finally:
        server.stop()
