# make run   - serve every function on http://127.0.0.1:7071: HTTP, queues (through Azurite, started
#              when needed), the Event Grid webhook, the admin API; with the emulators when no Azure
#              OpenAI endpoint is set
# make test  - the whole test suite: tests/unit, integration, e2e and infra (the infra check included)
# make test-unit - the unit tier alone (no sockets, no sleeping; seconds): the inner loop
# make lint  - ruff, mypy over shared/ and function_app.py, and azure-functions-doctor
# make bench - benchmarks, written to docs/benchmarks.md
# make infra-check - parse infra/*.bicep (pycep-parser) and scan it with checkov, offline
# make enqueue REQUEST='{...}' [ARGS="--wait 60"] / make results [ARGS="--id ID --wait 60"]
#            - a sample queue producer and results reader, against make run's storage
# make azurite - Azurite alone (all three services), e.g. for func start
# Each target creates .venv and installs requirements.txt + requirements-dev.txt (and Azurite with npm,
# where Node.js is) when needed; infra-check and test also create .venv-infra from requirements-infra.txt
# (checkov's strict pins).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
INFRA_VENV := .venv-infra
INFRA_INSTALLED := $(INFRA_VENV)/.installed
# The official openai SDKs, newest and last 1.x, each in a venv of its own (the app keeps openai 0.28).
SDK_INSTALLED := .venv-sdk-latest/.installed .venv-sdk-1x/.installed
# Azurite (npm) for make run's queues, the end-to-end tests and func start; only where Node.js is installed.
AZURITE_DIR := devserver/azurite
AZURITE := $(AZURITE_DIR)/node_modules/.bin/azurite
NPM := $(shell command -v npm 2>/dev/null)
TEST_NEEDS := $(INSTALLED) $(INFRA_INSTALLED) $(SDK_INSTALLED) $(if $(NPM),$(AZURITE))

.PHONY: run test test-unit lint infra-check bench emulators azurite enqueue results caller-key clean

$(INSTALLED): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(INFRA_INSTALLED): requirements-infra.txt
	test -x $(INFRA_VENV)/bin/python || $(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-infra.txt
	touch $@

.venv-sdk-%/.installed: requirements-sdk-%.txt
	test -x .venv-sdk-$*/bin/python || $(PYTHON) -m venv .venv-sdk-$*
	.venv-sdk-$*/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-sdk-$*.txt
	touch $@

$(AZURITE): $(AZURITE_DIR)/package.json $(AZURITE_DIR)/package-lock.json
	npm ci --prefix $(AZURITE_DIR) --no-audit --no-fund --loglevel=error
	touch $@

# Without Node.js (or when npm cannot install Azurite) the dev host says so loudly and serves HTTP only.
run: $(INSTALLED)
ifneq ($(NPM),)
	@$(MAKE) --no-print-directory $(AZURITE) || echo "npm could not install Azurite: queues will not be served" >&2
endif
	PYTHON_ENABLE_INIT_INDEXING=$${PYTHON_ENABLE_INIT_INDEXING:-1} $(BIN)/python -m devserver $(ARGS)

# The installs run side by side (they wait on the network more than on the CPU); then the suite.
# tests/infra/test_infra.py runs the infra check; INFRA_CHECK_REQUIRED makes it fail, not skip, without .venv-infra.
# (pytest's settings: pyproject.toml)
test:
	$(MAKE) --no-print-directory --jobs=3 $(TEST_NEEDS)
	INFRA_CHECK_REQUIRED=1 SDK_TESTS_REQUIRED=1 $(BIN)/python -m pytest tests $(ARGS)

test-unit: $(INSTALLED)
	$(BIN)/python -m pytest tests/unit -q $(ARGS)

infra-check: $(INFRA_INSTALLED)
	$(INFRA_VENV)/bin/python tests/infra/infra_check.py

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/mypy
	@# the doctor on what deploys (tests/ and the dev host do not), with the azd template beside it for its
	@# Flex Consumption checks
	@package=$$(mktemp -d) && $(BIN)/python -m devserver.tools.package $$package && \
		cp -r infra azure.yaml .funcignore $$package && \
		$(BIN)/azure-functions-doctor doctor --path $$package --profile deploy; status=$$?; rm -rf $$package; exit $$status

# wrk (Debian's package) loads the dev host over HTTP; without it that one metric is skipped.
bench: $(INSTALLED)
	command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } || \
		echo "wrk is not installed (apt-get install wrk): the dev-host metric will be skipped"
	$(BIN)/python -m benchmarks $(ARGS)

emulators: $(INSTALLED)
	$(BIN)/python -m devserver.emulators $(ARGS)

# Storage for `func start` (queues, and the host's own blobs): http://127.0.0.1:10000-10002
azurite: $(AZURITE)
	$(AZURITE) --silent --inMemoryPersistence --disableTelemetry --skipApiVersionCheck $(ARGS)

# make enqueue REQUEST='{"prompt": "The food was delicious and the waiter", "stop": "."}' [ARGS="--wait 60"]
enqueue: $(INSTALLED)
	$(BIN)/python -m devserver.tools.enqueue '$(REQUEST)' $(ARGS)

# make results [ARGS="--id order-42 --wait 60"]: results from the results queue (each read is deleted)
results: $(INSTALLED)
	$(BIN)/python -m devserver.tools.results $(ARGS)

# make caller-key NAME=team-a: a new caller key, printed once, and its COMPLETIONS_CALLER_KEYS entry
caller-key:
	$(PYTHON) -m devserver.tools.caller_key '$(NAME)'

clean:
	rm -rf $(VENV) $(INFRA_VENV) .venv-sdk-latest .venv-sdk-1x .pytest_cache .hypothesis $(AZURITE_DIR)/node_modules
