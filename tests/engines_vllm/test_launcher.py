"""The ``vllm`` template's launcher picks vLLM's interpreter when the replica starts (not when
Turnout imports), then execs it with the template's flags and ``TURNOUT_VLLM_ARGS``. A shell
script that prints its argv stands in for vLLM's interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from turnout.placement.engines import BUILTIN_ENGINES, VLLM_LAUNCHER

SERVER = ["-m", "vllm.entrypoints.openai.api_server"]
#: The lead's placeholder set for engine templates.
VALUES = {
    "python": "/py", "model_dir": "/m", "host": "127.0.0.1", "port": "1234", "served_name": "ep",
    "device": "cpu", "max_model_len": "2048", "dtype": "bfloat16", "tensor_parallel_size": "2",
    "gpus": "0,1",
}  # fmt: skip


def fake_python(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('#!/bin/sh\necho "$0 $*"\n')
    path.chmod(0o755)
    return path


def launch(python: Path | str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_VLLM_")}
    return subprocess.run(
        [str(python), "-c", VLLM_LAUNCHER, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


def test_templates_fill_every_placeholder() -> None:
    vllm = [arg.format_map(VALUES) for arg in BUILTIN_ENGINES["vllm"].argv]
    assert vllm[:3] == ["/py", "-c", VLLM_LAUNCHER]  # the launcher has no braces to fill
    flags = dict(zip(vllm[3::2], vllm[4::2], strict=True))
    assert flags == {
        "--model": "/m", "--host": "127.0.0.1", "--port": "1234", "--served-model-name": "ep",
        "--max-model-len": "2048", "--dtype": "bfloat16", "--tensor-parallel-size": "2",
        "--shutdown-timeout": "5",
    }  # fmt: skip
    sglang = [arg.format_map(VALUES) for arg in BUILTIN_ENGINES["sglang"].argv]
    assert sglang[sglang.index("--context-length") + 1] == "2048"
    assert sglang[sglang.index("--tp-size") + 1] == "2"
    assert BUILTIN_ENGINES["sglang"].ready_path == "/health_generate"


def test_turnout_vllm_python_runs_the_server_with_extra_args(tmp_path: Path) -> None:
    vllm_python = fake_python(tmp_path / "python")
    env = {
        "TURNOUT_VLLM_PYTHON": str(vllm_python),
        "TURNOUT_VLLM_ARGS": "--enforce-eager --kv-cache-memory-bytes '2G'",
    }
    result = launch(sys.executable, env, "--model", "/m")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        str(vllm_python), *SERVER, "--model", "/m", "--enforce-eager",
        "--kv-cache-memory-bytes", "2G",
    ]  # fmt: skip


def test_default_is_the_vllm_venv_beside_turnouts(tmp_path: Path) -> None:
    turnout_python = venv(tmp_path / ".venv")
    vllm_python = fake_python(tmp_path / ".venv-vllm" / "bin" / "python")
    result = launch(turnout_python, {}, "--port", "1")
    assert result.stdout.split() == [str(vllm_python), *SERVER, "--port", "1"], result.stderr


def test_without_a_vllm_venv_it_runs_turnouts_own_interpreter(tmp_path: Path) -> None:
    turnout_python = venv(tmp_path / ".venv")
    result = launch(turnout_python, {})
    # That venv has no vLLM: the server module is what it was asked to run.
    assert result.returncode != 0 and "No module named 'vllm'" in result.stderr


def test_a_missing_interpreter_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "python"
    result = launch(sys.executable, {"TURNOUT_VLLM_PYTHON": str(missing)})
    assert result.returncode == 1
    assert str(missing) in result.stderr and "TURNOUT_VLLM_PYTHON" in result.stderr
