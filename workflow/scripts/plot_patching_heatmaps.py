"""Patching: the target's causal heatmaps next to the explainers' predicted ones."""

import sys

from selfexplain.examples import read_parquet
from selfexplain.plots import patching_heatmaps

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

patching_heatmaps([read_parquet(p) for p in snakemake.input], snakemake.output[0])
