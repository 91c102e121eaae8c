# selfexplain: two commands do all the set-up on a fresh machine with Python 3.11 and pip.
#   make run    set up, then run the full default pipeline (offline, packaged model, CPU)
#   make test   set up, then run the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run test lint report clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python envs/pip-install.sh envs/requirements.txt envs/requirements-dev.txt envs/requirements-deepspeed.txt envs/requirements-models.txt pyproject.toml
	envs/pip-install.sh $(abspath $(BIN))/pip
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/snakemake --profile profiles/default --cores $(CORES)
	$(BIN)/snakemake --profile profiles/default --cores $(CORES) --report results/report.html

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/ruff format --check src tests workflow benchmarks
	$(BIN)/snakemake --lint

clean:
	rm -rf results logs .snakemake
