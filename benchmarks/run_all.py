"""Run every benchmark script (one process each) and print one combined markdown table.

    python benchmarks/run_all.py                 # all four, default sizes, 2 threads
    python benchmarks/run_all.py --table-only    # just the table from the JSON files

Each script writes <dir>/<name>.json (default results/benchmarks/); the table is built from
those files, so --table-only reprints the table of the last runs. The training and generation
benchmarks need explainer examples: --labels (default: ablation labels of 30 generated prompts,
made with the pipeline's code into results/benchmarks/inputs/ when missing).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ("patching_labels", "ablation_labels", "train_throughput", "generation")
LINEAR_TOLERANCE = 0.15  # per-unit cost within +-15% of its mean across the 1x/2x/4x runs


def _yes(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def _linear(fit: dict | None) -> tuple[str, bool | None]:
    if not fit:
        return "not run", None
    ok = fit["per_unit_max_rel_dev"] <= LINEAR_TOLERANCE
    return f"R² {fit['r2']:.3f}, per-unit spread ±{100 * fit['per_unit_max_rel_dev']:.0f}%", ok


def rows(records: dict[str, dict]) -> list[list[str]]:
    """Table rows: hot path, work, fast path, reference, result, target, met, check."""
    out = []
    if r := records.get("patching_labels"):
        out.append(
            [
                "patching labels",
                f"{r['pairs']} pairs, {r['rows']} patched rows",
                f"batched {r['batched_s']:.1f} s",
                f"loop of single forwards {r['naive_s']:.1f} s",
                f"{r['speedup']:.1f}×",
                "faster, same labels",
                _yes(r["speedup"] > 1 and r["identical_labels"]),
                f"identical labels: {r['identical_labels']}, "
                f"max \\|Δp\\| {r['max_abs_prob_diff']:.1e}",
            ]
        )
        if r.get("scaling"):
            text, ok = _linear(r.get("scaling_fit"))
            scales = r["scaling"]
            out.append(
                [
                    "patching labels, scaling",
                    "/".join(str(s["pairs"]) for s in scales)
                    + " pairs ("
                    + "/".join(f"{s['scale']}×" for s in scales)
                    + ")",
                    "/".join(f"{s['seconds']:.1f}" for s in scales) + " s",
                    "—",
                    "/".join(f"{1e6 * s['s_per_token']:.0f}" for s in scales)
                    + " µs per patched token",
                    "linear",
                    _yes(ok),
                    text,
                ]
            )
    if r := records.get("ablation_labels"):
        ppe1 = r["seconds"].get("ppe1")
        ref = f"LLMAttribution {r['naive_s']:.1f} s"
        if ppe1 is not None:
            ref += f" (FeatureAblation, 1 per forward: {ppe1:.1f} s)"
        diff_ok = r["max_abs_score_diff"] <= 1e-5
        out.append(
            [
                "ablation labels",
                f"{r['prompts']} prompts ({len(r['kinds'])} kinds), {r['removals']} removals",
                f"batched {r['batched_s']:.1f} s",
                ref,
                f"{r['speedup']:.1f}×",
                "≥ 10×, \\|Δscore\\| ≤ 1e-5",
                f"{_yes(r['speedup'] >= 10)}, {_yes(diff_ok)}",
                "max \\|Δscore\\| (float32) "
                + ", ".join(f"{n} {d:.1e}" for n, d in r["max_abs_score_diff_by_path"].items()),
            ]
        )
    if r := records.get("train_throughput"):
        text, ok = _linear(r.get("scaling_fit_tokens"))
        runs = r["runs"]
        main = runs[-1]
        run_steps = "/".join(str(x["steps"]) for x in runs)
        run_secs = "/".join(f"{x['train_s']:.0f}" for x in runs)
        out.append(
            [
                "explainer training",
                f"{main['steps']} steps × batch {r['train_config']['batch_size']}, "
                f"{main['tokens']} tokens",
                f"{r['tokens_per_s']:.0f} tokens/s = {r['achieved_flops_6n'] / 1e9:.1f} GFLOP/s "
                f"(6N, N = {r['params'] / 1e6:.0f}M incl. frozen base)",
                f"fp32 matmul {r['matmul_before']['n']}³: "
                f"{r['matmul_ceiling_flops'] / 1e9:.1f} GFLOP/s",
                f"{100 * r['ratio_6n']:.0f}% of ceiling ({100 * r['ratio_4n']:.0f}% at 4N)",
                "≥ 50%",
                _yes(r["ratio_6n"] >= 0.5),
                f"{run_steps} steps: {run_secs} s; {text}",
            ]
        )
    if r := records.get("generation"):
        out.append(
            [
                "answer generation",
                f"{r['questions']} test questions, ≤ {r['max_new_tokens']} new tokens",
                f"batch {r['batch_size']}: {r['batched_s']:.1f} s",
                f"batch 1: {r['naive_s']:.1f} s",
                f"{r['speedup']:.1f}×",
                "≥ 4×, same answers",
                f"{_yes(r['speedup'] >= 4)}, {_yes(r['all_identical'])}",
                f"identical answers {r['identical_answers']}/{r['questions']}",
            ]
        )
    return out


INPUTS = Path("results/benchmarks/inputs")


def ensure_labels(path: str | Path, model: str, per_kind: int = 6) -> None:
    """Write ablation explainer examples for per_kind generated prompts of each kind to path
    (the pipeline's prompt generator and labeller), unless the file exists."""
    if Path(path).is_file():
        return
    from selfexplain.core.schema import to_frame, write_parquet
    from selfexplain.models import load
    from selfexplain.prompts import ablation_prompts
    from selfexplain.tasks.ablation import ablation_examples, ablation_labels

    m, tok = load(model)
    rows = ablation_labels(m, tok, ablation_prompts(n_per_kind=per_kind))
    write_parquet(to_frame(ablation_examples(rows, Path(model).name)), path)
    print(f"benchmark inputs: {len(rows)} ablation labels -> {path}")


HEADERS = ["hot path", "work", "fast path", "reference", "result", "target", "met", "check"]


def markdown_table(records: dict[str, dict]) -> str:
    """The combined markdown table (with a line naming the machine and date)."""
    lines = [
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
        *("| " + " | ".join(row) + " |" for row in rows(records)),
    ]
    any_rec = next(iter(records.values()), None)
    if any_rec:
        lines.append("")
        lines.append(
            f"{any_rec.get('host_cpu')}, {any_rec.get('threads')} threads, "
            f"torch {any_rec.get('torch')}, "
            + ", ".join(f"{n} {r.get('date')}" for n, r in records.items())
        )
    return "\n".join(lines)


def load_records(folder: str | Path, names=NAMES) -> dict[str, dict]:
    """The benchmark records found in folder, by name."""
    out = {}
    for name in names:
        path = Path(folder) / f"{name}.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())
    return out


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(NAMES), help="comma-separated benchmark names")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default="results/benchmarks", help="where the JSON files go")
    ap.add_argument("--table-only", action="store_true", help="do not run, just print")
    ap.add_argument("--model", default="resources/models/smollm2", help="target/explainer dir")
    ap.add_argument("--labels", default=str(INPUTS / "ablation_labels.parquet"))
    ap.add_argument("--adapter", default="none", help="LoRA adapter for generation, or none")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        ap.error(f"unknown benchmarks {unknown}; choose from {list(NAMES)}")
    if not args.table_only:
        if {"train_throughput", "generation"} & set(names):
            ensure_labels(args.labels, args.model)
        for name in names:
            cmd = [
                sys.executable,
                str(HERE / f"{name}.py"),
                "--model",
                args.model,
                "--threads",
                str(args.threads),
                "--out",
                str(Path(args.dir) / f"{name}.json"),
            ]
            if name in ("train_throughput", "generation"):
                cmd += ["--labels", args.labels]
            if name == "generation":
                cmd += ["--adapter", args.adapter]
            print(f"== {name} ({time.strftime('%H:%M:%S')}): {' '.join(cmd)}", flush=True)
            subprocess.run(cmd, check=True)
    table = markdown_table(load_records(args.dir, names))
    print(table)
    return table


if __name__ == "__main__":
    main()
