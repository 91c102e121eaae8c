"""Patching: per-layer accuracy table and curves (trained vs untrained explainers)."""

import sys

from selfexplain.core.schema import read_parquet
from selfexplain.report.plots import layer_curves, layer_table

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

table = layer_table([read_parquet(p) for p in snakemake.input])
table.write_csv(snakemake.output.table)
layer_curves(table, snakemake.output.figure)
print(table)
