"""Answer the test questions with one explainer variant and score each answer."""

import sys
from pathlib import Path

import torch

from selfexplain.evaluate import evaluate_change_task, load_explainer
from selfexplain.examples import read_examples, select, subsample, write_parquet
from selfexplain.plots import eval_labels

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)

w, settings = snakemake.wildcards, snakemake.params.settings
adapter = snakemake.input.get("adapter")
model, tokenizer = load_explainer(
    Path(snakemake.input.model).parent,
    Path(adapter).parent if adapter else None,
)
test = subsample(
    select(read_examples(snakemake.input.labels), "test"),
    settings["n_test"],
    0,
    "changed",
)
n_train = 0 if w.variant == "untrained" else snakemake.params.n_train
labels = eval_labels(w.task, w.target, w.explainer, w.variant, int(w.seed), n_train)
rows = evaluate_change_task(
    model,
    tokenizer,
    test,
    labels=labels,
    max_new_tokens=settings["max_new_tokens"],
    batch_size=settings["batch_size"],
)
write_parquet(rows, snakemake.output[0])
