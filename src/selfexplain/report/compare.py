"""Paired comparisons of variants on the same test items, with bootstrap CIs clustered by
prompt / pair / question.

Every variant of a task is scored on the same test rows (run.evaluation_rows), so a
difference between two variants is measured item by item. The CI resamples whole clusters (the
questions of one prompt are not independent), recomputes each metric for both sides on the
resampled items and takes percentiles of the difference. With several seeds on a side, that
side's metric on a resample is the mean over its seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from selfexplain.core.registry import TRAINED, VARIANTS
from selfexplain.data.draws import groups
from selfexplain.metrics import auc

# metrics compared: change tasks (teacher-forced balanced accuracy and AUC, generated exact
# match) and features (per-item similarity and simulation)
CHANGE_METRICS = ("balanced_accuracy", "auc", "exact_match")
FEATURE_METRICS = ("similarity", "simulation")
COLUMNS = [
    "task",
    "target",
    "comparison",
    "a_explainer",
    "a_variant",
    "b_explainer",
    "b_variant",
    "metric",
    "a",
    "b",
    "diff",
    "ci_lo",
    "ci_hi",
    "n_items",
    "n_clusters",
    "a_seeds",
    "b_seeds",
]


def _arrays(df: pl.DataFrame, ids: Sequence[str], task: str) -> dict[str, np.ndarray]:
    """A run's per-item columns, in the order of ids."""
    df = df.filter(pl.col("id").is_in(list(ids))).unique("id", keep="first").sort("id")
    if task == "features":
        return {m: df[m].cast(pl.Float64).to_numpy() for m in FEATURE_METRICS if m in df.columns}
    out = {
        "gold": df["gold_changed"].to_numpy().astype(bool),
        "exact_match": df["exact_match"].to_numpy().astype(float),
    }
    if "tf_score" in df.columns and df["tf_score"].null_count() == 0:
        out["score"] = df["tf_score"].to_numpy().astype(float)
        cut = df["tf_threshold"].to_numpy() if "tf_threshold" in df.columns else 0.0
        out["pred"] = out["score"] > cut
    return out


def _metric(arr: dict[str, np.ndarray], metric: str, idx: np.ndarray) -> float:
    if metric in ("similarity", "simulation"):
        vals = arr[metric][idx]
        vals = vals[~np.isnan(vals)]
        return float(vals.mean()) if len(vals) else float("nan")
    if metric == "exact_match":
        return float(arr["exact_match"][idx].mean())
    if "score" not in arr:
        return float("nan")
    gold, score = arr["gold"][idx], arr["score"][idx]
    if metric == "auc":
        return auc(gold, score)
    pred = arr["pred"][idx]
    if gold.all() or (~gold).all():
        return float("nan")
    return float((pred[gold].mean() + (~pred[~gold]).mean()) / 2)


def _in_sample(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("in_sample")) if "in_sample" in df.columns else df


def _common_ids(runs: Sequence[pl.DataFrame]) -> list[str]:
    """The item ids every run has, sorted."""
    ids = set(runs[0]["id"].to_list())
    for d in runs:
        ids &= set(d["id"].to_list())
    return sorted(ids)


def _cluster_members(ref: pl.DataFrame, ids: list[str], task: str) -> list[np.ndarray]:
    """For each cluster (sorted by name), the indices into ids of its items."""
    ref = ref.filter(pl.col("id").is_in(ids)).unique("id", keep="first").sort("id")
    clusters = groups(ref, task)
    names = sorted(set(clusters))
    return [np.flatnonzero(np.array(clusters) == c) for c in names]


