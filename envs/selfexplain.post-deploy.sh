#!/usr/bin/env bash
# Snakemake runs this inside the conda env it has just built from envs/selfexplain.yaml
# (--sdm conda), from its working directory: the selfexplain repository root.
set -euo pipefail
if [ ! -f envs/pip-install.sh ]; then
    echo "selfexplain: run snakemake from the repository root (envs/pip-install.sh not found in $PWD)" >&2
    exit 1
fi
bash envs/pip-install.sh pip
