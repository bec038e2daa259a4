# Two commands for a fresh machine: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# the optional extras (ray, postgres) on top, for make server / sweep LAUNCHER=ray / test
EXTRAS_STAMP := $(VENV)/.installed-extras
UV     := $(VENV)/bin/uv
UV_VERSION := 0.13.9
export UV_PROJECT_ENVIRONMENT := $(VENV)
ARGS   ?=
PORT   ?= 5000
SERVE_PORT ?= 5001
DEMO_PORT ?= 5002
MODEL  ?= mnist-classifier
SWEEP  ?= grid
SEARCH ?= classic16
LAUNCHER ?=
PG_PORT ?= 5432

.DEFAULT_GOAL := help
.PHONY: help install install-extras lock run data train compare analyze reproduce register serve demo ui server sweep test test-fast bench bench-cli lint format clean

## this list: each target with the first line of its comment
help:
	@awk '/^## /{ if (!c) c = substr($$0, 4); next } /^[a-z][a-z-]*:/{ if (c) printf "  make %-16s %s\n", substr($$1, 1, length($$1) - 1), c } { c = "" }' $(MAKEFILE_LIST)
	@echo "  python -m pipeline --help: the stages, presets and every setting"

## the locked environment: exactly the versions in uv.lock
## (uv itself is locked there too)
install: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet uv==$(UV_VERSION)
	$(UV) sync --locked --extra test --compile-bytecode
	rm -f $(EXTRAS_STAMP)  # an exact sync removed them
	touch $@

## the default install plus Ray (hydra-ray-launcher) and psycopg (PostgreSQL)
install-extras: $(EXTRAS_STAMP)

$(EXTRAS_STAMP): $(STAMP)
	$(UV) sync --locked --extra test --extra ray --extra postgres --compile-bytecode
	touch $@

