"""SIGTERM while a stream runs: with the template's ``--shutdown-timeout`` vLLM finishes the
stream (every token, then ``[DONE]``) before it exits. Without it (vLLM's default, 0) the stream
ends in an error chunk; docs/engines.md records both."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.engines_vllm.conftest import SERVED_NAME, VllmProcess

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1200)]

#: Few enough that the rest of the stream fits the template's --shutdown-timeout on a busy CPU.
MAX_TOKENS = 32


def test_sigterm_lets_a_running_stream_finish(
    vllm_python: Path, smollm2_versions: tuple[Path, Path], tmp_path: Path
) -> None:
    engine = VllmProcess(vllm_python, smollm2_versions[0], tmp_path / "vllm.log")
    try:
        engine.wait_ready()
        assert "--shutdown-timeout" in engine.argv
        body = {
            "model": SERVED_NAME,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": MAX_TOKENS,
            "ignore_eos": True,
            "stream": True,
        }
        lines: list[str] = []
        with httpx.stream(
            "POST", engine.url + "/v1/chat/completions", json=body, timeout=120
        ) as resp:
            for line in resp.iter_lines():
                if line:
                    lines.append(line)
                if len(lines) == 4:
                    os.kill(engine.proc.pid, signal.SIGTERM)
        assert lines[-1] == "data: [DONE]", engine.log_tail()
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        assert not [c for c in chunks if "error" in c]
        tokens = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
        assert len(tokens) == MAX_TOKENS
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert engine.proc.wait(timeout=120) == 0  # and then it exits on its own
    finally:
        engine.kill()
