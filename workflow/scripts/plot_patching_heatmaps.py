"""Patching: the target's causal heatmaps next to the explainers' predicted ones."""

import sys

from selfexplain.core.schema import read_parquet
from selfexplain.report.plots import patching_heatmaps

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

patching_heatmaps([read_parquet(p) for p in snakemake.input], snakemake.output[0])
