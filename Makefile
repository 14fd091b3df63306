# The README's two set-up commands: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_DEMO := $(VENV)/.installed-demo
STAMP_TEST := $(VENV)/.installed-test

.PHONY: demo test test-pythons test-other-pythons lint typecheck bench bench-tracking clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP_DEMO): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test,pandas]"
	touch $@ $(STAMP_DEMO)

demo: $(STAMP_DEMO)
	cd examples && rm -rf demo-study && ../$(BIN)/python quickstart.py demo-study

test: $(STAMP_TEST)
	scripts/ensure-postgres
	$(BIN)/python -m pytest -q
	$(BIN)/ruff check src tests benchmarks examples noxfile.py
	$(BIN)/mypy

# The SQLite half of the suite on every Python 3.X the classifiers in pyproject.toml
# claim, each installed afresh in its own virtualenv under .nox/ (see noxfile.py). Pythons
# are found as python3.X on PATH or in pyenv; one found nowhere fails, by name.
test-pythons: $(STAMP_TEST)
	$(BIN)/nox -t matrix

# The same without the Python of .venv, on which `make test` runs the full suite (CI).
test-other-pythons: $(STAMP_TEST)
	$(BIN)/nox -t others

lint: $(STAMP_TEST)
	$(BIN)/ruff check src tests benchmarks examples noxfile.py

typecheck: $(STAMP_TEST)
	$(BIN)/mypy

bench: $(STAMP_TEST)
	$(BIN)/python benchmarks/bench_store.py

bench-tracking: $(STAMP_TEST)
	$(BIN)/python benchmarks/bench_tracking.py

clean:
	rm -rf $(VENV) .nox build dist .pytest_cache .mypy_cache .ruff_cache
