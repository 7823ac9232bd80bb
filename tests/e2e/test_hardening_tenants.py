"""Tenants and secrets through a real server (issue 13): weight sources scoped per org (S3,
local directories, Hugging Face with the org's own token), engines without the server's
secrets, a token-guarded /metrics, tenant errors without paths or engine log lines, and a
server that refuses weak tokens and a second server on its data dir."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.hardening_env import ADMIN_TOKEN, STUB, kill_leftovers
from tests.e2e.rollout_env import wait_until
from tests.e2e.server import TurnoutServer

pytestmark = pytest.mark.slow

V1 = "/management/v1"
METRICS_TOKEN = "hardening-metrics-token-0123456789abcdef"
SECRETS = {
    "HF_TOKEN": "server-hf-secret",
    "AWS_SECRET_ACCESS_KEY": "server-aws-secret",
    "ACME_HF_TOKEN": "acme-hf-token",
}


@dataclass
class Hub:
    """A stand-in for the Hugging Face Hub API: lists one huge repo, records every call."""

    url: str
    calls: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    calls: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            calls.append((self.path, self.headers.get("authorization", "")))
            if not self.path.startswith("/api/models/"):
                self.send_error(404)
                return
            repo = "/".join(self.path.split("?")[0].split("/")[3:5])
            body = json.dumps({
                "_id": "1", "id": repo, "modelId": repo, "sha": "a" * 40, "private": False,
                "siblings": [
                    {"rfilename": "config.json", "size": 600},
                    {"rfilename": "model.safetensors", "size": 10 * 2**30},
                ],
            }).encode()  # fmt: skip
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Hub(f"http://127.0.0.1:{server.server_address[1]}", calls)
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass
class Tenants:
    server: TurnoutServer
    keys: dict[str, str]
    weights: Path
    env_dump: Path

    def api(self, org: str) -> httpx.Client:
        return self.server.http(self.keys[org])

    def upload(self, org: str, uri: str) -> httpx.Response:
        with self.api(org) as api:
            return api.post(
                f"{V1}/orgs/{org}/models:upload",
                json={"model_arch_id": "tiny-llama", "model": {"weight_uri": uri}},
            )

    def synced(self, org: str, name: str) -> dict[str, Any]:
        with self.api(org) as api:
            body: dict[str, Any] = wait_until(
                lambda: api.get(f"{V1}/{name}").json(), lambda b: b["done"], timeout=120
            )
        return body


@pytest.fixture(scope="module")
def tenants(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: TinyModelFactory,
    moto_url: str,
    hub: Hub,
) -> Iterator[Tenants]:
    root = tmp_path_factory.mktemp("tenants")
    weights = root / "weights-in"
    shutil.copytree(tiny_model(seed=1), weights / "seed1")
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    s3.create_bucket(Bucket="weights")
    for prefix in ("acme/v1", "other/v1"):
        for path in (weights / "seed1").iterdir():
            s3.upload_file(str(path), "weights", f"{prefix}/{path.name}")
    (root / "aws-credentials").write_text(
        "[acme]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
    )
    (root / "aws-config").write_text("")
    env_dump = root / "engine-env.json"
    stub = ["{python}", str(STUB), "--host", "{host}", "--port", "{port}", "--served-name",
            "{served_name}", "--model-dir", "{model_dir}", "--env-dump", str(env_dump)]  # fmt: skip
    crash = ["{python}", "-c", "import sys; print('engine-secret-line /srv/secret/x.py'); "
             "sys.exit(3)"]  # fmt: skip
    templates = root / "engines.json"
    templates.write_text(json.dumps({
        "stub": {"argv": stub, "ready_path": "/ready", "env": ["PASSME"]},
        "crash": {"argv": crash, "ready_path": "/ready"},
    }))  # fmt: skip
    data = root / "data"
    env = {
        "TURNOUT_ADMIN_TOKEN": ADMIN_TOKEN,
        "TURNOUT_METRICS_TOKEN": METRICS_TOKEN,
        "TURNOUT_DATABASE_URL": f"sqlite:///{data / 'turnout.db'}",
        "TURNOUT_ENGINE_TEMPLATES": str(templates),
        "TURNOUT_S3_ENDPOINT_URL": moto_url,
        "TURNOUT_MAX_WEIGHT_BYTES": str(50 * 2**20),
        "AWS_SHARED_CREDENTIALS_FILE": str(root / "aws-credentials"),
        "AWS_CONFIG_FILE": str(root / "aws-config"),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(root / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PASSME": "passed",
        **SECRETS,
    }
    server = TurnoutServer(data, env=env)
    for name in ("acme", "evil"):
        server.cli("admin", "org", "create", name)
    keys = {
        org: server.cli("admin", "key", "create", "--org", org, "--kind", kind).stdout.strip()
        for org, kind in (("acme", "management"), ("evil", "management"))
    }
    keys["acme-inference"] = server.cli(
        "admin", "key", "create", "--org", "acme", "--kind", "inference"
    ).stdout.strip()
    for endpoint, engine in (("acme-stub", "stub"), ("acme-crash", "crash")):
        server.cli("admin", "endpoint", "create", endpoint, "--org", "acme", "--arch",
                   "tiny-llama", "--engine", engine)  # fmt: skip
    server.cli("admin", "org", "file-allow", "acme", str(weights))
    server.cli("admin", "org", "s3-allow", "acme", "s3://weights/acme", "--profile", "acme")
    server.cli("admin", "org", "hf-allow", "acme", "hf://acme-ns", "--token-env", "ACME_HF_TOKEN")
    server.start()
    try:
        yield Tenants(server, keys, weights, env_dump)
    finally:
        pids = engine_pids_of(server)
        server.stop()
        kill_leftovers(pids)


def engine_pids_of(server: TurnoutServer) -> set[int]:
    records = server.data_dir / "run" / "replicas"
    return {int(json.loads(p.read_text())["pid"]) for p in records.glob("*.json")}


def _refused(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 403, resp.text
    body: dict[str, Any] = resp.json()
    assert body["code"] == "weight_uri_not_allowed" and body["param"] == "model.weight_uri", body
    return body


def test_s3_sources_are_scoped_per_org(tenants: Tenants) -> None:
    # acme's grant, read with acme's own credentials profile.
    ok = tenants.upload("acme", "s3://weights/acme/v1")
    assert ok.status_code == 200, ok.text
    assert tenants.synced("acme", ok.json()["name"])["response"]["sync_status"] == "done"
    # Another prefix of the same bucket, and a bucket that does not exist: the same refusal,
    # naming the rule, so the answer tells nothing about what exists.
    other = _refused(tenants.upload("acme", "s3://weights/other/v1"))
    missing = _refused(tenants.upload("acme", "s3://no-such-bucket/v1"))
    assert "s3-allow" in other["message"]
    assert other["message"].replace("s3://weights/other/v1", "URI") == missing["message"].replace(
        "s3://no-such-bucket/v1", "URI"
    )
    assert "acme/v1" not in other["message"]  # what is allowed is never listed
    # acme's prefix is not evil's; a lookalike prefix is not acme's.
    _refused(tenants.upload("evil", "s3://weights/acme/v1"))
    _refused(tenants.upload("acme", "s3://weights/acme-not/v1"))
    climbing = tenants.upload("acme", "s3://weights/acme/../other/v1")
    assert climbing.status_code == 400 and "s3://bucket/prefix" in climbing.json()["message"]
    # The admin API grants too; evil's grant has no profile: the server's own (empty) chain.
    with tenants.server.http(ADMIN_TOKEN) as admin:
        granted = admin.post("/admin/v1/orgs/evil/sources", json={"uri": "s3://weights/other"})
        assert granted.status_code == 200, granted.text
        assert granted.json()["uri"] == "s3://weights/other/"
    evil = tenants.upload("evil", "s3://weights/other/v1")
    assert evil.status_code == 200, evil.text
    failed = tenants.synced("evil", evil.json()["name"])
    assert failed["response"]["sync_status"] == "failed"
    assert "credentials" in failed["error"]["message"]
    with tenants.server.http(ADMIN_TOKEN) as admin:
        left = admin.post("/admin/v1/orgs/evil/sources:remove", json={"uri": "s3://weights/other"})
        assert left.status_code == 200 and left.json()["sources"] == []
    _refused(tenants.upload("evil", "s3://weights/other/v1"))


def test_local_directories_are_scoped_per_org_and_never_shown(tenants: Tenants) -> None:
    ok = tenants.upload("acme", f"file://{tenants.weights / 'seed1'}")
    assert ok.status_code == 200, ok.text
    assert tenants.synced("acme", ok.json()["name"])["response"]["sync_status"] == "done"
    evil = _refused(tenants.upload("evil", f"file://{tenants.weights / 'seed1'}"))
    escape = tenants.weights / "escape"
    escape.symlink_to("/etc")
    out = _refused(tenants.upload("acme", str(escape)))
    for body, given in ((evil, f"file://{tenants.weights / 'seed1'}"), (out, str(escape))):
        # The tenant's own URI comes back; no other server path, allowed root or link target.
        assert str(tenants.weights) not in body["message"].replace(given, "")
        assert "/etc" not in body["message"] and "file-allow" in body["message"]


def test_hub_sources_use_the_orgs_token_and_check_sizes_first(tenants: Tenants, hub: Hub) -> None:
    _refused(tenants.upload("evil", "hf://acme-ns/big"))
    _refused(tenants.upload("acme", "hf://someone-else/big"))
    ok = tenants.upload("acme", "hf://acme-ns/big")
    assert ok.status_code == 200, ok.text
    failed = tenants.synced("acme", ok.json()["name"])
    assert failed["response"]["sync_status"] == "failed"
    assert "exceed the limits" in failed["error"]["message"], failed
    assert hub.calls and all(path.startswith("/api/models/acme-ns/big") for path, _ in hub.calls)
    assert {auth for _, auth in hub.calls} == {"Bearer acme-hf-token"}  # never the server's


def test_engines_get_an_allow_listed_environment(tenants: Tenants) -> None:
    with tenants.api("acme") as api:
        name = next(
            v["name"]
            for v in api.get(f"{V1}/orgs/acme/models/tiny-llama/versions").json()["model_versions"]
            if v["response"]["sync_status"] == "done"
        )
        deployment = api.post(f"{V1}/endpoints/acme-stub:deployModel", json={"model": name})
        assert deployment.status_code == 200, deployment.text
        done = wait_until(
            lambda: api.get(f"{V1}/deployments/{deployment.json()['name']}").json(),
            lambda b: b["done"],
        )
    assert done["response"]["rollout_status"] == "complete", done
    seen = json.loads(tenants.env_dump.read_text())
    assert seen["PASSME"] == "passed" and seen["PATH"]
    for secret in ("TURNOUT_ADMIN_TOKEN", "TURNOUT_METRICS_TOKEN", "TURNOUT_DATABASE_URL",
                   "TURNOUT_INTERNAL_TOKEN", "AWS_SHARED_CREDENTIALS_FILE", *SECRETS):  # fmt: skip
        assert secret not in seen, secret


def test_metrics_need_the_metrics_token(tenants: Tenants) -> None:
    resp = httpx.post(
        tenants.server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {tenants.keys['acme-inference']}"},
        json={"model": "acme-stub", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert resp.status_code in (200, 503), resp.text
    with tenants.server.http(None) as anon:
        assert anon.get("/metrics").status_code == 401
    with tenants.server.http("x" * len(METRICS_TOKEN)) as wrong:
        assert wrong.get("/metrics").status_code == 401
    with tenants.server.http(tenants.keys["acme-inference"]) as tenant:
        assert tenant.get("/metrics").status_code == 401
    with tenants.server.http(METRICS_TOKEN) as scraper:
        metrics = scraper.get("/metrics")
    assert metrics.status_code == 200 and "turnout_gateway_requests" in metrics.text


def test_tenant_errors_carry_no_paths_or_engine_lines(tenants: Tenants) -> None:
    with tenants.api("acme") as api:
        name = api.get(f"{V1}/orgs/acme/models/tiny-llama/versions").json()["model_versions"][0]
        deployment = api.post(
            f"{V1}/endpoints/acme-crash:deployModel", json={"model": name["name"]}
        ).json()
        done = wait_until(
            lambda: api.get(f"{V1}/deployments/{deployment['name']}").json(), lambda b: b["done"]
        )
    assert done["response"]["rollout_status"] == "failed"
    shown = [done["error"]["message"], *(e["message"] for e in done["response"]["events"])]
    for text in shown:
        assert "engine-secret-line" not in text and "/srv/" not in text, text
        assert str(tenants.server.data_dir) not in text and "Last lines" not in text, text
    operator = tenants.server.cli("admin", "deployment", "show", deployment["name"]).stdout
    assert "engine-secret-line" in operator


def test_weak_tokens_refuse_the_start(tmp_path: Path) -> None:
    for name in ("TURNOUT_ADMIN_TOKEN", "TURNOUT_METRICS_TOKEN", "TURNOUT_INTERNAL_TOKEN"):
        server = TurnoutServer(tmp_path / name, env={name: "short-token"})
        with pytest.raises(RuntimeError, match="at least 32"):
            server.start(timeout=30)


def test_a_second_server_on_the_same_data_dir_is_refused(tenants: Tenants) -> None:
    second = TurnoutServer(tenants.server.data_dir, env=tenants.server.env)
    with pytest.raises(RuntimeError, match="already running"):
        second.start(timeout=30)
    assert tenants.server.proc is not None and tenants.server.proc.poll() is None
