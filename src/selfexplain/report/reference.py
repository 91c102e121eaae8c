"""A reference run: the small outputs of one pipeline run copied under
``results/reference/<name>/`` to be committed (the rest of ``results/`` stays ignored), so
what was measured survives a new machine and the results document can cite files.

Copied, with their paths under ``results/`` kept: tables (CSV and parquet), figures, every
per-question evaluation parquet, every train summary (with its validation curve), every job's
benchmark (its wall time, RSS, CPU time) and the prompt / pair files that made the labels;
never adapters, checkpoints, activations or models. A README names the commit the run was
made from, the command, and the job times per rule. Run it as the cells finish: it copies
what exists and can be re-run.

    python -m selfexplain.report.reference NAME --command "snakemake ..." [--results results]
        [--finished]  # a run in progress: tables of the cells finished so far
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from selfexplain.core.layout import RESULTS, SUMMARY_FILE, reference_dir
from selfexplain.core.schema import read_parquet
from selfexplain.report.compare import comparisons
from selfexplain.report.plots import privileged_access_figure, summarize, write_table
from selfexplain.report.tables import compute_table, read_benchmarks

# what a reference keeps, as globs under results/
KEPT = (
    "tables/*.csv",
    "tables/*.parquet",
    "figures/*.png",
    "eval/**/*.parquet",
    f"explainers/**/{SUMMARY_FILE}",
    "benchmarks/**/*.tsv",
    "prompts/*.jsonl",
    "features/*/sae_stats.json",
    "features/token_identity/**/*.json",
)
MAX_BYTES = 5_000_000  # a file larger than this is listed, not copied


def kept_files(results: Path) -> list[Path]:
    """The files of KEPT that exist under results, sorted, paths relative to results."""
    found = {p.relative_to(results) for pattern in KEPT for p in results.glob(pattern)}
    return sorted(p for p in found if (results / p).is_file())


def commit_of(path: Path) -> str:
    """The git commit checked out at path (with "+changes" when its tree differs)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    head = git("rev-parse", "--verify", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def job_times(files: list[Path], results: Path) -> str:
    """A markdown table of the job times per rule family (compute_table), or a note."""
    bench = [results / p for p in files if p.parts[0] == "benchmarks"]
    if not bench:
        return "No job finished yet.\n"
    table = compute_table(read_benchmarks(bench))
    lines = ["| rule | task | model | jobs | wall s total | wall s max | peak RSS MB |"]
    lines.append("|---|---|---|---:|---:|---:|---:|")
    for r in table.iter_rows(named=True):
        rss = f"{r['max_rss_mb']:.0f}" if r["max_rss_mb"] is not None else ""
        lines.append(
            f"| {r['rule']} | {r['task']} | {r['model']} | {r['jobs']} | "
            f"{r['wall_s_total']:.0f} | {r['wall_s_max']:.0f} | {rss} |"
        )
    total = float(table["wall_s_total"].sum())
    return "\n".join(lines) + f"\n\nSum of job wall times: {total / 3600:.2f} h.\n"


def finished_tables(results: Path, out: Path, n_boot: int = 1000) -> int:
    """For a run in progress: the metric table and the comparisons (and the privileged-access
    figure) of the evaluations finished so far, as out/tables/*_finished.{csv,parquet} and
    out/figures/privileged_access_finished.png (the pipeline's own tables need every cell).
    Returns how many evaluations they read."""
    evals = [read_parquet(p) for p in sorted((results / "eval").glob("**/*.parquet"))]
    evals = [e for e in evals if len(e)]
    if not evals:
        return 0
    tables = out / "tables"
    write_table(
        summarize(evals, n_boot=n_boot),
        *(tables / f"all_metrics_finished.{e}" for e in ("parquet", "csv")),
    )
    table = comparisons(evals, n_boot=n_boot)
    write_table(table, *(tables / f"comparisons_finished.{e}" for e in ("parquet", "csv")))
    privileged_access_figure(table, out / "figures" / "privileged_access_finished.png")
    return len(evals)


def write_reference(
    name: str, command: str, results: str | Path = RESULTS, out=None, *, finished: bool = False
) -> Path:
    """Copy the kept files of results into the reference directory of name (replacing what
    an earlier call copied) and write its README; finished: also the tables of the cells
    finished so far (finished_tables). Returns the directory."""
    results = Path(results)
    out = Path(out) if out is not None else Path(reference_dir(name))
    files = kept_files(results)
    if out.exists():
        shutil.rmtree(out)
    skipped = []
    for rel in files:
        if (results / rel).stat().st_size > MAX_BYTES:
            skipped.append(rel)
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(results / rel, out / rel)
    commit = commit_of(results.resolve().parent)
    n_evals = sum(1 for p in files if p.parts[0] == "eval")
    readme = [
        f"# Reference run: {name}",
        "",
        f"Made from commit `{commit}` with:",
        "",
        f"    {command}",
        "",
        f"Copied by `python -m selfexplain.report.reference` from `{results}/`: {len(files)}"
        f" files, {n_evals} per-question evaluations. Paths are those under `results/`.",
    ]
    if skipped:
        readme += ["", "Not copied (over 5 MB): " + ", ".join(f"`{p}`" for p in skipped)]
    if finished:
        n = finished_tables(results, out)
        readme += [
            "",
            f"A run in progress: `tables/*_finished.*` and `figures/privileged_access_finished.png`"
            f" are computed from the {n} evaluations finished when this was copied (the same"
            " functions as rules summarize and comparisons: clustered and hierarchical CIs).",
        ]
    readme += ["", "## Job times", "", job_times(files, results)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text("\n".join(readme))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m selfexplain.report.reference", description=__doc__)
    p.add_argument("name", help="the reference's name: results/reference/NAME")
    p.add_argument("--command", required=True, help="the command that made the run")
    p.add_argument("--results", default=RESULTS, help="the run's results directory")
    p.add_argument(
        "--finished",
        action="store_true",
        help="a run in progress: also compute the metric and comparison tables of the "
        "evaluations finished so far",
    )
    args = p.parse_args(argv)
    out = write_reference(args.name, args.command, args.results, finished=args.finished)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
