# The set-up contract: on a fresh machine `make demo` and `make test` each create .venv,
# install what is needed, and run. Nothing CI needs may be missing from here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Only the code folders that exist (a fresh checkout may not have every one yet).
CODE := $(wildcard src tests bench examples)

.PHONY: install demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --group dev --group bench -e ".[postgres,asyncio-sqlite,pydantic,rabbitmq,nats,redis,crypto,example]"
	touch $(STAMP)

install: $(STAMP)

# The reference application (examples/ordering), end to end on the embedded SQLite default.
demo: $(STAMP)
	PYTHONPATH=examples $(BIN)/python -m ordering demo

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

# pyproject's [tool.mypy] files (the library), then the benchmarks: scripts, not a package, so
# mypy takes bench/ as their base directory and `import _raw` resolves as when they run; then
# the reference application, as its users' code would be checked.
typecheck: $(STAMP)
	$(BIN)/mypy
	$(if $(wildcard bench),$(BIN)/mypy bench)
	$(if $(wildcard examples),MYPYPATH=examples $(BIN)/mypy -p ordering -p shipping_context)

test: lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
