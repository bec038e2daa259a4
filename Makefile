# Two commands for a fresh machine: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install run data test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

## run the default pipeline (extra Hydra overrides: make run ARGS="data=digits")
run: install
	$(PY) -m pipeline $(ARGS)

## download and preprocess only
data: install
	$(PY) -m pipeline stages=[download,preprocess] $(ARGS)

## the whole test suite, slow tests on real MNIST included
test: install
	$(PY) -m pytest $(ARGS)

## the suite without the slow tests
test-fast: install
	$(PY) -m pytest -m "not slow" $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache

## seconds per epoch on the real 60k MNIST, ours vs scikit-learn (and PyTorch if installed)
bench: install
	$(PY) benchmarks/epoch_speed.py $(ARGS)
