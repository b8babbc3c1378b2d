# streamlearn: the same commands locally and in CI. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UPLOT := api/static/vendor/uplot
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.DEFAULT_GOAL := help
.PHONY: help install infra-up infra-down infra-reset infra-status browser prometheus observe vendor topics run test test-unit test-integration bench lint format typecheck check clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## Create .venv and install streamlearn with its dev dependencies

infra-up: ## Start Kafka (KRaft, JARs from Maven Central) and Redis on 127.0.0.1, if not running
	bash infra/infra.sh up

infra-down: ## Stop the Kafka and Redis that infra-up started
	bash infra/infra.sh down

infra-reset: ## Stop Kafka and delete its log directory: every topic and committed offset
	bash infra/infra.sh reset

infra-status: ## Say whether Kafka and Redis answer
	bash infra/infra.sh status

topics: install ## Create the declared topics (idempotent)
	$(PY) -m topics

run: install infra-up ## The main job: the whole loop with a simulated storefront, live progress
	$(PY) -m consumers.loop

browser: ## Install Debian's Chromium and ChromeDriver (the dashboard's browser test), if missing
	bash infra/infra.sh browser

prometheus: ## Install Debian's Prometheus and promtool (make observe, and its test), if missing
	bash infra/infra.sh prometheus

vendor: ## Refresh the dashboard's charting library (uPlot, pinned in web/package-lock.json) from npm
	cd web && npm ci --ignore-scripts --no-audit --no-fund
	mkdir -p $(UPLOT)
	cp web/node_modules/uplot/dist/uPlot.iife.min.js web/node_modules/uplot/dist/uPlot.min.css web/node_modules/uplot/LICENSE $(UPLOT)/

observe: install prometheus ## Prometheus on :9090 scraping make run's processes, with the project's rules
	$(PY) -m consumers.observe

test: install infra-up browser prometheus check ## Lint, type-check, then every test (unit, doctests, integration)
	$(PY) -m pytest

test-unit: install ## Unit tests and doctests only: no broker needed
	$(PY) -m pytest -m 'not integration'

test-integration: install infra-up ## Integration tests against the real Kafka and Redis
	$(PY) -m pytest -m integration

bench: install infra-up ## Every benchmark in bench/, each ending with one JSON line of figures
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: install ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## Apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: install ## mypy on the packages
	$(VENV)/bin/mypy

check: lint typecheck ## lint and typecheck

clean: ## Remove the virtualenv and caches (not the Kafka JARs in ~/.cache/streamlearn)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
