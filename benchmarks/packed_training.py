"""Packed vs unpacked explainer training on real patching and ablation rows, side by side.

    python benchmarks/packed_training.py --rows 96 --packs 1,4,8 --precisions fp32,bf16

For each task the rows are whole prompts' (pairs') rows of the pipeline's own training draw
(``experiment.training_rows`` with the config defaults, seed 0), so each prompt contributes as
many questions as it does in a real run: packing can only share what the draw puts together.
Each row set is trained for one epoch by the pipeline's trainer (``train.train_explainer``,
LoRA, batch 8, no validation, no checkpoints inside the timed run) once unpacked (pack 1) and
once per --packs value, in each --precisions (train.precision: fp32, or bf16 with the frozen
base in bfloat16); a short untimed run warms up first. Reported per run: examples/s (and the
speedup over unpacked fp32),
tokens computed (the packed sequences' tokens; the rows' own tokens unpacked), and the
executed matmul FLOP/s (4 x non-embedding params per computed token + 4 x output-layer params
per answer token: the base is frozen, logits are computed at answer tokens only; attention's
score matmuls ignored) against the machine's matmul ceiling in the run's precision (measured
before and after).
Writes results/benchmarks/packed_training.json.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict

import polars as pl
import torch
from _common import body_params, environment, matmul_ceiling, print_table, write_record

from selfexplain.core.schema import read_examples
from selfexplain.core.settings import TrainConfig, TrainSettings
from selfexplain.data.draws import groups, training_rows
from selfexplain.models import load
from selfexplain.train.trainer import train_explainer


def whole_groups(examples, task: str, n_rows: int):
    """Rows of the pipeline's training draw (seed 0), whole groups in draw order, until at least
    n_rows."""
    settings = TrainSettings()
    draw, _ = training_rows(
        examples,
        task,
        "trained",
        0,
        n_train=settings.n_train,
        n_variant=None,
        val_fraction=settings.val_fraction,
    )
    keys = groups(draw, task)
    chosen: list[str] = []
    count = 0
    for key in dict.fromkeys(keys):  # first appearance order
        chosen.append(key)
        count += keys.count(key)
        if count >= n_rows:
            break
    keep = set(chosen)
    return draw.filter(pl.Series([k in keep for k in keys])), len(chosen), len(draw)


def answer_tokens(tokenizer, answers) -> int:
    """Labelled tokens of the rows (answer + EOS): where the trainer computes logits."""
    return sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers)


def train_once(model: str, rows, cfg: TrainConfig) -> dict:
    with tempfile.TemporaryDirectory(prefix="selfexplain-bench-") as tmp:
        summary = train_explainer(model, rows, f"{tmp}/adapter", cfg)
    return {
        "pack": cfg.pack,
        "precision": cfg.precision,
        "examples": summary["n_examples"],
        "sequences": summary["n_sequences"],
        "steps": summary["steps"],
        "seconds": summary["seconds"],
        "examples_per_s": summary["n_examples"] / summary["seconds"],
        "row_tokens": summary["n_tokens"],
        "tokens_computed": summary["n_tokens_computed"],
        "train_loss": summary["train_loss"],
    }


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resources/models/smollm2")
    ap.add_argument("--patching", default="results/labels/patching/smollm2.parquet")
    ap.add_argument("--ablation", default="results/labels/ablation/smollm2.parquet")
    ap.add_argument("--rows", type=int, default=96, help="rows per task (whole groups)")
    ap.add_argument("--packs", default="1,4,8", help="pack sizes to time (1 = unpacked)")
    ap.add_argument("--precisions", default="fp32", help="train.precision values to time")
    ap.add_argument("--matmul-size", type=int, default=2048)
    ap.add_argument("--matmul-repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/benchmarks/packed_training.json")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    packs = [int(p) for p in args.packs.split(",")]
    if 1 not in packs:
        packs = [1, *packs]
    precisions = args.precisions.split(",")
    if "fp32" not in precisions:
        precisions = ["fp32", *precisions]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    model, tokenizer = load(args.model)
    head = model.get_output_embeddings().weight.numel()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    body = body_params(model) - (0 if tied else head)
    del model
    ceiling = {}
    for prec in precisions:
        ceiling[prec] = [matmul_ceiling(args.matmul_size, args.matmul_repeats, dtype=dtypes[prec])]
    tasks = {}
    for task, path in (("patching", args.patching), ("ablation", args.ablation)):
        rows, n_groups, n_draw = whole_groups(read_examples(path), task, args.rows)
        labelled = answer_tokens(tokenizer, rows["answer"].to_list())
        cfg = TrainConfig(epochs=1, save_steps=10**9, seed=0)
        train_once(args.model, rows.head(cfg.batch_size), cfg)  # warm-up, untimed
        runs = []
        for prec in precisions:
            for p in packs:
                settings = asdict(cfg) | {"pack": p, "precision": prec}
                run = train_once(args.model, rows, TrainConfig(**settings))
                flop = 4 * body * run["tokens_computed"] + 4 * head * labelled
                run["executed_flops_per_s"] = flop / run["seconds"]
                runs.append(run)
                print(f"{task} pack {p} {prec}: {run['examples_per_s']:.2f} examples/s")
        base = runs[0]
        for run in runs:
            run["speedup"] = run["examples_per_s"] / base["examples_per_s"]
            run["token_ratio"] = run["tokens_computed"] / base["tokens_computed"]
        tasks[task] = {
            "labels": path,
            "groups": n_groups,
            "rows_per_group": len(rows) / n_groups,
            "draw_rows": n_draw,
            "answer_tokens": labelled,
            "runs": runs,
        }
    best = {}
    for prec in precisions:
        ceiling[prec].append(
            matmul_ceiling(args.matmul_size, args.matmul_repeats, dtype=dtypes[prec])
        )
        best[prec] = max(c["median_flops"] for c in ceiling[prec])
    for t in tasks.values():
        for run in t["runs"]:
            run["ratio_executed"] = run["executed_flops_per_s"] / best[run["precision"]]
    record = {
        "benchmark": "packed_training",
        "model": args.model,
        "rows": args.rows,
        "packs": packs,
        "precisions": precisions,
        "body_params": body,
        "head_params": head,
        "tasks": tasks,
        "matmul_ceiling_flops": best["fp32"],
        "matmul_ceilings": {
            prec: {"flops": best[prec], "runs": ceiling[prec]} for prec in precisions
        },
        **environment(args.threads),
    }
    write_record(args.out, record)
    print_table(
        [
            "task",
            "pack",
            "precision",
            "rows/group",
            "seqs",
            "tokens",
            "s",
            "ex/s",
            "speedup",
            "% ceiling",
        ],
        [
            [
                task,
                r["pack"],
                r["precision"],
                f"{t['rows_per_group']:.1f}",
                r["sequences"],
                r["tokens_computed"],
                f"{r['seconds']:.1f}",
                f"{r['examples_per_s']:.2f}",
                f"{r['speedup']:.2f}x",
                f"{100 * r['ratio_executed']:.0f}",
            ]
            for task, t in tasks.items()
            for r in t["runs"]
        ],
    )
    for prec in precisions:
        print(f"matmul ceiling ({args.matmul_size}^3 {prec}): {best[prec] / 1e9:.1f} GFLOP/s")
    return record


if __name__ == "__main__":
    main()
