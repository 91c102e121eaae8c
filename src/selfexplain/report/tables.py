"""Tables of the experiment matrix: the seed summary (mean and 95% CI) and the compute table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from selfexplain.core.layout import parse_benchmark

# the tidy table's columns (one row per run and metric), in order
TIDY = ["task", "target", "explainer", "relation", "variant", "n_train", "seed", "metric", "value"]
SUMMARY_KEYS = ["task", "target", "explainer", "relation", "variant", "n_train", "metric"]

# two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30
_T975 = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
]  # fmt: skip


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: table up to 30, then the Cornish-Fisher expansion around z (error < 1e-4)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t confidence interval of the mean (at least two values)."""
    n = len(values)
    if n < 2:
        raise ValueError("a CI over seeds needs at least two values")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def seed_summary(table: pl.DataFrame) -> pl.DataFrame:
    """Mean over seeds and 95% CI per (task, target, explainer, variant, n_train, metric).

    ci = "seeds": Student-t interval over the per-seed values (two or more seeds);
    ci = "bootstrap": one seed, the run's percentile bootstrap over test examples
    (the table's ci_lo / ci_hi). n: test examples behind each seed's value (the smallest).
    """
    rows = []
    for keys, sub in table.group_by(SUMMARY_KEYS, maintain_order=True):
        sub = sub.sort("seed")
        vals = [v for v in sub["value"].to_list() if _finite(v)]
        row = dict(zip(SUMMARY_KEYS, keys, strict=True))
        row |= {"n_seeds": len(vals), "seeds": ",".join(str(s) for s in sub["seed"].to_list())}
        row["n"] = int(sub["n"].min()) if "n" in sub.columns else None
        if len(vals) >= 2:
            mean, lo, hi = mean_ci(vals)
            row |= {"mean": mean, "ci_lo": lo, "ci_hi": hi, "ci": "seeds"}
        elif len(vals) == 1:
            one = sub.filter(pl.col("value").is_not_null() & pl.col("value").is_not_nan())
            row |= {"mean": vals[0], "ci_lo": one["ci_lo"][0], "ci_hi": one["ci_hi"][0]}
            row["ci"] = "bootstrap"
        else:
            row |= {"mean": None, "ci_lo": None, "ci_hi": None, "ci": "none"}
        rows.append(row)
    schema = {k: table.schema[k] for k in SUMMARY_KEYS} | {
        "n_seeds": pl.Int64,
        "seeds": pl.String,
        "n": pl.Int64,
        "mean": pl.Float64,
        "ci_lo": pl.Float64,
        "ci_hi": pl.Float64,
        "ci": pl.String,
    }
    return pl.DataFrame(rows, schema=schema).sort(SUMMARY_KEYS)


# -------------------------------------------------------------------------- compute table


def read_benchmarks(paths: Sequence[str | Path]) -> pl.DataFrame:
    """One row per benchmark file: rule, task, model, variant, wall s, max RSS MB, CPU s."""
    rows = []
    for path in paths:
        bench = pl.read_csv(path, separator="\t", null_values=["-", "NA"])
        rec = {"variant": ""} | parse_benchmark(path)  # rule, task, model from the path
        for r in bench.iter_rows(named=True):  # one row per repeat (usually one)
            rss = r.get("max_rss")
            cpu = r.get("cpu_time")
            rows.append(
                rec
                | {
                    "wall_s": float(r["s"]),
                    "max_rss_mb": float(rss) if rss is not None else None,
                    "cpu_s": float(cpu) if cpu is not None else None,
                }
            )
    return pl.DataFrame(
        rows,
        schema={
            "rule": pl.String,
            "task": pl.String,
            "model": pl.String,
            "variant": pl.String,
            "wall_s": pl.Float64,
            "max_rss_mb": pl.Float64,
            "cpu_s": pl.Float64,
        },
    )


def compute_table(bench: pl.DataFrame) -> pl.DataFrame:
    """Per rule family (rule, task, model): jobs, total / mean / max wall s, peak RSS MB."""
    return (
        bench.group_by(["rule", "task", "model"])
        .agg(
            pl.len().alias("jobs"),
            pl.col("wall_s").sum().alias("wall_s_total"),
            pl.col("wall_s").mean().alias("wall_s_mean"),
            pl.col("wall_s").max().alias("wall_s_max"),
            pl.col("max_rss_mb").max().alias("max_rss_mb"),
        )
        .sort(["rule", "task", "model"])
    )