def _bootstrap_draws(members: list[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """n_boot resamples of the items, each a draw of whole clusters with replacement."""
    rng = np.random.default_rng(seed)
    n = len(members)
    return [np.concatenate([members[j] for j in rng.integers(0, n, n)]) for _ in range(n_boot)]


def _side(arrs: Sequence[dict], metric: str, idx: np.ndarray) -> float:
    """A side's metric on the items idx: the mean over its runs (seeds) that have a value."""
    vals = [v for v in (_metric(arr, metric, idx) for arr in arrs) if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _compare(a_arr, b_arr, metric: str, full, draws, level: float) -> dict | None:
    """metric, a, b, diff on full and its percentile CI over draws (None: a side has none)."""
    a_val, b_val = _side(a_arr, metric, full), _side(b_arr, metric, full)
    if np.isnan(a_val) or np.isnan(b_val):
        return None
    diffs = np.array([_side(a_arr, metric, idx) - _side(b_arr, metric, idx) for idx in draws])
    diffs = diffs[~np.isnan(diffs)]
    lo, hi = np.percentile(diffs, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return {
        "metric": metric,
        "a": a_val,
        "b": b_val,
        "diff": a_val - b_val,
        "ci_lo": float(lo),
        "ci_hi": float(hi),
    }


def paired_difference(
    a_runs: Sequence[pl.DataFrame],
    b_runs: Sequence[pl.DataFrame],
    task: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict]:
    """Metric of side a minus side b on their common test items, with a percentile CI from a
    bootstrap over clusters (group_of: prompt, pair, question, feature). One dict per metric:
    metric, a, b, diff, ci_lo, ci_hi, n_items, n_clusters."""
    a_runs = [_in_sample(d) for d in a_runs]
    b_runs = [_in_sample(d) for d in b_runs]
    ids = _common_ids([*a_runs, *b_runs])
    if not ids:
        return []
    members = _cluster_members(a_runs[0], ids, task)
    a_arr = [_arrays(d, ids, task) for d in a_runs]
    b_arr = [_arrays(d, ids, task) for d in b_runs]
    metrics = FEATURE_METRICS if task == "features" else CHANGE_METRICS
    draws = _bootstrap_draws(members, n_boot, seed)
    full = np.arange(len(ids))
    out = []
    for metric in metrics:
        if task == "features" and not all(metric in arr for arr in [*a_arr, *b_arr]):
            continue
        row = _compare(a_arr, b_arr, metric, full, draws, level)
        if row is not None:
            out.append(row | {"n_items": len(ids), "n_clusters": len(members)})
    return out


def baselines() -> list[str]:
    """What trained is compared with: the registered variants whose record says compared."""
    return [name for name, v in VARIANTS.items() if v.compared]


def comparisons(evals: Sequence[pl.DataFrame], *, n_boot: int = 1000) -> pl.DataFrame:
    """Every paired comparison the runs allow: trained - each baseline (same explainer), and
    self - other (trained, same target). Columns: COLUMNS."""
    runs: dict[tuple[str, str, str, str], list[pl.DataFrame]] = {}
    for df in evals:
        if df.is_empty():
            continue
        key = (df["task"][0], df["target"][0], df["explainer"][0], df["variant"][0])
        runs.setdefault(key, []).append(df)
    rows = []

    def add(task, target, name, a_key, b_key):
        a, b = runs[a_key], runs[b_key]
        for r in paired_difference(a, b, task, n_boot=n_boot):
            rows.append(
                {
                    "task": task,
                    "target": target,
                    "comparison": name,
                    "a_explainer": a_key[2],
                    "a_variant": a_key[3],
                    "b_explainer": b_key[2],
                    "b_variant": b_key[3],
                }
                | r
                | {
                    "a_seeds": ",".join(str(d["seed"][0]) for d in a),
                    "b_seeds": ",".join(str(d["seed"][0]) for d in b),
                }
            )

    for task, target, explainer, variant in sorted(runs):
        if variant != TRAINED:
            continue
        for baseline in baselines():
            if (task, target, explainer, baseline) in runs:
                add(
                    task,
                    target,
                    f"{TRAINED} - {baseline}",
                    (task, target, explainer, TRAINED),
                    (task, target, explainer, baseline),
                )
        if explainer == target:
            for other in sorted({k[2] for k in runs if k[:2] == (task, target)} - {target}):
                if (task, target, other, TRAINED) in runs:
                    add(
                        task,
                        target,
                        "self - other",
                        (task, target, explainer, TRAINED),
                        (task, target, other, TRAINED),
                    )
    schema = {c: pl.String for c in COLUMNS[:8]} | {
        c: pl.Float64 for c in ("a", "b", "diff", "ci_lo", "ci_hi")
    }
    schema |= {"n_items": pl.Int64, "n_clusters": pl.Int64, "a_seeds": pl.String}
    schema |= {"b_seeds": pl.String}
    return pl.DataFrame(rows, schema=schema).select(COLUMNS)
