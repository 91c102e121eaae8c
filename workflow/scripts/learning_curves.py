"""Validation learning curves of every trained run (from train_summary.json)."""

import sys
from pathlib import Path

from selfexplain.plots import curve_table, learning_curves_figure, read_json

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

summaries = []
for path in snakemake.input:
    task, target, explainer, variant, seed = Path(path).parts[-6:-1]
    labels = {"task": task, "target": target, "explainer": explainer, "variant": variant}
    summaries.append((labels | {"seed": int(seed.removeprefix("s"))}, read_json(path)))
table = curve_table(summaries)
table.write_csv(snakemake.output.table)
learning_curves_figure(table, snakemake.output.figure)
print(table)
