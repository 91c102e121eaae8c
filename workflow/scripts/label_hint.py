"""Hint-removal labels of one target model, as explainer examples (parquet):
selfexplain.tasks.hint.label."""

import sys
from pathlib import Path

import torch

from selfexplain.examples import write_parquet
from selfexplain.models import load
from selfexplain.prompts import read_prompts_jsonl
from selfexplain.settings import HintSettings
from selfexplain.tasks import hint

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)

s = HintSettings.from_dict(snakemake.params.settings)
model, tokenizer = load(Path(snakemake.input.model).parent)
frame = hint.label(
    model,
    tokenizer,
    read_prompts_jsonl(snakemake.input.prompts),
    snakemake.wildcards.target,
    batch_size=s.batch_size,
    test_fraction=s.test_fraction,
)
write_parquet(frame, snakemake.output[0])
