# Two commands matter: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export PYTHONUNBUFFERED := 1

.PHONY: demo test lint typecheck unit system-deps deps clean protocol-schema loadtest

# Debian packages the real parts need; each is installed only when missing.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/.stamp: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

node_modules/.stamp: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

deps: system-deps $(VENV)/.stamp node_modules/.stamp

demo: deps
	$(PY) -m devstack.demo

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.stamp
	$(VENV)/bin/mypy

test: deps lint typecheck
	$(VENV)/bin/pytest

unit: $(VENV)/.stamp
	$(VENV)/bin/pytest -m 'not slow'

# An exam spike against the embedded stack with locust (headless; UI=1 for the web UI,
# QUICK=1 for a 30-second smoke). Report and CSVs in loadtest/results/.
loadtest: deps
	$(PY) -m loadtest.spike $(if $(UI),--ui) $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) node_modules artifacts .pytest_cache .mypy_cache .ruff_cache

# Regenerate the protocol's JSON Schema from the pydantic models (a test checks it).
protocol-schema: $(VENV)/.stamp
	$(PY) -c 'import json; from gateway.protocol import schema; print(json.dumps(schema(), indent=2, sort_keys=True))' > docs/protocol.schema.json

# The benchmark (loadtest/bench/): everything on loopback, results in loadtest/results/.
# QUICK=1 runs the reduced scale (under 2 minutes); PROFILE=1 adds a py-spy profile;
# ONLY=idle,deliveries runs only the phases named (see `python -m loadtest.bench --help`).
.PHONY: bench
bench: deps
	$(PY) -m loadtest.bench $(if $(QUICK),--quick) $(if $(PROFILE),--profile) $(if $(ONLY),--only $(ONLY))

# The assignment simulation alone (free picking vs push on one seeded day; `make bench`
# runs it too): loadtest/results/assignment.{json,md,png}. SEED=N for another day.
.PHONY: assignment
assignment: $(VENV)/.stamp
	$(PY) -m loadtest.assignment $(if $(SEED),--seed $(SEED))
