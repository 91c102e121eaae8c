"""Wall time and peak memory per rule family, from the jobs' benchmark files."""

from selfexplain.core.job import job
from selfexplain.report.plots import compute_figure
from selfexplain.report.tables import compute_table, read_benchmarks

job(snakemake, torch_threads=False)

table = compute_table(read_benchmarks(snakemake.input))
table.write_csv(snakemake.output.table)
compute_figure(table, snakemake.output.figure)
print(table)
