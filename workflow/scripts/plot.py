"""Bar chart of one task's metrics per (explainer, variant) with 95% CIs."""

import polars as pl

from selfexplain.core.job import job
from selfexplain.core.schema import read_parquet
from selfexplain.report.plots import PLOT_METRICS, metric_bars

job(snakemake, torch_threads=False)

task = snakemake.wildcards.task
table = read_parquet(snakemake.input[0]).filter(
    (pl.col("task") == task) & ~pl.col("variant").str.contains(r"^n\d+$")  # scaling: own figure
)
metric_bars(
    table,
    snakemake.output[0],
    metrics=PLOT_METRICS[task],
    title=f"{task}: explainer metrics (95% CI)",
)
