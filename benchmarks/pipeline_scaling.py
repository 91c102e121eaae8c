"""The pipeline's wall time at 1x, 2x and 4x the training rows: does its cost grow linearly?

    python benchmarks/pipeline_scaling.py                # config/quick.yaml at 16, 32, 64 pairs
    python benchmarks/pipeline_scaling.py --dry-run      # the planned jobs only

Runs the whole pipeline (``snakemake --profile profiles/default``, here on config/quick.yaml:
SmolLM2 explaining its own activation patching) once per --scales value s, with
``patching.max_pairs`` = --pairs x s (and --candidates-per-pair times as many generated pairs,
so that enough pairs survive the equal-length / different-output filter). Every run starts from
an empty results/ in its own work directory under --workdir, so each time covers model
conversion -> pairs -> labels -> training with the validation curve and early stopping ->
evaluation -> tables and figures. The rows then grow with the pairs, and everything the run
does with them is timed, early stopping included.

Afterwards it reads each run's per-job benchmark files (wall seconds per rule) and its
train_summary.json files (training rows, optimizer steps), and fits wall seconds against
training rows, for the whole run and for its phases (labels, training, evaluation, the rest).
"Linear" means a straight line with a fixed cost (start-up, model loading) as its intercept:
the record has each fit's slope (seconds per training row), intercept and R^2, and each run's
paired comparisons (results/tables/comparisons.csv: balanced accuracy, AUC), what its time
bought. Writes results/benchmarks/pipeline_scaling.json (pipeline_scaling_dry-run.json with
--dry-run).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import polars as pl
import torch
import yaml
from _common import (
    environment,
    linear_fit,
    link_workdir,
    parse_scales,
    print_table,
    run_workflow,
    write_record,
)

from selfexplain.report.tables import read_benchmarks

REPO = Path(__file__).resolve().parents[1]
PHASES = {
    "labels": ("make_pairs", "label_patching", "label_ablation", "label_hint", "make_prompts"),
    "training": ("train_explainer",),
    "evaluation": ("evaluate",),
}


def phase_seconds(workdir: Path) -> dict[str, float]:
    """Job wall seconds under workdir/results/benchmarks, summed per phase ("other": the rest)."""
    files = sorted((workdir / "results/benchmarks").rglob("*.tsv"))
    bench = read_benchmarks(files)
    out = dict.fromkeys([*PHASES, "other"], 0.0)
    for rule, seconds in zip(bench["rule"], bench["wall_s"], strict=True):
        phase = next((p for p, rules in PHASES.items() if rule in rules), "other")
        out[phase] += seconds
    return out


def training_runs(workdir: Path) -> list[dict]:
    """Rows, steps and seconds of every explainer trained under workdir."""
    runs = []
    for path in sorted(workdir.glob("results/explainers/*/*/*/*/s*/train_summary.json")):
        s = json.loads(path.read_text())
        runs.append(
            {
                "run": str(path.parent.relative_to(workdir / "results/explainers")),
                "n_train": s["n_examples"],
                "steps": s["steps"],
                "best_step": s["best"]["step"] if s.get("best") else None,
                "stopped_early": s.get("stopped_early"),
                "seconds": s["seconds"],
            }
        )
    return runs


def kept_pairs(workdir: Path) -> int | None:
    """Pairs in the run's patching labels (None if it has none)."""
    files = sorted((workdir / "results/labels/patching").glob("*.parquet"))
    if not files:
        return None
    return pl.read_parquet(files[0])["meta"].str.json_path_match("$.pair_id").n_unique()


def comparisons(workdir: Path) -> list[dict]:
    """The run's paired comparisons on balanced accuracy and AUC (what its time bought)."""
    path = workdir / "results/tables/comparisons.csv"
    if not path.exists():
        return []
    table = pl.read_csv(path).filter(pl.col("metric").is_in(["balanced_accuracy", "auc"]))
    keep = ["comparison", "metric", "a", "b", "diff", "ci_lo", "ci_hi", "n_items"]
    return table.select(keep).to_dicts()


