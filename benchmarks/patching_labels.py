"""Patching labels: batched forwards vs a naive loop of single patched forwards, same run.

    python benchmarks/patching_labels.py --model resources/models/smollm2 --pairs 3

Writes results/benchmarks/patching_labels.json and prints a table. Both paths produce the same
labels (checked here too). The naive path runs one full forward of the clean prompt per (layer
window, position); the batched path is the pipeline's ``patching_rows``: rows patched at nearby
positions share a forward that starts at their earliest patched position, over the clean run's
cached keys and values (a patch changes nothing before its position).
With --scales (default 1,2,4) the batched path also runs on 1x, 2x, 4x the pairs (drawn from
one length-sorted pool so that each set mixes prompt lengths alike); the seconds per patched
token (rows x prompt length) show whether time grows linearly with the work.
"""

from __future__ import annotations

import argparse

import torch
from _common import environment, linear_fit, parse_scales, print_table, timed, write_record

from selfexplain.models import decoder_layers, load
from selfexplain.prompts import counterfactual_pairs
from selfexplain.tasks.ablation import encode
from selfexplain.tasks.patching import filter_pairs, naive_patching_rows, patching_rows


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resources/models/smollm2")
    ap.add_argument("--pairs", type=int, default=3, help="pairs timed on both paths")
    ap.add_argument("--candidates", type=int, default=200, help="generated pairs to filter")
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--layer-stride", type=int, default=4)
    ap.add_argument("--max-positions", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--scales", default="1,2,4", help="batched-path scaling runs, in multiples of --pairs"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/benchmarks/patching_labels.json")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    scales = parse_scales(args.scales)
    model, tok = load(args.model)
    candidates = counterfactual_pairs(args.candidates, formats=("mcq", "cloze"))
    usable = filter_pairs(model, tok, candidates)
    need = args.pairs * max([1, *scales])
    if len(usable) < need:
        raise SystemExit(
            f"only {len(usable)} of {args.candidates} candidate pairs are usable, {need} needed: "
            "raise --candidates or lower --pairs/--scales"
        )
    # The 1x/2x/4x sets are every 4th, every 2nd and every pair of one length-sorted pool, so
    # they mix short and long prompts alike and differ only in how much work they are; the 1x
    # set is also the one timed on both paths.
    top = max([1, *scales])
    pool = sorted(usable[: args.pairs * top], key=lambda p: len(encode(tok, p[0].text)))
    pairs = pool[::top]
    n_layers = len(decoder_layers(model))
    window = min(args.window, n_layers)
    starts = list(range(0, n_layers - window + 1, args.layer_stride))
    kw = {"window": window, "layer_starts": starts, "max_positions": args.max_positions}

    def batched_per_pair(ps):
        return [patching_rows(model, tok, *p, **kw, batch_size=args.batch_size) for p in ps]

    def batched(ps):
        return [r for rows in batched_per_pair(ps) for r in rows]

    def naive(ps):
        return [r for p in ps for r in naive_patching_rows(model, tok, *p, **kw)]

    batched(pairs[:1])  # warm-up
    results, timings = {}, {}
    for name, fn in (("batched", batched), ("naive", naive)):
        results[name], timings[name] = timed(lambda fn=fn: fn(pairs))
    same = [a["new_token_id"] for a in results["batched"]] == [
        b["new_token_id"] for b in results["naive"]
    ]
    max_dp = max(
        abs(a["p_orig"] - b["p_orig"])
        for a, b in zip(results["batched"], results["naive"], strict=True)
    )
    n_rows = len(results["batched"])
    scaling = []
    for scale in scales:
        subset = pool[:: top // scale] if top % scale == 0 else pool[: args.pairs * scale]
        per_pair, seconds = timed(lambda subset=subset: batched_per_pair(subset))
        # Pairs differ in length (cloze ~8 tokens, mcq ~50), so the work of a run is its
        # patched tokens: rows x prompt length, summed over pairs.
        lengths = [len(encode(tok, clean.text)) for clean, _ in subset]
        tokens = sum(len(r) * n for r, n in zip(per_pair, lengths, strict=True))
        n = sum(len(rows) for rows in per_pair)
        scaling.append(
            {
                "scale": scale,
                "pairs": len(subset),
                "rows": n,
                "patched_tokens": tokens,
                "seconds": seconds,
                "s_per_row": seconds / n,
                "s_per_token": seconds / tokens,
            }
        )
    record = {
        "benchmark": "patching_labels",
        "model": args.model,
        "pairs": len(pairs),
        "prompt_tokens": [len(encode(tok, c.text)) for c, _ in pairs],
        "rows": n_rows,
        "window": window,
        "layer_starts": starts,
        "max_positions": args.max_positions,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "batched_s": timings["batched"],
        "naive_s": timings["naive"],
        "speedup": timings["naive"] / timings["batched"],
        "identical_labels": same,
        "max_abs_prob_diff": max_dp,
        "scaling": scaling,
        "scaling_unit": "patched tokens (rows x prompt length)",
        "scaling_fit": (
            linear_fit([s["patched_tokens"] for s in scaling], [s["seconds"] for s in scaling])
            if len(scaling) > 1
            else None
        ),
        **environment(args.threads),
    }
    write_record(args.out, record)
    print_table(
        ["path", "pairs", "rows", "seconds", "rows/s", "ms/row", "us/token"],
        [
            [
                name,
                len(pairs),
                n_rows,
                f"{t:.2f}",
                f"{n_rows / t:.1f}",
                f"{1e3 * t / n_rows:.1f}",
                "",
            ]
            for name, t in timings.items()
        ]
        + [
            [
                f"batched {s['scale']}x",
                s["pairs"],
                s["rows"],
                f"{s['seconds']:.2f}",
                f"{s['rows'] / s['seconds']:.1f}",
                f"{1e3 * s['s_per_row']:.1f}",
                f"{1e6 * s['s_per_token']:.0f}",
            ]
            for s in scaling
        ],
    )
    print(f"speedup {record['speedup']:.1f}x, identical labels: {same}, max |dp| {max_dp:.2e}")
    return record


if __name__ == "__main__":
    main()
