# Every target sets up what it needs: the virtual environment, the Python packages and, for the
# tests, the Debian tools (prometheus, promtool, alertmanager, docker-compose) they run for real.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# IceProd's own server needs Python 3.12, so the whole project is tested on it.
# (pyenv's python3.12 shim fails unless 3.12 is the active version, so ask the interpreter itself)
PYTHON312 ?= $(shell for p in $$HOME/.pyenv/versions/3.12*/bin/python python3.12; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo $$p; break; }; done)
DEBIAN_TOOLS := prometheus prometheus-alertmanager docker-compose

.PHONY: demo test lint typecheck unit docs bench tools clean

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON312)" || { echo "Python 3.12 not found (pyenv install 3.12)"; exit 1; }
	@test -x $(PY) || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

demo: $(VENV)/.installed  ## run the exporter on its built-in simulated IceProd
	$(VENV)/bin/iceprod-exporter demo $(ARGS)

tools:  ## Debian packages the tests run for real (installed once)
	@missing=""; for p in $(DEBIAN_TOOLS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check iceprod_exporter
	$(VENV)/bin/mypy

test: $(VENV)/.installed tools lint  ## the whole suite: lint, types, unit, integration, real IceProd
	$(VENV)/bin/iceprod-exporter docs --check
	$(PY) -m pytest -q

docs: $(VENV)/.installed  ## regenerate docs/metrics.md and docs/configuration.md
	$(VENV)/bin/iceprod-exporter docs

bench: $(VENV)/.installed  ## 1,000 simulated datasets: poll time, requests, scrape latency, memory
	$(PY) benchmarks/bench.py $(ARGS)

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
