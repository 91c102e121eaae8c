"""Fine-tune one explainer (LoRA) on the train split of one task's labels."""

import sys
from pathlib import Path

import torch

from selfexplain.examples import read_examples, select, subsample
from selfexplain.matrix import variant_n_train
from selfexplain.train import TrainConfig, train_explainer
from selfexplain.variants import withhold_signal

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)

w, features = snakemake.wildcards, snakemake.params.features
settings = dict(snakemake.params.train)
seed = int(w.seed)
n_train = settings.pop("n_train")
settings.pop("scaling", None)  # the matrix's data-scaling fractions (matrix.py), not a TrainConfig
stratify = None if w.task == "features" else "changed"
train = select(read_examples(snakemake.input.labels), "train")
if w.variant == "no_signal":  # before the draw: questions shuffled within each whole prompt
    train = withhold_signal(train, w.task, seed)
# one draw of n_train examples; a data-scaling variant n{N} trains on its first N
train = subsample(train, n_train, 0, stratify).head(variant_n_train(w.variant, n_train))
cfg = TrainConfig(seed=seed, **settings)
injection = {"layer": features["inject_layer"], "scale": features["inject_scale"]}
summary = train_explainer(
    Path(snakemake.input.model).parent,
    train,
    Path(snakemake.output.adapter).parent,
    cfg,
    snakemake.params.checkpoints,
    injection=injection if w.task == "features" else None,
)
print({k: v for k, v in summary.items() if k != "log_history"})
