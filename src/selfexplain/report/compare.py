"""Paired comparisons of variants on the same test items, with bootstrap CIs clustered by
prompt / pair / question.

Every variant of a task is scored on the same test rows (run.evaluation_rows), so a
difference between two variants is measured item by item. The CI resamples whole clusters (the
questions of one prompt are not independent), recomputes each metric for both sides on the
resampled items and takes percentiles of the difference. The bootstrap is hierarchical: each
resample first draws each side's seeds with replacement, and a side's value is the mean over
the drawn seeds (contrasts). Privileged access is read per target (self - other) and as the
explainer x target interaction (interaction), which cancels explainer capacity.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from selfexplain.core.registry import TRAINED, VARIANTS
from selfexplain.data.draws import groups
from selfexplain.metrics import (
    auc,
    class_weights,
    cluster_members,
    cluster_resamples,
    natural_rate,
    weighted_macro_f1,
)

# metrics compared: change tasks (teacher-forced balanced accuracy and AUC, generated exact
# match) and features (per-item similarity and simulation)
CHANGE_METRICS = (
    "balanced_accuracy",
    "auc",
    "exact_match",
    "exact_match_natural",
    "has_changed_f1_natural",
)
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
    "a_seed_sd",
    "b_seed_sd",
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
        "answered": df["pred_changed"].to_list() if "pred_changed" in df.columns else None,
        "rate": natural_rate(df),
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
    if metric.endswith("_natural"):  # the paper's metrics, reweighted to the natural rate
        if arr["rate"] is None or arr["answered"] is None:
            return float("nan")
        w = class_weights(arr["gold"][idx], arr["rate"])
        if metric == "exact_match_natural":
            return float((w * arr["exact_match"][idx]).sum() / w.sum())
        return weighted_macro_f1(arr["gold"][idx], [arr["answered"][i] for i in idx], w)
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
    return cluster_members(groups(ref, task))


def _per_seed(arrs: Sequence[dict], metric: str, draws: Sequence[np.ndarray]) -> np.ndarray:
    """The metric of each run (seed) on each resample of the items: (n_seeds, n_boot)."""
    return np.array([[_metric(arr, metric, idx) for idx in draws] for arr in arrs])


def _seed_draws(n_seeds: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_seeds) seed indices drawn with replacement (the outer level of the
    hierarchical bootstrap); one seed: always that seed."""
    return rng.integers(0, n_seeds, size=(n_boot, n_seeds))


