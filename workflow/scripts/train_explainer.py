"""Fine-tune one explainer (LoRA) on the train split of one task's labels."""

import sys
from pathlib import Path

import torch

from selfexplain.examples import read_examples, select, subsample
from selfexplain.train import TrainConfig, train_explainer

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)

settings = dict(snakemake.params.train)
seed = int(snakemake.wildcards.seed)
n_train = settings.pop("n_train")
train = subsample(
    select(read_examples(snakemake.input.labels), "train"),
    n_train,
    seed=0,
    stratify="changed",
)
cfg = TrainConfig(seed=seed, **settings)
out_dir = Path(snakemake.output.adapter).parent
summary = train_explainer(
    Path(snakemake.input.model).parent,
    train,
    out_dir,
    cfg,
    snakemake.params.checkpoints,
)
print({k: v for k, v in summary.items() if k != "log_history"})
