"""Answer the test questions with one explainer variant and score each answer."""

import sys
from pathlib import Path

import polars as pl
import torch

from selfexplain.evaluate import evaluate_change_task, load_explainer
from selfexplain.examples import read_examples, select, subsample, write_parquet
from selfexplain.plots import eval_labels
from selfexplain.tasks.patching import heatmap_rows

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)

w, settings = snakemake.wildcards, snakemake.params.settings
adapter = snakemake.input.get("adapter")
model, tokenizer = load_explainer(
    Path(snakemake.input.model).parent, Path(adapter).parent if adapter else None
)
test = select(read_examples(snakemake.input.labels), "test")
sample = subsample(test, settings["n_test"], 0, "changed").with_columns(in_sample=True)
if w.task == "patching":
    grid = heatmap_rows(test, snakemake.params.heatmap_pairs)
    extra = grid.filter(~pl.col("id").is_in(sample["id"].to_list())).with_columns(in_sample=False)
    sample = pl.concat([sample, extra]).with_columns(
        heatmap=pl.col("id").is_in(grid["id"].to_list())
    )
n_train = 0 if w.variant == "untrained" else snakemake.params.n_train
labels = eval_labels(w.task, w.target, w.explainer, w.variant, int(w.seed), n_train)
rows = evaluate_change_task(
    model,
    tokenizer,
    sample,
    labels=labels,
    max_new_tokens=settings["max_new_tokens"],
    batch_size=settings["batch_size"],
)
write_parquet(rows, snakemake.output[0])
