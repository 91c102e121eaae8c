"""Collect every evaluation into one tidy metric table with bootstrap CIs."""

from selfexplain.core.job import job
from selfexplain.core.schema import read_parquet
from selfexplain.report.plots import summarize, write_table

job(snakemake, torch_threads=False)

evals = [read_parquet(p) for p in snakemake.input]
table = summarize(evals, n_boot=snakemake.params.n_boot)
write_table(table, snakemake.output.parquet, snakemake.output.csv)
print(table)
