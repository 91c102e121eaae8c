"""Fine-tune one explainer (LoRA) on the train split of one task's labels."""

import sys
from pathlib import Path

import torch

from selfexplain.examples import read_examples, select, subsample
from selfexplain.train import TrainConfig, train_explainer
from selfexplain.variants import withhold_signal

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)

w, features = snakemake.wildcards, snakemake.params.features
settings = dict(snakemake.params.train)
seed = int(w.seed)
n_train = settings.pop("n_train")
stratify = None if w.task == "features" else "changed"
train = subsample(select(read_examples(snakemake.input.labels), "train"), n_train, 0, stratify)
if w.variant == "no_signal":
    train = withhold_signal(train, w.task)
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
