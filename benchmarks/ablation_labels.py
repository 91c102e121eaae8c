"""Ablation labels: all single-token removals of a prompt in batched forwards vs Captum's
default loop of one forward per removed token, same run, same scores.

    python benchmarks/ablation_labels.py --model resources/models/smollm2 --per-kind 2

Paths, per prompt (the clean next token y0 is computed once, outside the timings):

- batched: ``removal_scores`` (Captum FeatureAblation over ``RemovalForward``, up to
  --batch-size removals per Captum call, ``perturbations_per_eval``; each removal is computed
  from the removed position on, over the clean prompt's cached keys and values, with nearby
  removals sharing a forward: the pipeline's path);
- llm_attribution: ``llm_attribution_scores`` (Captum ``LLMAttribution(FeatureAblation)``,
  Captum's default: one full forward per removed token);
- ppe1 (unless --no-ppe1): the batched path's forward with ``perturbations_per_eval=1``, i.e.
  the same code (prefix reuse included) with one removal per forward: what batching adds.

The paths are interleaved prompt by prompt so that background load hits them alike. Scores are
compared in float32: max |difference| of the batched scores from each other path's (the
headline max_abs_score_diff is the one from LLMAttribution, the reference).
Writes results/benchmarks/ablation_labels.json.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from _common import environment, print_table, timed, write_record

from selfexplain.forward import next_token_logprobs
from selfexplain.models import load
from selfexplain.prompts import KINDS, ablation_prompts
from selfexplain.tasks.ablation import (
    RemovalForward,
    ablatable_positions,
    encode,
    greedy_content_tokens,
    llm_attribution_scores,
    removal_scores,
)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resources/models/smollm2")
    ap.add_argument("--per-kind", type=int, default=2, help="prompts per kind")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated prompt kinds")
    ap.add_argument("--seed", type=int, default=0, help="prompt generator seed")
    ap.add_argument("--batch-size", type=int, default=32, help="removals per batched forward")
    ap.add_argument("--no-ppe1", action="store_true", help="skip the perturbations_per_eval=1 path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/benchmarks/ablation_labels.json")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # Captum warns while pretty-printing byte-level output tokens (after scoring); not timing.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
    model, tok = load(args.model)
    kinds = [k for k in args.kinds.split(",") if k]
    prompts = ablation_prompts(args.per_kind, seed=args.seed, kinds=kinds)
    pad = tok.pad_token_id

    def batched(ids, positions, y0, text):
        return removal_scores(RemovalForward(model, ids, positions), y0, batch_size=args.batch_size)

    def llm_attribution(ids, positions, y0, text):
        return llm_attribution_scores(model, tok, text, y0)

    def ppe1(ids, positions, y0, text):
        return removal_scores(RemovalForward(model, ids, positions), y0, batch_size=1)

    paths = {"batched": batched, "llm_attribution": llm_attribution}
    if not args.no_ppe1:
        paths["ppe1"] = ppe1
    cases = []
    for p in prompts:
        ids = encode(tok, p.text)
        positions = ablatable_positions(tok, ids)
        y0 = greedy_content_tokens(next_token_logprobs(model, [ids], pad), tok)[0]
        cases.append((p, ids, positions, y0))
    for fn in paths.values():  # warm-up on the first prompt
        fn(cases[0][1], cases[0][2], cases[0][3], cases[0][0].text)

    per_prompt = []
    totals = dict.fromkeys(paths, 0.0)
    max_diff = dict.fromkeys([k for k in paths if k != "batched"], 0.0)
    for p, ids, positions, y0 in cases:
        scores, seconds = {}, {}
        for name, fn in paths.items():
            call = (ids, positions, y0, p.text)
            out, seconds[name] = timed(lambda fn=fn, call=call: fn(*call))
            scores[name] = out.to(torch.float32).flatten()
            totals[name] += seconds[name]
        diffs = {}
        for name in max_diff:
            if scores[name].shape != scores["batched"].shape:
                raise RuntimeError(f"{p.id}: {name} gave {scores[name].shape} scores")
            diffs[name] = float((scores[name] - scores["batched"]).abs().max())
            max_diff[name] = max(max_diff[name], diffs[name])
        per_prompt.append(
            {
                "id": p.id,
                "kind": p.kind,
                "tokens": len(ids),
                "removals": len(positions),
                "seconds": seconds,
                "max_abs_diff": diffs,
            }
        )
    removals = sum(r["removals"] for r in per_prompt)
    # tokens fed to the model: the clean prompt once plus each removal's n-1 tokens
    tokens = sum(r["tokens"] + r["removals"] * (r["tokens"] - 1) for r in per_prompt)
    by_kind = {}
    for kind in kinds:
        rows = [r for r in per_prompt if r["kind"] == kind]
        by_kind[kind] = {
            "prompts": len(rows),
            "mean_tokens": sum(r["tokens"] for r in rows) / max(len(rows), 1),
            "seconds": {n: sum(r["seconds"][n] for r in rows) for n in paths},
        }
        base = by_kind[kind]["seconds"]["batched"]
        by_kind[kind]["speedup_vs_llm_attribution"] = (
            base and by_kind[kind]["seconds"]["llm_attribution"] / base
        )
    record = {
        "benchmark": "ablation_labels",
        "model": args.model,
        "prompts": len(per_prompt),
        "kinds": kinds,
        "per_kind": args.per_kind,
        "removals": removals,
        "tokens_processed": tokens,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "seconds": totals,
        "batched_s": totals["batched"],
        "naive_s": totals["llm_attribution"],
        "speedup": totals["llm_attribution"] / totals["batched"],
        "speedup_vs_ppe1": totals["ppe1"] / totals["batched"] if "ppe1" in totals else None,
        # vs the reference (Captum's LLMAttribution); each path's value below
        "max_abs_score_diff": max_diff["llm_attribution"],
        "max_abs_score_diff_by_path": max_diff,
        "scores_match_1e-5": max_diff["llm_attribution"] <= 1e-5,
        "by_kind": by_kind,
        "per_prompt": per_prompt,
        **environment(args.threads),
    }
    write_record(args.out, record)
    print_table(
        ["path", "prompts", "removals", "seconds", "removals/s", "speedup of batched"],
        [
            [
                name,
                len(per_prompt),
                removals,
                f"{t:.2f}",
                f"{removals / t:.1f}",
                f"{t / totals['batched']:.1f}x",
            ]
            for name, t in totals.items()
        ],
    )
    print_table(
        ["kind", "prompts", "mean tokens", "batched s", "llm_attribution s", "speedup"],
        [
            [
                kind,
                v["prompts"],
                f"{v['mean_tokens']:.1f}",
                f"{v['seconds']['batched']:.2f}",
                f"{v['seconds']['llm_attribution']:.2f}",
                f"{v['speedup_vs_llm_attribution']:.1f}x",
            ]
            for kind, v in by_kind.items()
        ],
    )
    print(
        f"speedup vs LLMAttribution {record['speedup']:.1f}x, "
        "max |score diff| vs batched: "
        + ", ".join(f"{name} {d:.2e}" for name, d in max_diff.items())
    )
    return record


if __name__ == "__main__":
    main()
