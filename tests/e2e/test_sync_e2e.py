"""Weight sync through a real `turnout serve`: s3:// from a real S3 API (moto's server mode,
through boto3), and a kill -9 of the server in the middle of a sync."""

from __future__ import annotations

import http.server
import shutil
import signal
import socketserver
import tarfile
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.rollout_env import wait_until
from tests.e2e.server import TurnoutServer

V1 = "/management/v1"
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


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


class SlowHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files at about 256 KiB/s so a sync is still running when the test kills the server."""

    def copyfile(self, source: Any, outputfile: Any) -> None:
        while chunk := source.read(16384):
            try:
                outputfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return
            time.sleep(1 / 16)

    def log_message(self, *args: object) -> None:
        pass


def start_server(root: Path, weights: Path, extra: dict[str, str]) -> tuple[TurnoutServer, str]:
    server = TurnoutServer(
        root / "data", env={"TURNOUT_ALLOWED_LOCAL_ROOTS": str(weights), **extra}
    )
    server.cli("admin", "org", "create", "acme")
    key = server.cli(
        "admin", "key", "create", "--org", "acme", "--kind", "management"
    ).stdout.strip()
    server.start()
    return server, key


def upload(api: httpx.Client, uri: str) -> str:
    resp = api.post(
        f"{V1}/orgs/acme/models:upload",
        json={"model_arch_id": "tiny-llama", "model": {"weight_uri": uri}},
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["name"])


def test_s3_sync_matches_file_sync(
    tmp_path: Path, tiny_model: TinyModelFactory, moto_url: str
) -> None:
    model = tiny_model(seed=3)
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket="weights")
    for path in model.iterdir():
        s3.upload_file(str(path), "weights", f"ft/v1/{path.name}")
    # S3 sources are allowed per org or server-wide (issue 13); this server allows the bucket.
    allowed = {"TURNOUT_ALLOWED_S3_PREFIXES": "s3://weights"}
    server, key = start_server(
        tmp_path, model.parent, {**AWS, "TURNOUT_S3_ENDPOINT_URL": moto_url, **allowed}
    )
    try:
        with server.http(key) as api:
            from_s3 = upload(api, "s3://weights/ft/v1")
            from_file = upload(api, f"file://{model}")
            missing = upload(api, "s3://weights/no-such-prefix")
            bodies = [
                wait_until(lambda n=n: api.get(f"{V1}/{n}").json(), lambda b: b["done"])
                for n in (from_s3, from_file, missing)
            ]
    finally:
        server.stop()
    s3_body, file_body, missing_body = bodies
    assert s3_body["response"]["sync_status"] == "done", s3_body
    assert s3_body["response"]["customer_s3_uri"] == "s3://weights/ft/v1"
    assert s3_body["response"]["digest"] == file_body["response"]["digest"]
    assert (
        s3_body["response"]["sync_progress"]["bytes_done"]
        == s3_body["response"]["sync_progress"]["bytes_total"]
        > 0
    )
    assert missing_body["response"]["sync_status"] == "failed"
    assert "no-such-prefix" in missing_body["error"]["message"]


def test_kill_9_during_sync_then_restart_never_stuck(
    tmp_path: Path, tiny_model: TinyModelFactory
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "model.tar", "w") as tar:
        tar.add(tiny_model(seed=4), arcname="model")
    handler = partial(SlowHandler, directory=str(served))
    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/model.tar"
    server, key = start_server(tmp_path, served, {"TURNOUT_ALLOWED_HOSTS": "127.0.0.1"})
    try:
        with server.http(key) as api:
            name = upload(api, url)
            wait_until(
                lambda: api.get(f"{V1}/{name}").json(),
                lambda b: b["response"]["sync_status"] == "in_progress",
            )
        server.stop(signal.SIGKILL)
        staging = server.data_dir / "weights" / "sha256"
        assert not staging.exists() or not any(staging.iterdir())  # nothing published half-way
        server.start()
        with server.http(key) as api:
            body = wait_until(
                lambda: api.get(f"{V1}/{name}").json(), lambda b: b["done"], timeout=120
            )
    finally:
        server.stop()
        httpd.shutdown()
    assert body["response"]["sync_status"] in ("done", "failed")
    if body["response"]["sync_status"] == "failed":
        assert body["error"]["message"]
    else:
        assert body["response"]["digest"].startswith("sha256:")
    shutil.rmtree(served)
