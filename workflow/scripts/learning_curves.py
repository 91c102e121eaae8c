"""Validation learning curves of every trained run (from train_summary.json)."""

from selfexplain.core.job import job
from selfexplain.core.layout import parse_summary_file
from selfexplain.report.plots import curve_table, learning_curves_figure, read_json

job(snakemake, torch_threads=False)

summaries = []
for path in snakemake.input:
    run = parse_summary_file(path)
    labels = {"task": run.task, "target": run.target, "explainer": run.explainer}
    summaries.append((labels | {"variant": run.variant, "seed": run.seed}, read_json(path)))
table = curve_table(summaries)
table.write_csv(snakemake.output.table)
learning_curves_figure(table, snakemake.output.figure)
print(table)
