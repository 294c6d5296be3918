# One task runner for people and CI. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch 2.13.0 first: a looser pin lets pip fetch the newest CUDA build.
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-unit test-integration test-regression bench bench-memory chaos lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

# `make demo HOLD=1` keeps the stack up after the summary to watch the live dashboard.
demo: install
	$(VENV)/bin/streamrec dev --events 5000 --rate 250 $(if $(HOLD),--hold)

test: install
	$(PY) -m pytest -q tests

test-unit: install
	$(PY) -m pytest -q tests/unit

test-integration: install
	$(PY) -m pytest -q tests/integration

# Regression tests for upstream bugs and broker limits, each named by what it guards.
test-regression: install
	$(PY) -m pytest -q tests/regression

# Every benchmark figure (bench/run.py): a table, then the JSON report's path. ~10 min.
bench: install
	$(PY) -m bench.run $(if $(QUICK),--quick)

# The fault harness (bench/chaos.py): SIGKILLs workers mid-stream, checks nothing was lost
# or applied twice; a table, then one JSON line. About 10 min. `make chaos ARGS="--help"`.
chaos: install
	$(PY) -m bench.chaos $(ARGS)

# Peak RSS of one worker over 1M distinct users and 200k items (bench/memory.py).
bench-memory: install
	$(PY) -m bench.memory

# Lint, format and type checks, as CI runs them (ruff and mypy pinned in the test extra;
# mypy's ratchet, strict on model/, serving/ and stream/items/, is in pyproject.toml).
LINTED := stream model serving tests bench
lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .streamrec test-artifacts
