"""``selfexplain labels``: label your own prompts (ablation) or pairs (patching) on a target model
with the pipeline's recipe (``tasks.ablation.label`` / ``tasks.patching.label``, which the rules
run too), written as a parquet of explainer examples."""

from __future__ import annotations

from pathlib import Path

from selfexplain.cli.locate import model_dir, slug


def cmd_labels(args) -> int:
    from selfexplain.prompts import read_pairs_jsonl, read_prompts_jsonl

    # read (and validate) the input before loading any model
    if args.task == "ablation":
        items = read_prompts_jsonl(args.prompts)
    else:
        items = read_pairs_jsonl(args.prompts)
    target_dir = model_dir(args.target, "--target", args.cache)
    name = args.target_name or (
        target_dir.name if Path(args.target).expanduser().is_dir() else slug(args.target)
    )
    from selfexplain.core.schema import write_parquet
    from selfexplain.models import load
    from selfexplain.tasks import ablation, patching

    model, tokenizer = load(target_dir)
    if args.task == "ablation":
        df = ablation.label(
            model,
            tokenizer,
            items,
            name,
            batch_size=args.batch_size or 32,
            engine=args.engine,
            test_fraction=args.test_fraction,
        )
    else:
        df = patching.label(
            model,
            tokenizer,
            items,
            name,
            window=args.window,
            layer_stride=args.layer_stride,
            max_pairs=args.max_pairs,
            max_positions=args.max_positions,
            batch_size=args.batch_size or 64,
            test_fraction=args.test_fraction,
            holdout=args.holdout,
            source=args.prompts,
        )
    write_parquet(df, args.out)
    n_test = int((df["split"] == "test").sum())
    print(f"{len(df)} examples ({len(df) - n_test} train, {n_test} test) -> {args.out}")
    return 0
