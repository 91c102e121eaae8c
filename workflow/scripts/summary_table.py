"""Mean over seeds and 95% CI (over seeds, or bootstrap over examples for one seed)."""

from selfexplain.core.job import job
from selfexplain.core.schema import read_parquet
from selfexplain.report.plots import write_table
from selfexplain.report.tables import seed_summary

job(snakemake, torch_threads=False)

summary = seed_summary(read_parquet(snakemake.input[0]))
write_table(summary, snakemake.output.parquet, snakemake.output.csv)
print(summary)
