"""One cell of the matrix end to end from its labels: train an explainer with the validation
curve, score it and the model-free baselines on the same test rows, compare them paired.

    python benchmarks/one_cell.py --task patching --labels results/labels/patching/smollm2.parquet \
        --model resources/models/smollm2 --out results/cells/patching_smollm2 --threads 1

Uses the pipeline's own functions (experiment.train_run / evaluate_run,
compare.paired_difference) with the train settings of config/config.yaml, overridable with
--set key=value (e.g. --set lr=0.002 --set epochs=3). --variant trains a control instead
(no_signal, prompt_only). Writes the adapter and one eval parquet per variant under --out,
and results/benchmarks/one_cell_<task>_<variant>_<out dir name>.json with the wall time of
each phase, the validation curve, the metrics of every variant and the paired differences
(trained - each baseline, clustered bootstrap 95% CIs). --compare DIR adds the eval file of
another run's variant (e.g. a no_signal cell) to the comparisons.
"""

from __future__ import annotations

import argparse
import time
import types
from pathlib import Path

import polars as pl
import torch
import yaml
from _common import environment, overrides, write_record

from selfexplain.core.schema import read_examples, write_parquet
from selfexplain.metrics import change_metrics, heatmap_agreement
from selfexplain.report.compare import paired_difference
from selfexplain.report.plots import in_sample
from selfexplain.run import evaluate_run, evaluation_rows, train_run

REPO = Path(__file__).resolve().parents[1]


def metrics(rows: pl.DataFrame) -> dict:
    """The change metrics of the scored rows, and the heatmap pairs' agreement (patching)."""
    return change_metrics(in_sample(rows)) | heatmap_agreement(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, choices=["ablation", "patching", "hint"])
    parser.add_argument("--labels", required=True)
    parser.add_argument("--model", required=True, help="explainer model directory")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--variant", default="trained", choices=["trained", "no_signal", "prompt_only"]
    )
    parser.add_argument("--baselines", default="surface,constant")
    parser.add_argument("--compare", action="append", default=[], help="VARIANT=EVAL_PARQUET")
    parser.add_argument("--set", action="append", default=[], help="train.KEY=VALUE override")
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (draw and init)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--record", default=None, help="JSON path (default: results/benchmarks/)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    settings = dict(config["train"])
    settings |= overrides(args.set)
    examples = read_examples(args.labels)
    n_test = len(evaluation_rows(examples, args.task, args.n_test))
    start = time.perf_counter()
    cell = types.SimpleNamespace(task=args.task, variant=args.variant, seed=args.seed)
    summary = train_run(
        examples,
        cell,
        model_dir=args.model,
        out_dir=out / "adapter",
        train_settings=settings,
        features={},
        checkpoint_dir=out / "checkpoints",
    )
    train_s = time.perf_counter() - start
    record = {
        "task": args.task,
        "labels": args.labels,
        "model": args.model,
        "variant": args.variant,
        "seed": args.seed,
        "settings": settings,
        "n_train": summary["n_examples"],
        "n_val": summary["n_validation"],
        "n_test": n_test,
        "train_seconds": train_s,
        "steps": summary["steps"],
        "best": summary["best"],
        "stopped_early": summary["stopped_early"],
        "validation": summary["validation"],
        "metrics": {},
        "eval_seconds": {},
        "distinct_answers": {},
    } | environment(args.threads)
    evals = {}
    for variant in [args.variant, *[b for b in args.baselines.split(",") if b]]:
        run = types.SimpleNamespace(
            task=args.task, target="target", explainer="explainer", variant=variant, seed=args.seed
        )
        t0 = time.perf_counter()
        rows = evaluate_run(
            examples,
            run,
            model_dir=args.model,
            adapter_dir=out / "adapter" if variant == args.variant else None,
            settings={"n_test": args.n_test, "max_new_tokens": 12, "batch_size": 16},
            train_settings=settings,
            features={},
            heatmap_pairs=config["patching"]["heatmap_pairs"] if args.task == "patching" else 0,
        )
        record["eval_seconds"][variant] = time.perf_counter() - t0
        write_parquet(rows, out / f"eval_{variant}.parquet")
        evals[variant] = rows
        record["metrics"][variant] = metrics(rows)
        record["distinct_answers"][variant] = in_sample(rows)["prediction"].n_unique()
        print(variant, record["metrics"][variant])
    for item in args.compare:
        variant, path = item.split("=", 1)
        evals[variant] = pl.read_parquet(path)
        record["metrics"][variant] = metrics(evals[variant])
    record["comparisons"] = {
        f"{args.variant} - {b}": paired_difference([evals[args.variant]], [evals[b]], args.task)
        for b in evals
        if b != args.variant
    }
    for name, rows in record["comparisons"].items():
        for r in rows:
            print(f"{name}: {r['metric']} {r['diff']:+.3f} [{r['ci_lo']:+.3f}, {r['ci_hi']:+.3f}]")
    record["total_seconds"] = time.perf_counter() - start
    name = f"one_cell_{args.task}_{args.variant}_{out.name}.json"
    print(write_record(args.record or REPO / "results/benchmarks" / name, record))
    return record


if __name__ == "__main__":
    main()
