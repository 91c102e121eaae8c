"""Paired comparisons of variants on the same test items (clustered bootstrap CIs)."""

from selfexplain.core.job import job
from selfexplain.core.schema import read_parquet
from selfexplain.report.compare import comparisons
from selfexplain.report.plots import comparisons_figure, privileged_access_figure, write_table

job(snakemake, torch_threads=False)

table = comparisons([read_parquet(p) for p in snakemake.input], n_boot=snakemake.params.n_boot)
write_table(table, snakemake.output.parquet, snakemake.output.csv)
comparisons_figure(table, snakemake.output.figure)
privileged_access_figure(table, snakemake.output.privileged_access)
print(table)
