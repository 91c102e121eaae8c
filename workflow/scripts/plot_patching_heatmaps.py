"""Patching: the target's causal heatmaps next to the explainers' predicted ones."""

from selfexplain.core.job import job
from selfexplain.core.schema import read_parquet
from selfexplain.report.plots import patching_heatmaps

job(snakemake, torch_threads=False)

patching_heatmaps([read_parquet(p) for p in snakemake.input], snakemake.output[0])
