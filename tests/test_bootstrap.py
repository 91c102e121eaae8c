"""The hierarchical bootstrap of the comparisons (seeds, then clusters) and the interaction
contrast, on hand cases where a wrong resampler gives a visibly different interval."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from selfexplain.report.compare import INTERACTION, comparisons, interaction, paired_difference


def _eval(
    clusters, correct, *, variant="trained", explainer="e", target="t", seed=0, task="patching"
):
    n = len(correct)
    gold = [i % 2 == 0 for i in range(n)]
    return pl.DataFrame(
        {
            "id": [f"{target}-{i}" for i in range(n)],
            "meta": [json.dumps({"pair_id": c}) for c in clusters],
            "gold_changed": gold,
            "exact_match": correct,
            "tf_score": [1.0 if g == c else -1.0 for c, g in zip(correct, gold, strict=True)],
            "task": task,
            "target": target,
            "explainer": explainer,
            "variant": variant,
            "seed": seed,
        }
    )


def _em(rows):
    return next(r for r in rows if r["metric"] == "exact_match")


def test_cluster_ci_is_wider_than_the_item_ci_when_clusters_agree_inside():
    """20 clusters of 10 items; within a cluster a is either all right or all wrong (10 of 20
    clusters right), b always wrong. Resampling items would give a CI of half-width ~1.96 x
    sqrt(.25/200) = 0.07; resampling clusters one of ~1.96 x sqrt(.25/20) = 0.22."""
    clusters = [f"c{i // 10}" for i in range(200)]
    a = _eval(clusters, [(i // 10) % 2 == 0 for i in range(200)])
    b = _eval(clusters, [False] * 200, variant="constant")
    em = _em(paired_difference([a], [b], "patching", n_boot=2000))
    assert em["diff"] == pytest.approx(0.5) and em["n_clusters"] == 20
    half = (em["ci_hi"] - em["ci_lo"]) / 2
    assert 0.17 < half < 0.27  # the cluster-level width; the item-level one would be ~0.07


def test_seeds_are_resampled_so_seed_disagreement_widens_the_ci():
    """Side a has two seeds, one right on every item and one wrong on every item; b is right
    on half. Averaging seeds on each resample (no seed level) would give diff 0 with a CI of
    width 0; drawing seeds with replacement gives a = 0, 0.5 or 1 (p 1/4, 1/2, 1/4)."""
    clusters = [f"c{i}" for i in range(40)]
    a = [_eval(clusters, [True] * 40, seed=0), _eval(clusters, [False] * 40, seed=1)]
    b = [_eval(clusters, [i % 4 < 2 for i in range(40)], variant="constant")]
    em = _em(paired_difference(a, b, "patching", n_boot=2000))
    assert em["diff"] == pytest.approx(0.0)
    assert em["ci_lo"] == pytest.approx(-0.5, abs=0.1) and em["ci_hi"] == pytest.approx(
        0.5, abs=0.1
    )
    assert em["a_seed_sd"] == pytest.approx(np.std([1.0, 0.0], ddof=1))
    assert np.isnan(em["b_seed_sd"])


def test_one_seed_a_side_is_the_cluster_bootstrap():
    """With one seed on each side the seed level draws nothing: the hand-computed cluster case
    (clusters A = {right, wrong}, B = {right}: diffs 1, 0, 2/3) spans [0, 1]."""
    a = _eval(["A", "A", "B"], [True, True, True])
    b = _eval(["A", "A", "B"], [False, False, True], variant="no_signal")
    em = _em(paired_difference([a], [b], "patching", n_boot=2000))
    assert em["diff"] == pytest.approx(2 / 3) and (em["ci_lo"], em["ci_hi"]) == (0.0, 1.0)


def _cells(rates):
    """Trained runs of every (target, explainer) cell, exact match = the given rate on 100
    items in 20 clusters (correct on the first rate x 100 items, spread over clusters)."""
    out = {}
    for (target, explainer), rate in rates.items():
        k = round(rate * 100)
        clusters = [f"p{i % 20}" for i in range(100)]
        out[target, explainer] = [
            _eval(clusters, [i < k for i in range(100)], explainer=explainer, target=target)
        ]
    return out


def test_interaction_cancels_explainer_capacity():
    """S explains S 0.9 and G 0.8; G explains S 0.7 and G 0.8. Per target self − other is
    +0.2 (S) and 0.0 (G); the interaction ((S→S − G→S) + (G→G − S→G)) / 2 = +0.1. Adding
    0.1 to everything G explains (a better explainer) leaves the interaction unchanged."""
    rates = {("S", "S"): 0.9, ("S", "G"): 0.7, ("G", "G"): 0.8, ("G", "S"): 0.8}
    em = _em(interaction(_cells(rates), "patching", n_boot=300))
    assert em["diff"] == pytest.approx(0.1)
    assert em["ci_lo"] <= 0.1 <= em["ci_hi"] and em["n_items"] == 200
    stronger_g = {k: v + 0.1 if k[1] == "G" else v for k, v in rates.items()}
    assert _em(interaction(_cells(stronger_g), "patching", n_boot=300))["diff"] == pytest.approx(
        0.1
    )
    one_target = {k: v for k, v in _cells(rates).items() if k[0] == "S"}
    assert interaction(one_target, "patching") == []


def test_comparisons_report_the_interaction_for_the_whole_matrix():
    rates = {("S", "S"): 0.9, ("S", "G"): 0.7, ("G", "G"): 0.8, ("G", "S"): 0.8}
    evals = [d for runs in _cells(rates).values() for d in runs]
    table = comparisons(evals, n_boot=100)
    rows = table.filter(pl.col("comparison") == INTERACTION)
    assert set(rows["target"]) == {"all"}
    em = rows.filter(pl.col("metric") == "exact_match")
    assert em["diff"][0] == pytest.approx(0.1)
    self_other = table.filter(pl.col("comparison") == "self - other")
    assert sorted(self_other.filter(pl.col("metric") == "exact_match")["diff"].round(6)) == [
        0.0,
        0.2,
    ]


def test_privileged_access_figure_draws_the_grid(tmp_path):
    from selfexplain.report.plots import privileged_access_figure

    rates = {("S", "S"): 0.9, ("S", "G"): 0.7, ("G", "G"): 0.8, ("G", "S"): 0.8}
    table = comparisons([d for r in _cells(rates).values() for d in r], n_boot=50)
    privileged_access_figure(table, tmp_path / "pa.png")
    privileged_access_figure(table.head(0), tmp_path / "empty.png")
    assert (tmp_path / "pa.png").stat().st_size > 5000 and (tmp_path / "empty.png").exists()


def test_surface_hard_slice_compares_trained_with_constant_where_surface_is_wrong():
    """The surface classifier is wrong on the first 20 of 40 items; there the trained
    explainer is right on every item (balanced accuracy 1) and the constant answer at chance
    (0.5): trained - constant (surface-hard) is +0.5 on 20 items."""
    clusters = [f"c{i}" for i in range(40)]
    trained = _eval(clusters, [True] * 40)
    constant = _eval(clusters, [i % 2 == 0 for i in range(40)], variant="constant")
    constant = constant.with_columns(tf_score=pl.lit(0.0), tf_threshold=pl.lit(-1.0))
    surface = _eval(clusters, [i >= 20 for i in range(40)], variant="surface")
    flip = pl.Series([i < 20 for i in range(40)])
    surface = surface.with_columns(pred_changed=pl.col("gold_changed") ^ flip)
    table = comparisons([trained, constant, surface], n_boot=100)
    hard = table.filter(pl.col("comparison") == "trained - constant (surface-hard)")
    ba = hard.filter(pl.col("metric") == "balanced_accuracy").row(0, named=True)
    assert ba["n_items"] == 20 and ba["diff"] == pytest.approx(0.5)
