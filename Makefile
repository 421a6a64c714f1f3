# DataMix: `make run` runs the main job locally, `make test` runs every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install deps run test lint crd
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

run: install
	$(VENV)/bin/datamix run

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

crd: install
	$(VENV)/bin/datamix crd --write

# Everything the tests need beside the venv: Prometheus (Debian package, unpacked into the
# cache) and the control-plane binaries (built once per pin set, cached outside the checkout).
deps: install
	tools/ci/install-prometheus.sh >/dev/null
	tools/k8s/build.sh

test: deps lint
	$(PY) -m pytest

-include Makefile.cluster Makefile.operator Makefile.ship
