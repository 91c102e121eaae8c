"""Parse explainer answers and score them: exact match, has-changed macro F1, content match."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from selfexplain.core.formats import PAPER, AnswerFormat, format_of, parse_change


def macro_f1(gold: Sequence[bool], pred: Sequence[bool | None]) -> float:
    """Macro F1 over the classes changed/unchanged; an unparseable prediction (None) is wrong."""
    return weighted_macro_f1(np.asarray(gold, dtype=bool), pred, np.ones(len(gold)))


def auc(gold: Sequence[bool], score: Sequence[float]) -> float:
    """Area under the ROC curve of score for gold (ties count one half); nan with one class."""
    gold = np.asarray(gold, dtype=bool)
    score = np.asarray(score, dtype=float)
    n_pos, n_neg = int(gold.sum()), int((~gold).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[gold].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def balanced_accuracy(gold: Sequence[bool], pred: Sequence[bool | None]) -> float:
    """Mean recall of the two classes; a missing prediction (None) is wrong; nan with one
    class in gold."""
    gold = list(gold)
    recalls = []
    for cls in (True, False):
        idx = [i for i, g in enumerate(gold) if g == cls]
        if not idx:
            return float("nan")
        recalls.append(sum(1 for i in idx if pred[i] == cls) / len(idx))
    return float(np.mean(recalls))


def best_threshold(gold: Sequence[bool], score: Sequence[float]) -> float:
    """The threshold t maximising the balanced accuracy of score > t (midpoints between sorted
    distinct scores; the smallest such t on ties): calibrated on a validation split, applied
    unchanged to the test split."""
    score = np.asarray(score, dtype=float)
    values = np.unique(score)
    cuts = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    accs = [balanced_accuracy(gold, score > t) for t in cuts]
    if all(a != a for a in accs):
        return 0.0
    return float(cuts[int(np.nanargmax(accs))])


def _fold(text: str, fmt: AnswerFormat) -> str:
    return text.strip().lower() if fmt is PAPER else text.strip()


def score_change_rows(gold_answers: Sequence[str], predictions: Sequence[str]) -> pl.DataFrame:
    """Per-example columns: exact_match (the same stripped text, in the paper format also
    lower-cased as the reference code does; across formats the same change and new token),
    gold/pred changed flags, content_match (changed only)."""
    rows = []
    for gold_text, pred_text in zip(gold_answers, predictions, strict=True):
        gold = parse_change(gold_text)
        pred = parse_change(pred_text)
        content = None
        if gold.changed:
            content = bool(pred.changed and pred.new_token == gold.new_token)
        fmt = format_of([gold_text])
        if fmt is format_of([pred_text]):  # the paper's exact match ignores case
            exact = _fold(pred_text, fmt) == _fold(gold_text, fmt)
        else:  # e.g. a paper-format answer against a compact gold, which names no current
            # output: the same change and new token
            exact = pred.valid and (pred.changed, pred.new_token) == (gold.changed, gold.new_token)
        rows.append(
            {
                "exact_match": exact,
                "valid": pred.valid,
                "gold_changed": bool(gold.changed),
                "pred_changed": pred.changed,
                "gold_new_token": gold.new_token,
                "pred_new_token": pred.new_token,
                "content_match": content,
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "exact_match": pl.Boolean,
            "valid": pl.Boolean,
            "gold_changed": pl.Boolean,
            "pred_changed": pl.Boolean,
            "gold_new_token": pl.String,
            "pred_new_token": pl.String,
            "content_match": pl.Boolean,
        },
    )


def change_metrics(rows: pl.DataFrame) -> dict[str, float]:
    """Aggregate metrics of per-example rows from score_change_rows; with a teacher-forced
    score column (tf_score, see scoring.py) also the has-changed AUC and the balanced accuracy of
    tf_score > tf_threshold (the run's validation-calibrated threshold; 0 without one); with a
    natural rate of change (natural_rate) also the paper's metrics at that rate
    (natural_metrics)."""
    changed = rows.filter(pl.col("gold_changed"))
    tf = {}
    if "tf_score" in rows.columns and rows["tf_score"].null_count() < len(rows):
        gold, score = rows["gold_changed"].to_list(), rows["tf_score"].to_numpy()
        cut = rows["tf_threshold"].to_numpy() if "tf_threshold" in rows.columns else 0.0
        tf = {"auc": auc(gold, score), "balanced_accuracy": balanced_accuracy(gold, score > cut)}
    return (
        tf
        | natural_metrics(rows)
        | {
            "exact_match": float(rows["exact_match"].mean()) if len(rows) else float("nan"),
            "has_changed_f1": macro_f1(
                rows["gold_changed"].to_list(), rows["pred_changed"].to_list()
            ),
            "content_match": float(changed["content_match"].mean())
            if len(changed)
            else float("nan"),
            "valid": float(rows["valid"].mean()) if len(rows) else float("nan"),
        }
    )


def natural_rate(rows: pl.DataFrame) -> float | None:
    """The rate of change of the target's natural test distribution behind balanced rows: the
    ``base_rate`` column evaluate writes (the train split's share of changed answers), or in
    older evaluation files the same rate read back from ``prior_threshold - tf_threshold``
    (= prior_shift(rate)); None without either."""
    cols = set(rows.columns)
    if "base_rate" in cols and len(rows) and rows["base_rate"].null_count() == 0:
        return float(rows["base_rate"][0])
    if {"prior_threshold", "tf_threshold"} <= cols and len(rows):
        if rows["prior_threshold"].null_count() == 0 and rows["tf_threshold"].null_count() == 0:
            shift = float(rows["prior_threshold"][0] - rows["tf_threshold"][0])
            return float(1 / (1 + np.exp(shift)))
    return None


def class_weights(gold: np.ndarray, rate: float) -> np.ndarray:
    """Weights that give the changed rows a total share ``rate`` (the natural distribution)
    and the unchanged rows the rest: reweighting a balanced sample of each class to the
    target's base rate. Ones when the rows hold one class only."""
    gold = np.asarray(gold, dtype=bool)
    p = gold.mean() if len(gold) else 0.0
    if p in (0.0, 1.0):
        return np.ones(len(gold))
    return np.where(gold, rate / p, (1 - rate) / (1 - p))


def weighted_macro_f1(gold: np.ndarray, pred: Sequence[bool | None], w: np.ndarray) -> float:
    """macro_f1 with a weight per row (an unparseable prediction, None, is wrong)."""
    gold = np.asarray(gold, dtype=bool)
    pred = np.array([-1 if p is None else int(bool(p)) for p in pred])
    scores = []
    for cls in (1, 0):
        tp = w[(gold == cls) & (pred == cls)].sum()
        n_pred, n_gold = w[pred == cls].sum(), w[gold == cls].sum()
        if n_gold == 0 and n_pred == 0:
            continue
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_gold if n_gold else 0.0
        scores.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return float(np.mean(scores)) if scores else float("nan")


def natural_metrics(rows: pl.DataFrame) -> dict[str, float]:
    """The paper's metrics at the target's natural rate of change, from balanced rows
    reweighted per class (class_weights at natural_rate): exact match and has-changed macro F1
    of the generated answers. Content match (changed rows only) needs no reweighting. Empty
    without a natural rate."""
    rate = natural_rate(rows)
    if rate is None or not len(rows):
        return {}
    gold = rows["gold_changed"].to_numpy().astype(bool)
    w = class_weights(gold, rate)
    em = rows["exact_match"].to_numpy().astype(float)
    return {
        "exact_match_natural": float((w * em).sum() / w.sum()),
        "has_changed_f1_natural": weighted_macro_f1(gold, rows["pred_changed"].to_list(), w),
    }


def base_rate(answers: Sequence[str]) -> float:
    """The share of answers that say the output changes."""
    changed = [bool(parse_change(a).changed) for a in answers]
    return sum(changed) / len(changed) if changed else 0.5


def prior_shift(rate: float) -> float:
    """How far to raise a has-changed threshold chosen on balanced rows (where a score is the
    log-odds of "changed" against a prior of 1/2) so that it decides at a base rate of
    changed answers ``rate`` instead: log((1 - rate) / rate), the Bayes-optimal threshold
    under the new prior (0 at 1/2; rate is clipped to [0.001, 0.999])."""
    rate = min(max(float(rate), 1e-3), 1 - 1e-3)
    return float(np.log((1 - rate) / rate))


def rank_threshold(scores: Sequence[float], rate: float) -> float:
    """The threshold that marks the round(rate * n) highest of n scores as changed (prior
    matching): midway between the last score marked and the next, so ``score > threshold``
    picks exactly them (ties aside). It reads the explainer's ranking of the questions, not
    its scores' scale, which drifts on prompts unlike the training ones."""
    ordered = sorted((float(s) for s in scores), reverse=True)
    if not ordered:
        return 0.0
    k = min(max(round(float(rate) * len(ordered)), 0), len(ordered))
    if k == 0:
        return ordered[0]
    if k == len(ordered):
        return ordered[-1] - 1.0
    return (ordered[k - 1] + ordered[k]) / 2


def natural_prediction(rows: pl.DataFrame) -> pl.Series:
    """Predicted has-changed for questions asked at the target's natural rate of change (every
    cell of a heatmap): tf_score > prior_threshold (the validation threshold moved by
    prior_shift of the training labels' base rate) where that column exists, else tf_score >
    tf_threshold, else the generated answer's pred_changed."""
    if "tf_score" in rows.columns and rows["tf_score"].null_count() == 0:
        for column in ("prior_threshold", "tf_threshold"):
            if column in rows.columns and rows[column].null_count() == 0:
                return rows["tf_score"] > rows[column]
        return rows["tf_score"] > 0.0
    return rows["pred_changed"]


def heatmap_agreement(rows: pl.DataFrame) -> dict[str, float]:
    """Patching: the fraction of the heatmap pairs' cells (every layer window x position of a
    few test pairs, rows with ``heatmap`` true) where the predicted has-changed map
    (natural_prediction: most cells do not change, unlike the balanced test rows) equals the
    target's. Empty when the rows have no heatmap cells."""
    if "heatmap" not in rows.columns:
        return {}
    cells = rows.filter(pl.col("heatmap"))
    if cells.is_empty():
        return {}
    predicted = natural_prediction(cells)
    return {"heatmap_agreement": float((predicted == cells["gold_changed"]).mean())}


def cluster_members(keys: Sequence) -> list[np.ndarray]:
    """For each cluster (sorted by its key as text), the indices of its rows."""
    index: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        index.setdefault(str(key), []).append(i)
    return [np.array(rows) for _, rows in sorted(index.items())]


def cluster_resamples(members: list[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """n_boot resamples of the rows, each a draw of whole clusters with replacement."""
    rng = np.random.default_rng(seed)
    n = len(members)
    empty = np.array([], dtype=int)
    return [
        np.concatenate([members[j] for j in rng.integers(0, n, n)]) if n else empty
        for _ in range(n_boot)
    ]


def bootstrap_ci(
    rows: pl.DataFrame,
    statistic: Callable[[pl.DataFrame], dict[str, float]],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    clusters: Sequence[str] | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CI of each statistic, resampling whole clusters with replacement
    (clusters: each row's cluster, e.g. its prompt or pair: the questions of one prompt are
    not independent); without clusters, single rows."""
    if clusters is not None and len(clusters) != len(rows):
        raise ValueError(f"{len(clusters)} cluster keys for {len(rows)} rows")
    if clusters is None:
        members = [np.array([i]) for i in range(len(rows))]
    else:
        members = cluster_members(clusters)
    draws: dict[str, list[float]] = {}
    for idx in cluster_resamples(members, n_boot, seed):
        for k, v in statistic(rows[idx]).items():
            draws.setdefault(k, []).append(v)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {
        k: (float(np.nanpercentile(v, lo)), float(np.nanpercentile(v, hi)))
        for k, v in draws.items()
    }
