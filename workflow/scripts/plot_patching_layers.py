"""Patching: per-layer accuracy table and curves (trained vs untrained explainers)."""

from selfexplain.core.job import job
from selfexplain.core.schema import read_parquet
from selfexplain.report.plots import layer_curves, layer_table

job(snakemake, torch_threads=False)

table = layer_table([read_parquet(p) for p in snakemake.input])
table.write_csv(snakemake.output.table)
layer_curves(table, snakemake.output.figure)
print(table)
