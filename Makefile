# optimlab: two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
TORCH  := torch==2.13.0
OUT    ?=
WORKERS ?=

.PHONY: setup run test test-fast lint bench clean

setup: $(STAMP)

# Pinned CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,postgres]"
	touch $(STAMP)

run: setup
	$(PY) -m optimlab run $(if $(OUT),--out $(OUT)) $(if $(WORKERS),--workers $(WORKERS))

test: setup
	$(PY) -m pytest -n 2 -q

test-fast: setup
	$(PY) -m pytest -n 2 -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

bench: setup
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
