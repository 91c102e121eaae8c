"""A small learning-rate sweep of one task's explainer, read on the validation split only.

    python benchmarks/sweep.py --task patching --labels results/labels/patching/smollm2.parquet \
        --model resources/models/smollm2 --lr 3e-4 1e-3 3e-3 --epochs 3 --n-train 400 --jobs 2

Each learning rate trains one explainer through the pipeline's own experiment.train_run (the
train settings of config/config.yaml, --set key=value over them), for --epochs epochs without
early stopping (patience 0), scoring the validation split every eval_steps steps. Because the
default learning-rate schedule is constant after warm-up, the curve of one run also answers
"how many epochs": the table reports the validation AUC and balanced accuracy at the end of
each epoch and at the best step. The test split is never looked at. Writes
results/benchmarks/sweep_<task>_<name>.json (every run's settings, curve, time) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
import types
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml
from _common import environment, overrides, write_record

REPO = Path(__file__).resolve().parents[1]


def train_one(task: str, labels: str, model: str, out: str, settings: dict, threads: int) -> dict:
    """One sweep point: train, return its summary's curve and time."""
    import torch

    from selfexplain.core.schema import read_examples
    from selfexplain.run import train_run

    torch.set_num_threads(threads)
    start = time.perf_counter()
    summary = train_run(
        read_examples(labels),
        types.SimpleNamespace(task=task, variant="trained", seed=0),
        model_dir=model,
        out_dir=Path(out) / "adapter",
        train_settings=settings,
        features={},
        checkpoint_dir=Path(out) / "checkpoints",
    )
    return {
        "settings": settings,
        "seconds": time.perf_counter() - start,
        "n_train": summary["n_examples"],
        "n_val": summary["n_validation"],
        "steps": summary["steps"],
        "validation": summary["validation"],
        "best": summary["best"],
    }


def at_epochs(run: dict, epochs: int) -> list[dict]:
    """The validation point at (or just before) the end of each epoch."""
    steps_per_epoch = run["steps"] / epochs
    curve = run["validation"]
    out = []
    for e in range(1, epochs + 1):
        before = [p for p in curve if p["step"] <= round(e * steps_per_epoch)]
        out.append(before[-1] if before else curve[0])
    return out


def table(runs: list[dict], epochs: int) -> str:
    head = ["lr", *[f"epoch {e} AUC / bal. acc." for e in range(1, epochs + 1)], "best", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        cells = [f"{run['settings']['lr']:g}"]
        for p in at_epochs(run, epochs):
            cells.append(f"{p['auc']:.3f} / {p['balanced_accuracy']:.3f} (step {p['step']})")
        best = max(run["validation"], key=lambda p: p["auc"])
        cells += [f"AUC {best['auc']:.3f} at step {best['step']}", f"{run['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, choices=["ablation", "patching", "hint"])
    parser.add_argument("--labels", required=True)
    parser.add_argument("--model", required=True, help="explainer model directory")
    parser.add_argument("--lr", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=None, help="training rows (null: all)")
    parser.add_argument("--set", action="append", default=[], help="train.KEY=VALUE override")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each)")
    parser.add_argument("--out", default="results/sweep", help="adapters go under OUT/<task>/")
    parser.add_argument("--name", default="default", help="record name suffix")
    parser.add_argument("--record", default=None, help="JSON path (default: results/benchmarks/)")
    args = parser.parse_args(argv)
    base = dict(yaml.safe_load((REPO / "config/config.yaml").read_text())["train"])
    base |= overrides(args.set)
    base |= {"epochs": args.epochs, "patience": 0, "n_train": args.n_train}
    points = [base | {"lr": lr} for lr in args.lr]
    outs = [str(Path(args.out) / args.task / f"lr{lr:g}") for lr in args.lr]
    # spawn: a forked child of a process that has run torch can deadlock in its thread pools
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        futures = [
            pool.submit(train_one, args.task, args.labels, args.model, out, s, 1)
            for out, s in zip(outs, points, strict=True)
        ]
        runs = [f.result() for f in futures]
    record = {
        "task": args.task,
        "labels": args.labels,
        "model": args.model,
        "epochs": args.epochs,
        "runs": runs,
        "table": table(runs, args.epochs),
    } | environment(1)
    name = f"sweep_{args.task}_{args.name}.json"
    write_record(args.record or REPO / "results/benchmarks" / name, record)
    print(record["table"])
    return record


if __name__ == "__main__":
    main()
