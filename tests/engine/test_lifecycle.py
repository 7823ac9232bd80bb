"""Engine process lifecycle: versions, drain on SIGTERM, load failure."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.engine.harness import EngineProcess

BODY = {"messages": [{"role": "user", "content": "Tell me a story"}], "temperature": 0}


def _answer(proc: EngineProcess) -> str:
    resp = httpx.post(
        proc.url + "/v1/chat/completions", json={**BODY, "max_tokens": 12}, timeout=60
    )
    assert resp.status_code == 200
    return str(resp.json()["choices"][0]["message"]["content"])


def test_two_versions_answer_differently(tiny_model: Callable[..., Path]) -> None:
    v1, v2 = EngineProcess(tiny_model(seed=0)), EngineProcess(tiny_model(seed=1))
    try:
        v1.wait_ready()
        v2.wait_ready()
        fp1 = httpx.get(v1.url + "/ready").json()["system_fingerprint"]
        fp2 = httpx.get(v2.url + "/ready").json()["system_fingerprint"]
        assert fp1 != fp2
        assert _answer(v1) != _answer(v2)
    finally:
        v1.close()
        v2.close()


def test_sigterm_mid_stream_finishes_stream(tiny_model: Callable[..., Path]) -> None:
    proc = EngineProcess(tiny_model(seed=0), extra=("--drain-timeout", "60"))
    try:
        proc.wait_ready()
        body = {**BODY, "max_tokens": 300, "stream": True}
        events: list[str] = []
        with httpx.Client(base_url=proc.url, timeout=60) as client:
            with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                lines = resp.iter_lines()
                for line in lines:
                    if line.startswith("data: "):
                        events.append(line[6:])
                        break
                proc.terminate()
                events.extend(line[6:] for line in lines if line.startswith("data: "))
        assert events[-1] == "[DONE]"
        final = json.loads(events[-2])
        assert final["choices"][0]["finish_reason"] == "length"
        # The listening socket closed at SIGTERM: nothing new is accepted.
        with pytest.raises(httpx.TransportError):
            httpx.get(proc.url + "/health", timeout=5)
        # uvicorn re-raises the captured SIGTERM once its graceful shutdown is done.
        assert proc.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        proc.close()


def test_load_failure_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    proc = EngineProcess(tmp_path)
    try:
        code = proc.proc.wait(120)
        assert code != 0
        assert "engine failed to start" in proc.stderr()
    finally:
        proc.close()
