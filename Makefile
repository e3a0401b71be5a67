# Every target sets up what it needs: the virtual environment and the Python packages. The tests
# install the Debian tools they run for real (prometheus, promtool, alertmanager, docker-compose)
# and the pinned IceProd server environment in their own set-up, and fail loudly if they cannot.
# `make check` runs only the unit tier, the folder tests/unit/ (see tests/conftest.py), which needs
# none of them and no root.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# The project runs on Python >= 3.11; 3.12 is preferred because the whole suite is tested on it
# (IceProd's own server, which the tests run in a venv of its own, needs 3.12 or newer).
# pyenv's shims fail unless their version is the active one, so ask each interpreter itself.
PYTHON ?= $(shell for p in $$HOME/.pyenv/versions/3.12*/bin/python python3.12 \
	$$HOME/.pyenv/versions/3.1[34]*/bin/python python3.13 python3.14 python3 \
	$$HOME/.pyenv/versions/3.11*/bin/python python3.11; do \
	$$p -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1 && { echo $$p; break; }; done)

.PHONY: demo check unit test drift lint docs generate bench bench-defaults bench-scrape soak soak-hostile scale-out clean

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python >= 3.11 not found"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# uv installs the packages in a few seconds where pip takes half a minute. It does not read
	@# pip's configuration: a PIP_INDEX_URL mirror is passed on, and pip takes over if uv fails.
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) \
		$(if $(PIP_INDEX_URL),--default-index '$(PIP_INDEX_URL)') -e '.[test]' \
		|| $(PY) -m pip install --quiet -e '.[test]'
	@touch $@

demo: $(VENV)/.installed  ## run the exporter on its built-in simulated IceProd
	$(VENV)/bin/iceprod-exporter demo $(ARGS)

lint: $(VENV)/.installed  ## ruff check, ruff format --check and mypy --strict over the whole repository
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# lint, the drift check and the unit tier run side by side (each one's output kept together)
check: $(VENV)/.installed  ## the fast loop: lint, types, drift check, unit tier (no root, no Debian tools; < 30 s)
	@$(MAKE) --no-print-directory -j3 --output-sync=target lint unit drift

# Hypothesis' pytest plugin costs each of the three processes a second to import; no unit test
# uses Hypothesis (the property tests are integration: they run for seconds)
unit: $(VENV)/.installed  ## the unit tier alone (tests/unit/)
	$(PY) -m pytest -q -n auto -p no:hypothesispytest tests/unit

test: $(VENV)/.installed lint drift  ## the whole suite: lint, types, drift check, unit, integration, real IceProd
	$(PY) -m pytest -q

drift: $(VENV)/.installed  ## fail, with a diff, when a generated file is out of date
	@$(MAKE) --no-print-directory generate CHECK=1

# One command for every generated file: the monitoring mixin (grafana/mixin/: dashboards, rule
# files, Prometheus Operator manifests) and the reference (docs/metrics.md, configuration.md).
# `make generate CHECK=1` writes nothing and fails, with a diff, when a file is out of date.
generate: $(VENV)/.installed  ## write the dashboards, rule files, operator manifests and reference docs (CHECK=1: fail on drift)
	$(PY) -m grafana.mixin.generate $(if $(CHECK),--check)
	$(VENV)/bin/iceprod-exporter docs $(if $(CHECK),--check)

docs: $(VENV)/.installed  ## regenerate docs/metrics.md and docs/configuration.md
	$(VENV)/bin/iceprod-exporter docs

bench: $(VENV)/.installed  ## side by side with dataset_monitor (100/1k/10k), then scrape latency (1k/10k)
	$(PY) benchmarks/side_by_side.py
	$(PY) benchmarks/scrape.py

bench-defaults: $(VENV)/.installed  ## 10,000 datasets at the default settings: every cycle, memory (~12 min)
	$(PY) benchmarks/bench.py $(ARGS)

bench-scrape: $(VENV)/.installed  ## scrape latency, 50 scrapers, 1,000 idle connections (1k/10k)
	$(PY) benchmarks/scrape.py $(ARGS)

soak: $(VENV)/.installed  ## 10 minutes on a moving IceProd of 1,000 datasets: memory, grace period
	$(PY) benchmarks/soak.py $(ARGS)

soak-hostile: $(VENV)/.installed  ## 5 minutes of an IceProd dripping a byte every 0.5 s: threads, sockets, memory, recovery, SIGTERM
	HOSTILE_DRIP_SECONDS=300 $(PY) -m pytest -q tests/integration/source/test_hostile.py -k test_daemon_through_a_drip

scale-out: $(VENV)/.installed  ## 3 shards x 2 replicas on 10,000 datasets, a real Prometheus with the shipped rules: the union, a replica down, a shard down (~5 min)
	$(PY) benchmarks/scale_out.py $(ARGS)

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