def _side_draws(values: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """A side's metric per resample: the mean over the drawn seeds of their value on it."""
    picked = np.take_along_axis(values.T, seeds, axis=1)  # (n_boot, n_seeds drawn)
    with warnings.catch_warnings():  # a resample where no drawn seed has a value: nan
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(picked, axis=1)


def _on_all_items(arrs: Sequence[dict], metric: str, full: np.ndarray) -> tuple[float, float]:
    """A side's metric on every item, the mean over its seeds that have a value, and its
    standard deviation over them (nan with one seed)."""
    vals = [v for v in (_metric(arr, metric, full) for arr in arrs) if not np.isnan(v)]
    mean = float(np.mean(vals)) if vals else float("nan")
    return mean, float(np.std(vals, ddof=1)) if len(vals) >= 2 else float("nan")


@dataclass(frozen=True)
class Contrast:
    """One side a minus side b on their common items: the point values and the difference on
    every hierarchical-bootstrap resample (seeds, then clusters)."""

    metric: str
    a: float
    b: float
    draws: np.ndarray
    n_items: int
    n_clusters: int
    a_seed_sd: float
    b_seed_sd: float

    @property
    def diff(self) -> float:
        return self.a - self.b


def _seeds_of(runs: Sequence[pl.DataFrame]) -> list:
    return [d["seed"][0] if "seed" in d.columns and len(d) else None for d in runs]


def contrasts(
    a_runs: Sequence[pl.DataFrame],
    b_runs: Sequence[pl.DataFrame],
    task: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[Contrast]:
    """Side a minus side b per metric, by a hierarchical bootstrap: each resample draws each
    side's seeds with replacement (jointly when both sides have the same seeds: a control and
    the trained variant of one seed share its training draw) and whole test clusters with
    replacement (group_of: prompt, pair, question, feature); a side's value on a resample is
    the mean over its drawn seeds. With one seed a side this is the cluster bootstrap."""
    a_runs = [_in_sample(d) for d in a_runs]
    b_runs = [_in_sample(d) for d in b_runs]
    ids = _common_ids([*a_runs, *b_runs])
    if not ids:
        return []
    members = _cluster_members(a_runs[0], ids, task)
    a_arr = [_arrays(d, ids, task) for d in a_runs]
    b_arr = [_arrays(d, ids, task) for d in b_runs]
    draws = cluster_resamples(members, n_boot, seed)
    rng = np.random.default_rng([seed, 1])  # seeds: a stream of their own
    a_seeds = _seed_draws(len(a_arr), n_boot, rng)
    paired = _seeds_of(a_runs) == _seeds_of(b_runs)
    b_seeds = a_seeds if paired else _seed_draws(len(b_arr), n_boot, rng)
    full = np.arange(len(ids))
    out = []
    for metric in FEATURE_METRICS if task == "features" else CHANGE_METRICS:
        if task == "features" and not all(metric in arr for arr in [*a_arr, *b_arr]):
            continue
        (a_val, a_sd), (b_val, b_sd) = (_on_all_items(x, metric, full) for x in (a_arr, b_arr))
        if np.isnan(a_val) or np.isnan(b_val):
            continue
        diffs = _side_draws(_per_seed(a_arr, metric, draws), a_seeds) - _side_draws(
            _per_seed(b_arr, metric, draws), b_seeds
        )
        out.append(Contrast(metric, a_val, b_val, diffs, len(ids), len(members), a_sd, b_sd))
    return out


def percentile_ci(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the bootstrap draws (nan draws left out)."""
    draws = draws[~np.isnan(draws)]
    if not len(draws):
        return float("nan"), float("nan")
    lo, hi = np.percentile(draws, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


def _row(c: Contrast, level: float) -> dict:
    lo, hi = percentile_ci(c.draws, level)
    return {
        "metric": c.metric,
        "a": c.a,
        "b": c.b,
        "diff": c.diff,
        "ci_lo": lo,
        "ci_hi": hi,
        "n_items": c.n_items,
        "n_clusters": c.n_clusters,
        "a_seed_sd": c.a_seed_sd,
        "b_seed_sd": c.b_seed_sd,
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
    """Metric of side a minus side b on their common test items, with a percentile CI from the
    hierarchical bootstrap of :func:`contrasts` (seeds, then clusters). One dict per metric:
    metric, a, b, diff, ci_lo, ci_hi, n_items, n_clusters, a_seed_sd, b_seed_sd."""
    return [_row(c, level) for c in contrasts(a_runs, b_runs, task, n_boot=n_boot, seed=seed)]


def interaction(
    cells: dict[tuple[str, str], Sequence[pl.DataFrame]],
    task: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict]:
    """Privileged access as the interaction of explainer and target: the mean over targets of
    (the target explaining itself − the other explainers explaining it, averaged), which for
    two models S and G is ((S→S − G→S) + (G→G − S→G)) / 2. Explainer capacity and target
    difficulty cancel: each explainer appears once on each side. cells: (target, explainer) →
    that cell's trained runs (seeds). Each target's contrast is bootstrapped on its own test
    items (seeds, then clusters); the resamples are averaged. Empty unless at least two
    targets each have a self cell and another explainer."""
    targets = sorted(t for t, e in cells if t == e)
    per_target: list[list[dict[str, Contrast]]] = []  # per target, per other explainer
    for i, target in enumerate(targets):
        others = sorted(e for t, e in cells if t == target and e != target)
        found = [
            contrasts(cells[target, target], cells[target, o], task, n_boot=n_boot, seed=seed + i)
            for o in others
        ]
        if others and all(found):
            per_target.append([{c.metric: c for c in cs} for cs in found])
    if len(per_target) < 2:
        return []
    metrics = [
        m for m in CHANGE_METRICS + FEATURE_METRICS if all(m in d for t in per_target for d in t)
    ]
    out = []
    for metric in metrics:
        mine = [[d[metric] for d in t] for t in per_target]  # per target, per other

        def mean(get, mine=mine):
            return np.mean([np.mean([get(c) for c in cs], axis=0) for cs in mine], axis=0)

        a, b = float(mean(lambda c: c.a)), float(mean(lambda c: c.b))
        lo, hi = percentile_ci(mean(lambda c: c.draws), level)
        out.append(
            {"metric": metric, "a": a, "b": b, "diff": a - b, "ci_lo": lo, "ci_hi": hi}
            | {"n_items": sum(cs[0].n_items for cs in mine)}
            | {"n_clusters": sum(cs[0].n_clusters for cs in mine)}
        )
    return out


def baselines() -> list[str]:
    """What trained is compared with: the registered variants whose record says compared."""
    return [name for name, v in VARIANTS.items() if v.compared]


INTERACTION = "privileged access (interaction)"
SURFACE_HARD = "trained - constant (surface-hard)"


def surface_hard(runs: dict, cell: tuple[str, str, str]) -> list[str] | None:
    """The test items of a cell (task, target, explainer) that the surface classifier gets
    wrong (its answer's has-changed differs from the gold): where an explainer that reads the
    target, not the question's wording, shows. None without trained, constant and surface runs
    of the cell or on a task without has-changed answers."""
    keys = [(*cell, v) for v in (TRAINED, "constant", "surface")]
    if cell[0] == "features" or not all(k in runs for k in keys):
        return None
    surface = _in_sample(runs[keys[2]][0])
    wrong = surface.filter(pl.col("pred_changed").ne_missing(pl.col("gold_changed")))
    return wrong["id"].to_list()


def _only(df: pl.DataFrame, ids: list[str]) -> pl.DataFrame:
    return df.filter(pl.col("id").is_in(ids))


def comparisons(evals: Sequence[pl.DataFrame], *, n_boot: int = 1000) -> pl.DataFrame:
    """Every paired comparison the runs allow: trained - each baseline (same explainer), self
    - other (trained, same target), trained - constant on the surface-hard items
    (surface_hard), and, with two or more targets that each explain themselves and are
    explained by another, the interaction (target "all"). Columns:
    COLUMNS; CIs from the hierarchical bootstrap (seeds, then clusters)."""
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
            rows.append(_labels(task, target, name, a_key[2:], b_key[2:], a, b) | r)

    for task, target, explainer, variant in sorted(runs):
        if variant != TRAINED:
            continue
        for baseline in baselines():
            if (task, target, explainer, baseline) in runs:
                name = f"{TRAINED} - {baseline}"
                add(
                    task,
                    target,
                    name,
                    (task, target, explainer, TRAINED),
                    (task, target, explainer, baseline),
                )
        hard = surface_hard(runs, (task, target, explainer))
        if hard is not None:
            a, b = (
                [_only(d, hard) for d in runs[task, target, explainer, v]]
                for v in (TRAINED, "constant")
            )
            for r in paired_difference(a, b, task, n_boot=n_boot):
                who = (explainer, TRAINED), (explainer, "constant")
                rows.append(_labels(task, target, SURFACE_HARD, *who, a, b) | r)
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
    for task in sorted({k[0] for k in runs}):
        cells = {(t, e): r for (k, t, e, v), r in runs.items() if k == task and v == TRAINED}
        trained = [d for r in cells.values() for d in r]
        for r in interaction(cells, task, n_boot=n_boot):
            rows.append(
                _labels(
                    task,
                    "all",
                    INTERACTION,
                    ("self", TRAINED),
                    ("other", TRAINED),
                    trained,
                    trained,
                )
                | r
            )
    schema = {c: pl.String for c in COLUMNS[:8]} | {
        c: pl.Float64 for c in ("a", "b", "diff", "ci_lo", "ci_hi", "a_seed_sd", "b_seed_sd")
    }
    schema |= {"n_items": pl.Int64, "n_clusters": pl.Int64, "a_seeds": pl.String}
    schema |= {"b_seeds": pl.String}
    return pl.DataFrame(rows, schema=schema).select(COLUMNS)


def _labels(task, target, name, a_who, b_who, a_runs, b_runs) -> dict:
    """A comparison row's labelling columns: who is compared, and with which seeds."""

    def seeds(runs):
        return ",".join(sorted({str(d["seed"][0]) for d in runs}))

    return {
        "task": task,
        "target": target,
        "comparison": name,
        "a_explainer": a_who[0],
        "a_variant": a_who[1],
        "b_explainer": b_who[0],
        "b_variant": b_who[1],
        "a_seeds": seeds(a_runs),
        "b_seeds": seeds(b_runs),
    }
