"""End-to-end: the Snakemake DAG on a tiny config, and config validation before any rule runs."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def run_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.e2e
def test_dag_runs_end_to_end_on_tiny_model(tmp_path):
    proc = run_snakemake(
        tmp_path, "--cores", "2", "--configfile", str(REPO / "tests/data/tiny.yaml")
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    expected = [
        "resources/models/tiny/selfexplain_model.json",
        "results/prompts/ablation.jsonl",
        "results/labels/ablation/tiny.parquet",
        "results/explainers/ablation/tiny/tiny/trained/s0/adapter_model.safetensors",
        "results/eval/ablation/tiny/tiny/trained/s0.parquet",
        "results/eval/ablation/tiny/tiny/surface/s0.parquet",
        "results/tables/all_metrics.csv",
        "results/tables/summary.csv",
        "results/tables/compute.csv",
        "results/figures/self_vs_other.png",
        "results/figures/baselines.png",
        "results/figures/scaling.png",
        "results/figures/compute.png",
        "results/figures/ablation_metrics.png",
        "results/eval/ablation/tiny/tinyg/no_signal/s0.parquet",
        "results/prompts/patching_pairs.jsonl",
        "results/labels/patching/tiny.parquet",
        "results/eval/patching/tiny/tiny/trained/s0.parquet",
        "results/figures/patching_metrics.png",
        "results/figures/patching_layers.png",
        "results/figures/patching_heatmaps_tiny.png",
        "results/tables/patching_layers.csv",
        "results/features/tiny/activations.safetensors",
        "results/features/tiny/sae/sae.safetensors",
        "results/features/tiny/sae_stats.json",
        "results/features/tiny/descriptions.parquet",
        "results/labels/features/tiny.parquet",
        "results/explainers/features/tiny/tiny/trained/s0/injection.json",
        "results/explainers/features/tiny/tiny/no_signal/s0/adapter_model.safetensors",
        "results/eval/features/tiny/tiny/floor/s0.parquet",
        "results/eval/features/tiny/tinyg/trained/s0.parquet",  # other: 64 -> tinyg width map
        "results/figures/features_metrics.png",
    ]
    for rel in expected:
        assert (tmp_path / rel).stat().st_size > 0, rel
    table = pl.read_parquet(tmp_path / "results/tables/all_metrics.parquet")
    change = table.filter(pl.col("task").is_in(["ablation", "patching"]))
    variants = ["constant", "no_signal", "surface", "trained"]
    assert sorted(change["variant"].unique()) == variants
    metrics = {"auc", "balanced_accuracy", "exact_match", "has_changed_f1", "content_match"}
    natural = {"exact_match_natural", "has_changed_f1_natural"}  # at the base rate of change
    assert set(change["metric"]) == metrics | natural | {"valid", "heatmap_agreement"}
    # tasks x explainers x variants x metrics, + patching's heatmap agreement per run
    assert len(change) == 2 * 2 * 4 * 8 + 2 * 4
    heat_rows = change.filter(pl.col("metric") == "heatmap_agreement")
    assert set(heat_rows["task"]) == {"patching"} and heat_rows["value"].is_between(0, 1).all()
    hint = table.filter(pl.col("task") == "hint")
    assert sorted(hint["variant"].unique()) == ["constant", "surface", "trained"]
    assert set(table["task"]) == {"ablation", "patching", "hint", "features"}
    feats = table.filter(pl.col("task") == "features")
    assert sorted(feats["variant"].unique()) == ["floor", "no_signal", "trained"]
    assert set(feats["metric"]) == {"similarity", "simulation", "valid"}
    assert len(feats) == 2 * 3 * 3  # explainers x variants x metrics
    comparisons = pl.read_csv(tmp_path / "results/tables/comparisons.csv")
    assert {"trained - no_signal", "trained - surface", "self - other"} <= set(
        comparisons["comparison"]
    )
    assert (comparisons["ci_lo"] <= comparisons["diff"]).all()
    curves = pl.read_csv(tmp_path / "results/tables/learning_curves.csv")
    assert curves["step"].min() == 0 and "patching" in set(curves["task"])
    identity = json.loads(
        (tmp_path / "results/features/token_identity/tiny/tinyg.json").read_text()
    )
    assert identity["relation"] == "other" and 0 <= identity["accuracy"] <= 1
    sae = json.loads((tmp_path / "results/features/tiny/sae_stats.json").read_text())
    assert 0 <= sae["fvu"] < 1 and 0 <= sae["dead_fraction"] <= 1 and sae["n_latents"] == 128
    flabels = pl.read_parquet(tmp_path / "results/labels/features/tiny.parquet")
    assert set(flabels["split"]) == {"train", "test"} and flabels["vector"].list.len().min() == 64
    layers = pl.read_csv(tmp_path / "results/tables/patching_layers.csv")
    assert set(layers["layer_start"]) <= {0, 1, 2} and len(layers) > 0
    heat = pl.read_parquet(tmp_path / "results/eval/patching/tiny/tiny/trained/s0.parquet")
    assert heat["heatmap"].any() and heat["in_sample"].sum() <= 12
    # heatmaps are read at the train split's base rate, recorded with the trained run too
    from selfexplain.core.schema import read_parquet
    from selfexplain.metrics import prior_shift
    from selfexplain.run import train_base_rate

    rate = train_base_rate(read_parquet(tmp_path / "results/labels/patching/tiny.parquet"))
    run_summary = json.loads(
        (
            tmp_path / "results/explainers/patching/tiny/tiny/trained/s0/train_summary.json"
        ).read_text()
    )
    assert run_summary["base_rate"] == pytest.approx(rate) and 0 < rate < 1
    shift = (heat["prior_threshold"] - heat["tf_threshold"]).to_list()
    assert shift == pytest.approx([prior_shift(rate)] * len(heat))
    n_trained = table.filter(pl.col("variant") == "trained")["n_train"].unique().to_list()
    assert all(0 < n <= 24 for n in n_trained)  # balanced rows, at most train.n_train
    relation = {(r["explainer"], r["relation"]) for r in table.iter_rows(named=True)}
    assert relation == {("tiny", "self"), ("tinyg", "other")}
    summary = pl.read_csv(tmp_path / "results/tables/summary.csv")
    assert set(summary["ci"]) <= {"bootstrap", "none"}  # one seed: CIs over test examples
    compute = pl.read_csv(tmp_path / "results/tables/compute.csv")
    assert {"train_explainer", "evaluate", "label_ablation"} <= set(compute["rule"])
    # (trained and no_signal x 3 tasks + hint's trained) x 2 explainers
    assert compute.filter(pl.col("rule") == "train_explainer")["jobs"].sum() == (6 + 1) * 2
    labels = pl.read_parquet(tmp_path / "results/labels/ablation/tiny.parquet")
    assert set(labels["split"]) == {"train", "test"}
    # A second run has nothing to do.
    again = run_snakemake(
        tmp_path, "-n", "--cores", "2", "--configfile", str(REPO / "tests/data/tiny.yaml")
    )
    assert "Nothing to be done" in again.stdout + again.stderr
    # Editing the token-identity check plans that rule alone (and the compute table, which reads
    # its benchmark file): the rules that read features.* get the section without it.
    edited = write_config(tmp_path / "identity.yaml", "features: {token_identity: {n_val: 4}}\n")
    tiny = str(REPO / "tests/data/tiny.yaml")
    plan = run_snakemake(tmp_path, "-n", "--cores", "2", "--configfile", tiny, str(edited))
    planned = set(re.findall(r"^(?:local)?rule (\w+):", plan.stdout + plan.stderr, re.M))
    assert planned == {"token_identity", "compute_table", "all"}, plan.stdout[-3000:]


BAD_CONFIGS = {
    "tasks": ("tasks: [ablaton]\n", "ablaton"),
    "ablation.test_fraction": ("ablation: {test_fraction: 1.5}\n", "test_fraction"),
    "unknown key": ("trian: {n_train: 3}\n", "trian"),
    "targets": ("targets: [nosuchmodel]\n", "nosuchmodel"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_malformed_config_is_rejected_before_any_rule(tmp_path, name):
    text, key = BAD_CONFIGS[name]
    cfg = write_config(tmp_path / "bad.yaml", text)
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(cfg))
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert key in out, out[-3000:]
    assert not (tmp_path / "results").exists()
