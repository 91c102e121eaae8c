"""Training step with logits only at answer positions vs the model's own (all-position) loss.

    python benchmarks/answer_loss.py --model resources/models/gemma \
        --labels results/labels/ablation/gemma.parquet

One forward + backward of the pipeline's LoRA explainer (TrainConfig defaults) on one batch of
real explainer examples (the train split of --labels, encoded and right-padded as the trainer
does), timed --repeats times each way in the same run: the model's own loss (logits at every
position) and selfexplain.train.loss.answer_loss (the output layer only where an answer token is
predicted). Records both losses (they must agree) and the best time of each. Writes
results/benchmarks/answer_loss_<model dir name>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import environment, print_table, timed, write_record

from selfexplain.core.schema import read_examples, select, subsample
from selfexplain.core.settings import TrainConfig
from selfexplain.models import load
from selfexplain.train.encode import IGNORE, RightPadCollator, encode_example
from selfexplain.train.loss import answer_loss
from selfexplain.train.weights import lora_model


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resources/models/smollm2")
    ap.add_argument("--labels", default="results/labels/ablation/smollm2.parquet")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--out", default=None, help="default: results/benchmarks/answer_loss_<model>.json"
    )
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = TrainConfig()
    model, tok = load(args.model)
    model.train()
    model = lora_model(model, cfg)
    rows = subsample(select(read_examples(args.labels), "train"), cfg.batch_size, 0, "changed")
    batch = RightPadCollator(tok.pad_token_id)(
        [
            encode_example(tok, q, a, cfg.max_length)
            for q, a in zip(rows["question"], rows["answer"], strict=True)
        ]
    )

    def step(loss_of):
        loss = loss_of()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss.detach())

    ways = {
        "all_positions": lambda: model(**batch).loss,
        "answer_positions": lambda: answer_loss(model, batch)[0],
    }
    seconds = {name: [] for name in ways}
    losses = {}
    for _ in range(args.repeats):
        for name, loss_of in ways.items():
            losses[name], s = timed(lambda loss_of=loss_of: step(loss_of))
            seconds[name].append(s)
    best = {name: min(v) for name, v in seconds.items()}
    record = {
        "benchmark": "answer_loss",
        "model": args.model,
        "labels": args.labels,
        "batch_shape": list(batch["input_ids"].shape),
        "tokens": int(batch["attention_mask"].sum()),
        "answer_positions": int((batch["labels"][:, 1:] != IGNORE).sum()),
        "vocab": model.get_output_embeddings().weight.shape[0],
        "seconds": seconds,
        "best_s": best,
        "speedup": best["all_positions"] / best["answer_positions"],
        "loss": losses,
        "max_abs_loss_diff": abs(losses["all_positions"] - losses["answer_positions"]),
        **environment(args.threads),
    }
    name = Path(args.model).name
    write_record(args.out or f"results/benchmarks/answer_loss_{name}.json", record)
    print_table(
        ["loss", "best s / step", "loss value"],
        [[k, f"{best[k]:.3f}", f"{losses[k]:.6f}"] for k in ways],
    )
    print(
        f"{name}: batch {record['batch_shape']}, vocab {record['vocab']}, logits at "
        f"{record['answer_positions']} of {record['tokens']} tokens: {record['speedup']:.2f}x"
    )
    return record


if __name__ == "__main__":
    main()
