# make run   - serve the app on http://127.0.0.1:7071 (with the emulators when no Azure endpoint is set)
# make test  - the whole test suite
# make lint  - azure-functions-doctor on host.json / function_app.py
# make bench - benchmarks, written to docs/benchmarks.md
# Each target creates .venv and installs requirements*.txt when needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test lint bench emulators clean

$(INSTALLED): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(INSTALLED)
	$(BIN)/python -m devserver $(ARGS)

test: $(INSTALLED)
	$(BIN)/python -m pytest tests -ra --timeout=120 $(ARGS)

lint: $(INSTALLED)
	$(BIN)/azure-functions-doctor doctor --path . --profile deploy

bench: $(INSTALLED)
	$(BIN)/python -m benchmarks $(ARGS)

emulators: $(INSTALLED)
	$(BIN)/python -m devserver.emulators $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
