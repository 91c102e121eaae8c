"""Hint-removal labels of one target model, as explainer examples (parquet)."""

import sys
from pathlib import Path

import torch

from selfexplain.examples import to_frame, write_parquet
from selfexplain.models import load
from selfexplain.prompts import read_prompts_jsonl
from selfexplain.tasks.hint import hint_examples, hint_rows

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)

settings = snakemake.params.settings
model, tokenizer = load(Path(snakemake.input.model).parent)
prompts = read_prompts_jsonl(snakemake.input.prompts)
rows = hint_rows(model, tokenizer, prompts, batch_size=settings["batch_size"])
examples = hint_examples(
    rows,
    snakemake.wildcards.target,
    test_fraction=settings["test_fraction"],
)
write_parquet(to_frame(examples), snakemake.output[0])
