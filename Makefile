# Quick start: `make demo` runs the whole pipeline locally; `make run` runs the daemon against the
# embedded broker and the vendor fakes until Ctrl-C; `make test` runs the test suite.
# Each target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo run test lint bench bench-smoke sandbox clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo extra is the octopus-crm-sandbox distribution in sandbox/: installed from the checkout in
# the same pip call, which is how pip resolves the extra's requirement without an index.
$(VENV)/.demo-installed: pyproject.toml sandbox/pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[demo]' -e ./sandbox
	touch $@

$(VENV)/.dev-installed: pyproject.toml sandbox/pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]' -e ./sandbox
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/octopus-crm demo

run: $(VENV)/.demo-installed
	$(BIN)/octopus-crm dev

# Four workers on two cores: most tests wait on brokers, daemons and fakes rather than compute.
test: $(VENV)/.dev-installed
	$(BIN)/pytest -q -n 4

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/mypy

sandbox: $(VENV)/.demo-installed
	$(BIN)/octopus-crm sandbox

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/run_all.py

bench-smoke: $(VENV)/.dev-installed
	$(BIN)/python bench/run_all.py --smoke --no-profile

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
