"""`python -m turnout.engine serve`: the replica's own entry loads the engine and nothing of the
control plane, so a GPU node or a Ray worker can run it without the store's dependencies."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TinyModelFactory

CONTROL_PLANE = ("turnout.store", "turnout.api", "turnout.rollout", "sqlalchemy", "alembic")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _imported(importtime_log: str) -> set[str]:
    """Module names from ``python -X importtime`` output (one line per import)."""
    found = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", importtime_log, re.M)
    return set(found)


@pytest.mark.slow
def test_engine_entry_serves_without_the_control_plane(
    tiny_model: TinyModelFactory, tmp_path: Path
) -> None:
    port = _free_port()
    log_path = tmp_path / "engine.log"
    argv = [
        sys.executable, "-X", "importtime", "-m", "turnout.engine", "serve",
        "--model-dir", str(tiny_model(seed=1)), "--port", str(port), "--served-name", "tiny",
    ]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, stderr=log, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                pass
            if ready:
                break
            time.sleep(0.2)
        assert ready, log_path.read_text()[-3000:]
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"model": "tiny", "prompt": "Hello", "max_tokens": 3},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    modules = _imported(log_path.read_text())
    assert "turnout.engine.server" in modules and "torch" in modules  # the log is complete
    leaked = sorted(
        m for m in modules if any(m == c or m.startswith(c + ".") for c in CONTROL_PLANE)
    )
    assert leaked == [], f"the engine process imported control-plane modules: {leaked}"
    # uvicorn re-raises the SIGTERM it handled once the drain is over.
    assert proc.returncode in (0, -signal.SIGTERM)


def test_engine_entry_refuses_a_bad_device() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "turnout.engine", "serve", "--model-dir", "/nowhere",
         "--device", "tpu"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--device must be cpu, cuda or cuda:N" in result.stderr
