"""Patching labels: batched forwards vs a naive loop of single patched forwards, same run.

    python benchmarks/patching_labels.py --model resources/models/smollm2 --pairs 3

Writes results/benchmarks/patching_labels.json and prints a table. Both paths produce the same
labels (checked here too); the naive path runs one forward per (layer window, position).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from selfexplain.models import decoder_layers, load
from selfexplain.prompts import counterfactual_pairs
from selfexplain.tasks.patching import filter_pairs, naive_patching_rows, patching_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resources/models/smollm2")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--layer-stride", type=int, default=4)
    ap.add_argument("--max-positions", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/benchmarks/patching_labels.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load(args.model)
    pairs = filter_pairs(model, tok, counterfactual_pairs(200, formats=("mcq", "cloze")))[
        : args.pairs
    ]
    n_layers = len(decoder_layers(model))
    starts = list(range(0, n_layers - args.window + 1, args.layer_stride))
    kw = {"window": args.window, "layer_starts": starts, "max_positions": args.max_positions}
    patching_rows(model, tok, *pairs[0], **kw, batch_size=args.batch_size)  # warm-up
    timings = {}
    results = {}
    for name, fn in (
        ("batched", lambda p: patching_rows(model, tok, *p, **kw, batch_size=args.batch_size)),
        ("naive", lambda p: naive_patching_rows(model, tok, *p, **kw)),
    ):
        start = time.perf_counter()
        results[name] = [row for pair in pairs for row in fn(pair)]
        timings[name] = time.perf_counter() - start
    same = [a["new_token_id"] for a in results["batched"]] == [
        b["new_token_id"] for b in results["naive"]
    ]
    max_dp = max(
        abs(a["p_orig"] - b["p_orig"])
        for a, b in zip(results["batched"], results["naive"], strict=True)
    )
    record = {
        "model": args.model,
        "pairs": len(pairs),
        "rows": len(results["batched"]),
        "window": args.window,
        "layer_starts": starts,
        "max_positions": args.max_positions,
        "threads": args.threads,
        "batched_s": timings["batched"],
        "naive_s": timings["naive"],
        "speedup": timings["naive"] / timings["batched"],
        "identical_labels": same,
        "max_abs_prob_diff": max_dp,
        "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"{'path':<10}{'seconds':>10}{'rows/s':>10}")
    for name in ("batched", "naive"):
        print(f"{name:<10}{timings[name]:>10.2f}{record['rows'] / timings[name]:>10.1f}")
    print(f"speedup {record['speedup']:.1f}x, identical labels: {same}, max |dp| {max_dp:.2e}")


if __name__ == "__main__":
    main()
