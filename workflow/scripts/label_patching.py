"""Activation-patching labels of one target model, as explainer examples (parquet)."""

import sys
from pathlib import Path

import torch

from selfexplain.examples import to_frame, write_parquet
from selfexplain.models import decoder_layers, load
from selfexplain.prompts import read_pairs_jsonl
from selfexplain.tasks.patching import (
    filter_pairs,
    patching_examples,
    patching_labels,
    window_starts,
)

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)

s = snakemake.params.settings
model, tokenizer = load(Path(snakemake.input.model).parent)
candidates = read_pairs_jsonl(snakemake.input.pairs)
pairs = filter_pairs(model, tokenizer, candidates)[: s["max_pairs"]]
print(f"{len(pairs)} of {len(candidates)} pairs kept (equal length, different outputs)")
if not pairs:
    raise ValueError("no usable pairs: raise patching.n_pairs or check your pairs_file")
n_layers = len(decoder_layers(model))
window = min(s["window"], n_layers)
starts = window_starts(n_layers, window, s["layer_stride"])
rows = patching_labels(
    model,
    tokenizer,
    pairs,
    window=window,
    layer_starts=starts,
    batch_size=s["batch_size"],
    max_positions=s["max_positions"],
)
examples = patching_examples(
    rows, snakemake.wildcards.target, test_fraction=s["test_fraction"], holdout=s["holdout"]
)
write_parquet(to_frame(examples), snakemake.output[0])
