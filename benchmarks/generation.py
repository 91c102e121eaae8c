"""Explainer answer generation: batched (batch 16) vs one question at a time, same answers.

    python benchmarks/generation.py --n 32

Loads the explainer as the evaluate rule does (``evaluate.load_explainer``: base model plus the
trained LoRA adapter, --adapter none for the base model alone), draws --n test questions from
--labels as the pipeline does (split == "test", balanced changed/unchanged, seed 0) and answers
them with ``evaluate.generate_answers`` (greedy, left-padded) at --batch-size and at batch size
1. Writes results/benchmarks/generation.json.
"""

from __future__ import annotations

import argparse

import torch
from _common import environment, print_table, timed, write_record

from selfexplain.evaluate import generate_answers, load_explainer
from selfexplain.examples import read_examples, select, subsample
from selfexplain.train import format_prompt


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
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/benchmarks/generation.json")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    adapter = None if args.adapter.lower() == "none" else args.adapter
    model, tok = load_explainer(args.model, adapter)
    test = subsample(select(read_examples(args.labels), "test"), args.n, 0, "changed")
    questions = test["question"].to_list()
    gold = test["answer"].to_list()
    kw = {"max_new_tokens": args.max_new_tokens}
    generate_answers(model, tok, questions[:2], **kw, batch_size=2)  # warm-up
    answers, seconds = {}, {}
    for name, bs in (("batched", args.batch_size), ("single", 1)):
        answers[name], seconds[name] = timed(
            lambda bs=bs: generate_answers(model, tok, questions, **kw, batch_size=bs)
        )
    same = [a == b for a, b in zip(answers["batched"], answers["single"], strict=True)]
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
            for name, bs in (("batched", args.batch_size), ("single", 1))
        ],
    )
    print(f"speedup {record['speedup']:.1f}x, identical answers {sum(same)}/{len(same)}")
    return record


if __name__ == "__main__":
    main()
