"""``selfexplain labels``: label your own prompts (ablation) or pairs (patching) on a target model
with the pipeline's code, written as a parquet of explainer examples."""

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
    from selfexplain.examples import to_frame, write_parquet
    from selfexplain.models import decoder_layers, load

    model, tokenizer = load(target_dir)
    if args.task == "ablation":
        from selfexplain.tasks.ablation import ablation_examples, ablation_labels

        rows = ablation_labels(
            model, tokenizer, items, batch_size=args.batch_size or 32, engine=args.engine
        )
        examples = ablation_examples(rows, name, test_fraction=args.test_fraction)
        print(f"{len(rows)} labels from {len(items)} prompts")
    else:
        from selfexplain.tasks.patching import (
            filter_pairs,
            patching_examples,
            patching_labels,
            window_starts,
        )

        pairs = filter_pairs(model, tokenizer, items)
        if args.max_pairs is not None:
            pairs = pairs[: args.max_pairs]
        print(f"{len(pairs)} of {len(items)} pairs kept (equal length, different outputs)")
        if not pairs:
            raise ValueError(
                f"{args.prompts}: 0 of {len(items)} pairs kept: a pair needs a clean and a "
                "counterfactual prompt of equal token length on which the target's next "
                "tokens differ"
            )
        n_layers = len(decoder_layers(model))
        window = min(args.window, n_layers)
        starts = window_starts(n_layers, window, args.layer_stride)
        rows = patching_labels(
            model,
            tokenizer,
            pairs,
            window=window,
            layer_starts=starts,
            batch_size=args.batch_size or 64,
            max_positions=args.max_positions,
        )
        examples = patching_examples(
            rows, name, test_fraction=args.test_fraction, holdout=args.holdout
        )
        print(f"{len(rows)} labels: window {window}, layer starts {starts}")
    df = to_frame(examples)
    write_parquet(df, args.out)
    n_test = sum(ex.split == "test" for ex in examples)
    print(f"{len(df)} examples ({len(df) - n_test} train, {n_test} test) -> {args.out}")
    return 0
