"""``selfexplain labels``: label your own prompts (ablation) or pairs (patching) on a target model
with the pipeline's recipe (``tasks.ablation.label`` / ``tasks.patching.label``, which the rules
run too), written as a parquet of explainer examples. The options' defaults are the pipeline's
settings (cli.parser), so the labels are the ones the rules would write for the same input."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from selfexplain import models
from selfexplain.cli.locate import model_dir, slug
from selfexplain.core.schema import write_parquet
from selfexplain.prompts import read_pairs_jsonl, read_prompts_jsonl
from selfexplain.tasks import ablation, patching


def cmd_labels(args) -> int:
    # read (and validate) the input before loading any model
    if args.task == "ablation":
        items = read_prompts_jsonl(args.prompts)
    else:
        items = read_pairs_jsonl(args.prompts)
    target_dir = model_dir(args.target, "--target", args.cache)
    name = args.target_name or (
        target_dir.name if Path(args.target).expanduser().is_dir() else slug(args.target)
    )
    model, tokenizer = models.load(target_dir)
    if args.task == "ablation":
        df = _ablation_labels(model, tokenizer, items, name, args)
    else:
        df = _patching_labels(model, tokenizer, items, name, args)
    write_parquet(df, args.out)
    n_test = int((df["split"] == "test").sum())
    print(f"{len(df)} examples ({len(df) - n_test} train, {n_test} test) -> {args.out}")
    return 0


def _ablation_labels(model, tokenizer, prompts: list, name: str, args) -> pl.DataFrame:
    return ablation.label(
        model,
        tokenizer,
        prompts,
        name,
        batch_size=args.batch_size,
        engine=args.engine,
        drop_last=not args.keep_last,
        test_fraction=args.test_fraction,
        holdout=args.holdout,
    )


def _patching_labels(model, tokenizer, pairs: list, name: str, args) -> pl.DataFrame:
    return patching.label(
        model,
        tokenizer,
        pairs,
        name,
        window=args.window,
        layer_stride=args.layer_stride,
        max_pairs=args.max_pairs,
        max_positions=args.max_positions,
        batch_size=args.batch_size,
        test_fraction=args.test_fraction,
        holdout=args.holdout,
        source=args.prompts,
    )