## refresh uv.lock to the newest versions pyproject.toml allows; install them
lock:
	test -x $(UV) || { $(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install --quiet uv==$(UV_VERSION); }
	$(UV) lock --upgrade
	$(UV) sync --frozen --extra test --compile-bytecode
	touch $(STAMP)

## run the default pipeline (Hydra overrides: make run ARGS="data=digits")
run: install
	$(PY) -m pipeline $(ARGS)

## download and preprocess only
data: install
	$(PY) -m pipeline stages=[download,preprocess] $(ARGS)

## train + evaluate ours and the scikit-learn baseline (ARGS="model=nielsen")
train: install
	$(PY) -m pipeline $(ARGS)

## table of the latest runs: ours vs scikit-learn for each config
compare: install
	$(PY) -m pipeline stages=[compare] $(ARGS)

## what the network learned, on the latest classic run (RUN_ID=<id>)
analyze: install
	$(PY) -m pipeline stages=[analyze] $(if $(RUN_ID),analyze.run_id=$(RUN_ID)) $(ARGS)

## rerun a logged run from its config (RUN_ID=<id>): does each metric match?
reproduce: install
	$(PY) -m pipeline stages=[reproduce] reproduce.run_id=$(RUN_ID) $(ARGS)

## register a run's model as the champion (RUN_ID=<id>)
## (a finished sweep registers its best itself)
register: install
	$(PY) -m pipeline stages=[register] register.run_id=$(RUN_ID) $(ARGS)

## serve the champion on 127.0.0.1:5001 (SERVE_PORT=, MODEL=digits-classifier)
serve: install
	$(PY) -m pipeline.serve.model --model $(MODEL) --port $(SERVE_PORT) \
	  $(if $(filter command line,$(origin HOST)),--host $(HOST)) \
	  $(if $(filter command line,$(origin ALLOWED_HOSTS)),--allowed-hosts $(ALLOWED_HOSTS))

## draw a digit, watch a network think: 127.0.0.1:5002 (RUN_ID=, DEMO_PORT=)
## (default: the champion's run)
demo: install
	$(PY) -m pipeline.serve.demo --port $(DEMO_PORT) $(if $(RUN_ID),--run-id $(RUN_ID)) \
	  $(if $(filter command line,$(origin HOST)),--host $(HOST)) \
	  $(if $(filter command line,$(origin ALLOWED_HOSTS)),--allowed-hosts $(ALLOWED_HOSTS))

## the MLflow UI over the project's store on 127.0.0.1:5000 (PORT=5600)
ui: install
	$(PY) -m pipeline.serve.ui --port $(PORT) \
	  $(if $(filter command line,$(origin HOST)),--host $(HOST)) \
	  $(if $(filter command line,$(origin ALLOWED_HOSTS)),--allowed-hosts $(ALLOWED_HOSTS))

## a shared tracking server on PostgreSQL, on 127.0.0.1 (DB=postgresql://…)
## The project's own cluster in mlruns/postgres/ unless DB= is given; artifacts proxied;
## beyond this machine: HOST=0.0.0.0 ALLOWED_HOSTS=<name>, with a login (MLflow basic-auth;
## ADMIN_PASSWORD_FILE= or env PIPELINE_ADMIN_PASSWORD; AUTH=off: none, AUTH=on: on loopback too).
server: install-extras
	$(if $(DB),PIPELINE_DB="$$DB") $(PY) -m pipeline.serve.server --port $(PORT) --pg-port $(PG_PORT) \
	  $(if $(filter command line,$(origin HOST)),--host $(HOST)) \
	  $(if $(filter command line,$(origin ALLOWED_HOSTS)),--allowed-hosts $(ALLOWED_HOSTS)) \
	  $(if $(filter command line,$(origin AUTH)),$(if $(filter off,$(AUTH)),--no-auth,--auth)) \
	  $(if $(ADMIN_PASSWORD_FILE),--admin-password-file "$(ADMIN_PASSWORD_FILE)")

## a tracked sweep (SWEEP=grid|tweaks16|best|ablation|smoke)
## Data is prepared once, first.
## LAUNCHER=ray: on the Ray cluster at RAY_ADDRESS (a local one when unset; WORKERS=<n> CPUs);
## LAUNCHER=slurm (conf/hydra/launcher/slurm.yaml) or submitit_local; default: joblib, here
sweep: $(if $(filter ray,$(LAUNCHER)),install-extras,install)
	$(PY) -m pipeline stages=[download,preprocess]
	$(PY) -m pipeline sweep=$(SWEEP) \
	  $(if $(LAUNCHER),hydra/launcher=$(if $(filter ray,$(LAUNCHER)),ray_cluster,$(LAUNCHER))) \
	  $(if $(and $(filter ray,$(LAUNCHER)),$(WORKERS)),++hydra.launcher.ray.init.num_cpus=$(WORKERS)) \
	  $(ARGS)

## an Optuna search (SEARCH=classic16|wide|smoke; WORKERS=<n>; resumable)
search: install
	$(PY) -m pipeline search=$(SEARCH) $(if $(WORKERS),search.workers=$(WORKERS)) $(ARGS)

# Test files run side by side, one per core (pytest-xdist); a file's tests share a worker,
# so the module fixtures (a trained run, a server) are made once. TEST_JOBS=1: one at a time.
TEST_JOBS ?= auto

## the whole test suite: slow tests on real MNIST, PostgreSQL and Ray included
test: install-extras
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadfile $(ARGS)

## the suite without the slow tests (and without the optional extras)
test-fast: install
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadfile -m "not slow" $(ARGS)

## ruff (lint and format check) and mypy over the code
lint: install
	$(VENV)/bin/ruff check pipeline tests benchmarks
	$(VENV)/bin/ruff format --check pipeline tests benchmarks
	$(VENV)/bin/mypy

## rewrite the code in place: ruff's fixes and formatting
format: install
	$(VENV)/bin/ruff check --fix pipeline tests benchmarks
	$(VENV)/bin/ruff format pipeline tests benchmarks

## remove outputs/, multirun/ and .pytest_cache/ (never mlruns/ or data/)
clean:
	rm -rf outputs multirun .pytest_cache

## seconds per epoch on the real 60k MNIST, ours vs scikit-learn (and PyTorch)
bench: install
	$(PY) benchmarks/epoch_speed.py $(ARGS)

## seconds a person waits: --help, a bad value, make ui, make run by stage
bench-cli: install
	$(PY) benchmarks/cli_speed.py $(ARGS)
