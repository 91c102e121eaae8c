"""Fine-tune one explainer (LoRA) on the train split of one task's labels, validating as it
goes (selfexplain.experiment.training_rows: the draw, the validation split, the controls)."""

import sys
from pathlib import Path

import torch

from selfexplain.examples import read_examples
from selfexplain.experiment import training_rows
from selfexplain.matrix import base_variant, variant_n_train
from selfexplain.train import train_config, train_explainer

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)

w, features, settings = snakemake.wildcards, snakemake.params.features, snakemake.params.train
seed = int(w.seed)
train, val = training_rows(
    read_examples(snakemake.input.labels),
    w.task,
    base_variant(w.variant),
    seed,
    n_train=settings.get("n_train"),
    n_variant=variant_n_train(w.variant, None),
    val_fraction=settings.get("val_fraction", 0.0),
    n_val=settings.get("n_val"),
)
print(f"{len(train)} training rows, {len(val)} validation rows")
injection = {"layer": features["inject_layer"], "scale": features["inject_scale"]}
summary = train_explainer(
    Path(snakemake.input.model).parent,
    train,
    Path(snakemake.output.adapter).parent,
    train_config(settings, seed),
    snakemake.params.checkpoints,
    injection=injection if w.task == "features" else None,
    validation=val if len(val) else None,
)
print({k: v for k, v in summary.items() if k not in ("log_history", "validation")})
