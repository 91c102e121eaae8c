"""Answer the test questions with one explainer variant and score each answer."""

import sys
from pathlib import Path

import polars as pl
import torch

from selfexplain.evaluate import evaluate_change_task, evaluate_features, load_explainer
from selfexplain.examples import read_examples, select, subsample, write_parquet
from selfexplain.matrix import variant_n_train
from selfexplain.plots import eval_labels
from selfexplain.tasks.patching import heatmap_rows
from selfexplain.variants import withhold_signal

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)

w, settings = snakemake.wildcards, snakemake.params.settings
n_train = variant_n_train(w.variant, snakemake.params.n_train)
labels = eval_labels(w.task, w.target, w.explainer, w.variant, int(w.seed), n_train)
examples = read_examples(snakemake.input.labels)
adapter = snakemake.input.get("adapter")
adapter_dir = Path(adapter).parent if adapter else None
model_dir = Path(snakemake.input.model).parent
if w.task == "features":  # vectors injected; description metrics; nearest-neighbour baseline
    rows = evaluate_features(
        examples,
        model_dir,
        adapter_dir,
        labels=labels,
        n_train=snakemake.params.n_train,
        settings=settings,
        features=snakemake.params.features,
    )
else:
    model, tokenizer = load_explainer(model_dir, adapter_dir)
    test = select(examples, "test")
    if w.variant == "no_signal":  # the same test examples, questions shuffled within prompts
        test = withhold_signal(test, w.task, int(w.seed))
    sample = subsample(test, settings["n_test"], 0, "changed").with_columns(in_sample=True)
    if w.task == "patching":
        grid = heatmap_rows(test, snakemake.params.heatmap_pairs)
        extra = grid.filter(~pl.col("id").is_in(sample["id"].to_list()))
        sample = pl.concat([sample, extra.with_columns(in_sample=False)]).with_columns(
            heatmap=pl.col("id").is_in(grid["id"].to_list())
        )
    rows = evaluate_change_task(
        model,
        tokenizer,
        sample,
        labels=labels,
        max_new_tokens=settings["max_new_tokens"],
        batch_size=settings["batch_size"],
    )
write_parquet(rows, snakemake.output[0])
