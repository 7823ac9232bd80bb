"""An S3 sync resumes after a kill -9 of the server in the middle of it (issue 13): the
restarted server fetches only the parts it lacks, and publishes the same digest as a sync of
the same files from disk.

The S3 API is moto's, behind a throttling TCP proxy (so the sync is still running when the
test kills the server) that counts the bytes it relays."""

from __future__ import annotations

import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.rollout_env import wait_until
from tests.e2e.server import TurnoutServer

pytestmark = pytest.mark.slow

V1 = "/management/v1"
RATE = 400 * 1024  # bytes per second through the proxy, all connections together


class ThrottlingProxy:
    """127.0.0.1 TCP proxy to ``target``; relays upstream answers at ``RATE`` and counts them."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.relayed = 0
        self._lock = threading.Lock()
        self._next = time.monotonic()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / RATE
            self.relayed += n
        time.sleep(max(0.0, start - now))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, throttled: bool) -> None:
        try:
            while data := src.recv(16384):
                if throttled:
                    self._take(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def moto() -> Iterator[tuple[str, int]]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield server.get_host_and_port()
    finally:
        server.stop()


def _version(api: Any, name: str) -> dict[str, Any]:
    body: dict[str, Any] = api.get(f"{V1}/{name}").json()
    return body


@pytest.mark.timeout(300)
def test_s3_sync_resumes_after_kill_9_of_the_server(
    tmp_path: Path, tiny_model: TinyModelFactory, moto: tuple[str, int]
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model(seed=5), model)
    total = sum(p.stat().st_size for p in model.iterdir())
    host, port = moto
    s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    s3.create_bucket(Bucket="weights")
    for path in model.iterdir():
        s3.upload_file(str(path), "weights", f"ft/v1/{path.name}")
    proxy = ThrottlingProxy((host, port))
    server = TurnoutServer(tmp_path / "data", env={
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
        "TURNOUT_S3_ENDPOINT_URL": proxy.url, "TURNOUT_ALLOWED_S3_PREFIXES": "s3://weights",
        "TURNOUT_S3_PART_SIZE": str(64 * 1024), "TURNOUT_ALLOWED_LOCAL_ROOTS": str(model),
    })  # fmt: skip
    server.cli("admin", "org", "create", "acme")
    key = server.cli("admin", "key", "create", "--org", "acme", "--kind", "management")
    server.start()
    try:
        with server.http(key.stdout.strip()) as api:
            upload = {"model_arch_id": "tiny-llama", "model": {"weight_uri": "s3://weights/ft/v1"}}
            name = api.post(f"{V1}/orgs/acme/models:upload", json=upload).json()["name"]
            wait_until(
                lambda: _version(api, name),
                lambda b: b["response"]["sync_progress"]["bytes_done"] > total // 3,
                timeout=120,
                interval=0.1,
            )
        server.stop(signal.SIGKILL)
        before_restart = proxy.relayed
        assert before_restart < total  # killed mid-sync
        staged = list((server.data_dir / "weights" / ".staging").rglob("*.safetensors.json"))
        assert staged, "no resume record survived the kill"
        server.start()
        with server.http(key.stdout.strip()) as api:
            done = wait_until(lambda: _version(api, name), lambda b: b["done"], timeout=180)
            from_file = {"model_arch_id": "tiny-llama", "model": {"weight_uri": f"file://{model}"}}
            reference = api.post(f"{V1}/orgs/acme/models:upload", json=from_file).json()["name"]
            expected = wait_until(lambda: _version(api, reference), lambda b: b["done"])
    finally:
        server.stop()
        proxy.close()
    assert done["response"]["sync_status"] == "done", done
    assert done["response"]["digest"] == expected["response"]["digest"]
    # Only the missing parts came again: clearly less than the whole model after the restart.
    after_restart = proxy.relayed - before_restart
    assert after_restart < total - total // 4, (before_restart, after_restart, total)
