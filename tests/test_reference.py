"""A reference run copies the small outputs of results/ (never adapters) with a README."""

from __future__ import annotations

import subprocess

import polars as pl
import pytest

from selfexplain.report.reference import kept_files, write_reference

BENCH = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _results(root):
    res = root / "results"
    run = "patching/smollm2/gemma/trained/s0"
    files = {
        "tables/comparisons.csv": "a,b\n1,2\n",
        "figures/privileged_access.png": "png",
        f"explainers/{run}/train_summary.json": "{}",
        f"explainers/{run}/adapter_model.safetensors": "weights",
        f"checkpoints/{run}/checkpoint-50/x.bin": "x",
        f"benchmarks/train_explainer/{run}.tsv": BENCH
        + "120.5\t0:02:00\t900\t0\t0\t0\t0\t0\t1\t230\n",
        "benchmarks/label_patching/smollm2.tsv": BENCH
        + "60\t0:01:00\t800\t0\t0\t0\t0\t0\t1\t100\n",
    }
    for rel, text in files.items():
        (res / rel).parent.mkdir(parents=True, exist_ok=True)
        (res / rel).write_text(text)
    (res / f"eval/{run}.parquet").parent.mkdir(parents=True)
    pl.DataFrame({"id": ["a"]}).write_parquet(res / f"eval/{run}.parquet")
    return res


def test_reference_copies_small_outputs_and_names_the_commit(tmp_path):
    res = _results(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    kept = {str(p) for p in kept_files(res)}
    assert (
        "tables/comparisons.csv" in kept
        and "eval/patching/smollm2/gemma/trained/s0.parquet" in kept
    )
    assert not any("adapter" in k or "checkpoints" in k for k in kept)
    out = write_reference("demo", "snakemake --cores 2", res, tmp_path / "ref")
    assert (out / "explainers/patching/smollm2/gemma/trained/s0/train_summary.json").exists()
    assert not (
        out / "explainers/patching/smollm2/gemma/trained/s0/adapter_model.safetensors"
    ).exists()
    readme = (out / "README.md").read_text()
    assert "snakemake --cores 2" in readme and "`unknown`" in readme  # a repo without commits
    assert "| train_explainer | patching | gemma | 1 | 120 |" in readme
    assert "Sum of job wall times: 0.05 h." in readme
    (res / "tables/comparisons.csv").unlink()  # a second call replaces the first copy
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty"]
    subprocess.run([*git, "-m", "x"], cwd=tmp_path, check=True)
    out = write_reference("demo", "x", res, out)
    assert not (out / "tables/comparisons.csv").exists()
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    )
    assert f"`{head.stdout.strip()}`" in (out / "README.md").read_text()


def test_reference_of_a_run_in_progress_tables_the_finished_cells(tmp_path):
    from test_matrix import change_eval

    res = tmp_path / "results"
    for explainer, correct in (("a", 8), ("b", 5)):
        path = res / f"eval/patching/a/{explainer}/trained/s0.parquet"
        path.parent.mkdir(parents=True)
        rows = change_eval("patching", "a", explainer, "trained", 0, 40, correct)
        pairs = [f'{{"pair_id": "p{i // 2}"}}' for i in range(len(rows))]
        rows.with_columns(meta=pl.Series(pairs)).write_parquet(path)
    out = write_reference("demo", "x", res, tmp_path / "ref", finished=True)
    table = pl.read_csv(out / "tables/comparisons_finished.csv")
    em = table.filter(
        (pl.col("comparison") == "self - other") & (pl.col("metric") == "exact_match")
    )
    assert em["diff"][0] == pytest.approx(0.3)
    metrics = pl.read_csv(out / "tables/all_metrics_finished.csv")
    assert set(metrics["explainer"]) == {"a", "b"}
    assert (out / "figures/privileged_access_finished.png").exists()
    assert "2 evaluations finished" in (out / "README.md").read_text()
