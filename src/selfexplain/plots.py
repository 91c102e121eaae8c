"""Tidy result tables (polars) and figures (matplotlib)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

from selfexplain.metrics import bootstrap_ci, change_metrics  # noqa: E402

GROUP = ["task", "target", "explainer", "relation", "variant", "n_train", "seed"]


def summarize(evals: Sequence[pl.DataFrame], *, n_boot: int = 1000, seed: int = 0) -> pl.DataFrame:
    """Long table: one row per (group, metric) with value, 95% bootstrap CI and n."""
    rows = []
    for df in evals:
        keys = {k: df[k][0] for k in GROUP}
        values = change_metrics(df)
        cis = bootstrap_ci(df, change_metrics, n_boot=n_boot, seed=seed)
        for metric, value in values.items():
            lo, hi = cis[metric]
            n = int(df["gold_changed"].sum()) if metric == "content_match" else len(df)
            rows.append(keys | {"metric": metric, "value": value, "ci_lo": lo, "ci_hi": hi, "n": n})
    return pl.DataFrame(rows).sort(GROUP + ["metric"])


def write_table(df: pl.DataFrame, parquet: str | Path, csv: str | Path) -> None:
    """Write the tidy table as parquet and CSV."""
    Path(parquet).parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(parquet)
    df.write_csv(csv)


def metric_bars(
    table: pl.DataFrame,
    path: str | Path,
    *,
    metrics: Sequence[str] = ("exact_match", "has_changed_f1", "content_match"),
    title: str = "",
) -> None:
    """Bar chart of metrics per (target, explainer, variant) with 95% CI error bars."""
    table = table.filter(pl.col("metric").is_in(list(metrics)))
    groups = table.select("target", "explainer", "variant").unique(maintain_order=True).rows()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, (target, explainer, variant) in enumerate(groups):
            sub = table.filter(
                (pl.col("metric") == metric)
                & (pl.col("target") == target)
                & (pl.col("explainer") == explainer)
                & (pl.col("variant") == variant)
            )
            if sub.is_empty():
                continue
            value = sub["value"].mean()
            lo, hi = sub["ci_lo"].mean(), sub["ci_hi"].mean()
            ax.bar(i, value, color=colors[i % len(colors)], label=f"{explainer}→{target} {variant}")
            ax.errorbar(i, value, yerr=[[value - lo], [hi - value]], color="black", capsize=4)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{e}→{t}\n{v}" for t, e, v in groups], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(metric)
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def eval_labels(task: str, target: str, explainer: str, variant: str, seed: int, n_train: int):
    """Identifying columns attached to every evaluation row."""
    return {
        "task": task,
        "target": target,
        "explainer": explainer,
        "relation": "self" if target == explainer else "other",
        "variant": variant,
        "seed": seed,
        "n_train": n_train,
    }


def read_json(path: str | Path) -> dict:
    """Read a small JSON file."""
    return json.loads(Path(path).read_text())