def run_scale(args, scale: int) -> dict:
    """One pipeline run at scale x --pairs pairs, from an empty results directory."""
    pairs = args.pairs * scale
    workdir = Path(args.workdir) / f"p{pairs}"
    for stale in ("results", ".snakemake", "logs"):  # every run starts from nothing
        shutil.rmtree(workdir / stale, ignore_errors=True)
    link_workdir(workdir, REPO)
    scale_config = workdir / "scale.yaml"
    n_candidates = pairs * args.candidates_per_pair
    scale_config.write_text(
        yaml.safe_dump({"patching": {"max_pairs": pairs, "n_pairs": n_candidates}})
    )
    configfiles = [*args.configfile, scale_config]
    _, _, wall = run_workflow(REPO, workdir, configfiles, args.cores, args.dry_run)
    record = {"scale": scale, "pairs": pairs, "candidates": n_candidates, "wall_seconds": wall}
    if args.dry_run:
        return record
    runs = training_runs(workdir)
    return record | {
        "kept_pairs": kept_pairs(workdir),
        "n_train": sum(r["n_train"] for r in runs),
        "steps": sum(r["steps"] for r in runs),
        "training_runs": runs,
        "phase_seconds": phase_seconds(workdir),
        "comparisons": comparisons(workdir),
    }


def fits(runs: list[dict]) -> dict:
    """Seconds against training rows (whole run and each phase), and training seconds against
    optimizer steps."""
    rows = [r["n_train"] for r in runs]
    out = {"wall_seconds": linear_fit(rows, [r["wall_seconds"] for r in runs])}
    for phase in [*PHASES, "other"]:
        out[phase] = linear_fit(rows, [r["phase_seconds"][phase] for r in runs])
    out["training_per_step"] = linear_fit(
        [r["steps"] for r in runs], [r["phase_seconds"]["training"] for r in runs]
    )
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configfile", nargs="+", default=[REPO / "config/quick.yaml"], type=Path,
        help="config files merged over config/config.yaml (default: config/quick.yaml)",
    )  # fmt: skip
    parser.add_argument("--pairs", type=int, default=16, help="kept pairs at scale 1")
    parser.add_argument("--scales", default="1,2,4")
    parser.add_argument("--candidates-per-pair", type=int, default=8)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", default=str(REPO / "results/pipeline_scaling"))
    parser.add_argument("--dry-run", action="store_true", help="plan only")
    parser.add_argument("--out", default=str(REPO / "results/benchmarks"))
    args = parser.parse_args(argv)
    scales = parse_scales(args.scales)
    runs = [run_scale(args, s) for s in scales]
    record = {
        "configfiles": [str(p) for p in args.configfile],
        "cores": args.cores,
        "dry_run": args.dry_run,
        "runs": runs,
    } | environment(torch.get_num_threads())
    name = "pipeline_scaling_dry-run.json" if args.dry_run else "pipeline_scaling.json"
    if not args.dry_run:
        record["fits"] = fits(runs)
        head = ["pairs", "kept", "training rows", "steps", "wall s", "labels s", "training s"]
        print_table(
            [*head, "evaluation s", "other s"],
            [
                [r["pairs"], r["kept_pairs"], r["n_train"], r["steps"], f"{r['wall_seconds']:.0f}"]
                + [f"{r['phase_seconds'][p]:.0f}" for p in [*PHASES, "other"]]
                for r in runs
            ],
        )
        for key, fit in record["fits"].items():
            print(
                f"{key}: {fit['slope']:.3f} s per unit + {fit['intercept']:.0f} s, "
                f"R^2 {fit['r2']:.3f}"
            )
    print(write_record(Path(args.out) / name, record))
    return record


if __name__ == "__main__":
    main()
