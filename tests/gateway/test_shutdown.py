"""SIGTERM mid-stream (STYLE 13): the stream completes, nothing new is accepted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conftest import KEY_A, FakeReplica, free_socket

SCRIPT = Path(__file__).with_name("serve_gateway.py")


def wait_until_serving(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/metrics", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)  # start-up poll, not an assertion on timing
    raise AssertionError("gateway subprocess did not start")


def refuses_connections(url: str) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/metrics", timeout=1)
        except httpx.TransportError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_mid_stream_finishes_the_stream(replicas: Callable[[str], FakeReplica]) -> None:
    a = replicas("a")
    sock = free_socket()
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(sock.fileno()), a.address],
        pass_fds=[sock.fileno()],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    sock.close()  # only the gateway holds the listening socket now
    try:
        wait_until_serving(url)
        body = {"model": "ep-1", "messages": [], "stream": True, "hold": True}
        headers = {"Authorization": f"Bearer {KEY_A}"}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            proc.send_signal(signal.SIGTERM)
            assert refuses_connections(url)
            a.release()
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        # uvicorn re-raises the signal once its graceful shutdown is done.
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stderr.read() if proc.stderr else ""
    assert "gateway shutdown: 0 finished, 0 cut" in log  # uvicorn waited for the stream first
