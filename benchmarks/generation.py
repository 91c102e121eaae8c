"""Explainer answer generation: shared-prefix batches vs plain batches (batch 16) vs one
question at a time, same answers.

    python benchmarks/generation.py --n 32

Loads the explainer as the evaluate rule does (``evaluate.load_explainer``: base model plus the
trained LoRA adapter, --adapter none for the base model alone), draws --n test questions from
--labels as the pipeline does (split == "test", balanced changed/unchanged, seed 0; with
--whole-prompts, every test question of whole prompts / pairs instead, as a heatmap or
`selfexplain ask` asks them) and answers them with ``evaluate.generate_answers`` (greedy) three
ways: reusing the cached prefix the questions of one prompt share (``share_prefix``, the
pipeline's default), in plain left-padded batches of --batch-size, and one at a time;
--shared-batch-sizes adds the shared-prefix path with other group sizes (more questions
continue from one cached prefix). Writes
results/benchmarks/generation.json.
"""

from __future__ import annotations

import argparse

import polars as pl
import torch
from _common import environment, parse_scales, print_table, timed, write_record

from selfexplain.core.formats import format_prompt
from selfexplain.core.schema import read_examples, select, subsample
from selfexplain.data.draws import groups
from selfexplain.evaluate.generation import generate_answers, load_explainer


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resources/models/smollm2")
    ap.add_argument(
        "--adapter",
        default="results/explainers/ablation/smollm2/smollm2/trained/s0",
        help="LoRA adapter folder, or 'none'",
    )
    ap.add_argument("--labels", default="results/labels/ablation/smollm2.parquet")
    ap.add_argument("--n", type=int, default=32, help="test questions")
    ap.add_argument(
        "--whole-prompts", action="store_true", help="all test questions of whole prompts"
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--shared-batch-sizes", default="",
        help="also time the shared-prefix path with these group sizes, e.g. 32,64",
    )  # fmt: skip
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/benchmarks/generation.json")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    adapter = None if args.adapter.lower() == "none" else args.adapter
    model, tok = load_explainer(args.model, adapter)
    test = select(read_examples(args.labels), "test")
    if args.whole_prompts:
        keys = groups(test, test["task"][0])
        keep: set[str] = set()
        for k in dict.fromkeys(keys):  # whole groups, in file order, until --n questions
            if sum(x in keep for x in keys) >= args.n:
                break
            keep.add(k)
        test = test.filter(pl.Series([k in keep for k in keys]))
    else:
        test = subsample(test, args.n, 0, "changed")
    questions = test["question"].to_list()
    gold = test["answer"].to_list()
    kw = {"max_new_tokens": args.max_new_tokens}
    generate_answers(model, tok, questions[:2], **kw, batch_size=2)  # warm-up
    answers, seconds = {}, {}
    paths = (("shared", args.batch_size, True), ("batched", args.batch_size, False))
    paths += (("single", 1, False),)
    paths += tuple((f"shared{b}", b, True) for b in parse_scales(args.shared_batch_sizes))
    for name, bs, share in paths:
        answers[name], seconds[name] = timed(
            lambda bs=bs, share=share: generate_answers(
                model, tok, questions, **kw, batch_size=bs, share_prefix=share, share_group=bs
            )
        )
    same = [a == b for a, b in zip(answers["batched"], answers["single"], strict=True)]
    same_shared = [a == b for a, b in zip(answers["shared"], answers["batched"], strict=True)]
    prompt_tokens = [len(tok(format_prompt(q))["input_ids"]) for q in questions]
    record = {
        "benchmark": "generation",
        "model": args.model,
        "adapter": adapter,
        "labels": args.labels,
        "questions": len(questions),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "prompt_tokens": sum(prompt_tokens),
        "prompt_tokens_min_max": [min(prompt_tokens), max(prompt_tokens)],
        "batched_s": seconds["batched"],
        "naive_s": seconds["single"],
        "speedup": seconds["single"] / seconds["batched"],
        "whole_prompts": args.whole_prompts,
        "shared_s": seconds["shared"],
        "shared_speedup": seconds["batched"] / seconds["shared"],
        "identical_shared": sum(same_shared),
        "shared_batch_sizes": {
            name: {
                "batch_size": bs,
                "seconds": seconds[name],
                "speedup_vs_batched": seconds["batched"] / seconds[name],
                "identical_to_batched": sum(
                    a == b for a, b in zip(answers[name], answers["batched"], strict=True)
                ),
            }
            for name, bs, _ in paths[3:]
        },
        "identical_answers": sum(same),
        "all_identical": all(same),
        "mismatches": [
            {"question": i, "batched": answers["batched"][i], "single": answers["single"][i]}
            for i, ok in enumerate(same)
            if not ok
        ],
        "accuracy_exact_batched": sum(a == g for a, g in zip(answers["batched"], gold, strict=True))
        / len(gold),
        **environment(args.threads),
    }
    write_record(args.out, record)
    print_table(
        ["path", "batch", "questions", "seconds", "questions/s"],
        [
            [
                name,
                bs,
                len(questions),
                f"{seconds[name]:.2f}",
                f"{len(questions) / seconds[name]:.2f}",
            ]
            for name, bs, _ in paths
        ],
    )
    print(f"batched vs single {record['speedup']:.1f}x, identical answers {sum(same)}/{len(same)}")
    print(
        f"shared prefix vs batched {record['shared_speedup']:.1f}x, identical answers "
        f"{sum(same_shared)}/{len(same_shared)}"
    )
    return record


if __name__ == "__main__":
    main()
