# medflower: `make demo` and `make test` work on a fresh machine (they set up first).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
# The environment itself lives outside the repository and `.venv` links to it:
# `flwr run .` walks every file under the app directory to build the FAB before
# it filters them, and a venv of ~56,000 files inside it cost ~5 s of CPU per run
# (a symlinked directory is not entered). One environment per checkout path.
VENV_HOME ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/medflower/venvs/$(notdir $(CURDIR))-$(shell printf %s '$(CURDIR)' | cksum | cut -d' ' -f1)
BIN := $(CURDIR)/$(VENV)/bin
HOSPITALS ?= 4
ROUNDS ?= 5
RUN_CONFIG ?=
PYTEST_ARGS ?=

# Flower offline and project-local (see docs/deployment.md "Environment").
export FLWR_HOME := $(CURDIR)/.flwr
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export MEDFLOWER_HOME := $(CURDIR)
# Flower's generated protobuf code is older than the runtime openmined-psi pins:
# harmless, but every Flower process (SuperLink, simulation, Ray workers) printed
# nine "Protobuf gencode version" warnings; Ray's ray.init a "Tip" FutureWarning
# (scripts/flower/env.py says why each is only noise). They inherit these filters.
export PYTHONWARNINGS := ignore:Protobuf gencode version:UserWarning,ignore:Tip:FutureWarning:ray._private.worker
# No idle Ray workers prestarted beside the simulation's actors (scripts/flower/env.py).
export RAY_prestart_worker_first_driver := 0
export PATH := $(BIN):$(PATH)

.PHONY: setup demo test lint env clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV_HOME) && ln -s $(VENV_HOME) $(VENV); }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]" 2> >(grep -v "^WARNING: Location" >&2)
	touch $@

setup: $(VENV)/.installed
	$(BIN)/python -c "from pathlib import Path; from scripts.flower.env import write_flower_config as w; w(Path('$(FLWR_HOME)'), $(HOSPITALS))"

demo: setup
	$(BIN)/medflower simulate --hospitals $(HOSPITALS) --run-config "num-server-rounds=$(ROUNDS) $(RUN_CONFIG)"

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Print the environment the Makefile uses: eval "$(make -s env)"
env:
	@echo "export FLWR_HOME='$(FLWR_HOME)' FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 MEDFLOWER_HOME='$(CURDIR)' PYTHONWARNINGS='$(PYTHONWARNINGS)' RAY_prestart_worker_first_driver=0 PATH='$(BIN)':\"\$$PATH\""

clean:
	rm -rf .flwr outputs .pytest_cache
