"""The experiment matrix: DAG expansion, the no_signal shuffle, the tidy and summary tables, the
compute table and the matrix figures (no model runs: dry runs and small frames)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import polars as pl
import pytest
import yaml
from test_pipeline import REPO, run_snakemake

from selfexplain.core.formats import change_answer
from selfexplain.core.layout import eval_labels, parse_benchmark
from selfexplain.data.controls import shuffle_signal
from selfexplain.data.matrix import runs, scaling_variants, variant_n_train, variant_seeds
from selfexplain.data.variants import withhold_signal
from selfexplain.metrics import score_change_rows
from selfexplain.report.plots import MATRIX_FIGURES, compute_figure, summarize
from selfexplain.report.tables import (
    TIDY,
    compute_table,
    mean_ci,
    read_benchmarks,
    seed_summary,
    t_quantile_975,
)
from selfexplain.tasks.ablation import ablation_question
from selfexplain.tasks.patching import patching_question

# ------------------------------------------------------------------ no_signal shuffle


def ablation_frame() -> pl.DataFrame:
    """Explainer examples of three prompts (4, 3 and 1 removals), questions from the template."""
    rows = []
    for pid, prompt, n in (
        ("p1", "2 + 5 =", 4),
        ("p2", "The capital of Peru is", 3),
        ("p3", "a", 1),
    ):
        for k in range(n):
            meta = {
                "prompt_id": pid,
                "prompt": prompt,
                "unit": "token",
                "position": k,
                "token_index": k,
                "removed": f"tok{k}",
                "orig_token": " 7",
                "changed": k % 2 == 0,
                "new_token": " 5" if k % 2 == 0 else None,
            }
            rows.append(
                {
                    "id": f"ablation/t/{pid}/t{k}",
                    "task": "ablation",
                    "target": "t",
                    "split": "train",
                    "question": ablation_question(meta),
                    "answer": change_answer(meta["changed"], meta["new_token"]),
                    "vector": None,
                    "meta": json.dumps(meta),
                }
            )
    return pl.DataFrame(rows, schema_overrides={"vector": pl.List(pl.Float32)})


def test_shuffle_signal_moves_questions_within_each_prompt_and_keeps_answers():
    df = ablation_frame()
    out = shuffle_signal(df, "ablation", seed=0)
    assert out.columns == df.columns and len(out) == len(df)
    for col in ("id", "answer", "meta", "split"):
        assert out[col].to_list() == df[col].to_list()
    # every question differs from its original ...
    assert all(a != b for a, b in zip(out["question"], df["question"], strict=True))
    # ... and within a prompt of >= 2 examples it is another example's question of that prompt
    for pid in ("p1", "p2"):
        orig = df.filter(pl.col("id").str.contains(f"/{pid}/"))["question"].to_list()
        new = out.filter(pl.col("id").str.contains(f"/{pid}/"))["question"].to_list()
        assert sorted(new) == sorted(orig)
        prompt = json.loads(df.filter(pl.col("id").str.contains(f"/{pid}/"))["meta"][0])["prompt"]
        assert all(q.startswith(f"Prompt: {json.dumps(prompt)}") for q in new)
    # the single-example prompt p3 cannot be shuffled: its clause is stripped, its prompt kept
    lone = out.filter(pl.col("id").str.contains("/p3/"))["question"][0]
    assert lone.endswith("Removed: one part.") and lone.startswith('Prompt: "a"')


def _prompt_line(question: str) -> str:
    return question.split("\n", 1)[0]


def test_controls_are_asked_alike_in_training_and_test_and_never_cross_prompts():
    """The no_signal control of a test row is decided over the whole test split (every
    prompt with all of its rows, as training applies it before its draw), not over the
    balanced draw: a prompt the draw leaves with one row still gets another question of the
    same prompt. No question, in training or test, names another prompt."""
    from selfexplain.data.draws import training_rows
    from selfexplain.data.variants import apply_control, controlled_rows

    df = ablation_frame()
    test = df.with_columns(split=pl.lit("test"))
    one_each = test.filter(pl.col("id").is_in(["ablation/t/p1/t0", "ablation/t/p2/t1"]))
    asked = controlled_rows(one_each, test, "ablation", "no_signal", 3)
    whole = apply_control(test, "ablation", "no_signal", 3)
    expected = whole.filter(pl.col("id").is_in(one_each["id"].implode()))
    assert asked["question"].to_list() == expected["question"].to_list()
    assert asked["answer"].to_list() == one_each["answer"].to_list()
    assert all(a != b for a, b in zip(asked["question"], one_each["question"], strict=True))
    for rows in (
        asked,
        training_rows(
            df, "ablation", "no_signal", 3, n_train=None, n_variant=None, val_fraction=0.0
        )[0],
    ):
        for q, m in zip(rows["question"], rows["meta"], strict=True):
            assert _prompt_line(q) == f"Prompt: {json.dumps(json.loads(m)['prompt'])}"
    assert controlled_rows(one_each, test, "ablation", "trained", 3).equals(one_each)


def test_shuffle_signal_is_deterministic_in_seed():
    df = ablation_frame()
    a, b = shuffle_signal(df, "ablation", seed=3), shuffle_signal(df, "ablation", seed=3)
    assert a["question"].to_list() == b["question"].to_list()
    variants = {tuple(shuffle_signal(df, "ablation", seed=s)["question"]) for s in range(8)}
    assert len(variants) > 1  # the seed chooses among the possible shuffles


def test_withhold_signal_patching_keeps_prompt_text_and_changes_position_or_layers():
    rows = []
    for pos in range(3):
        for start in (0, 4):
            meta = {
                "pair_id": "pair-1",
                "clean": "The capital of Peru is",
                "counterfactual": "The capital of Chile is",
                "orig_token": " Lima",
                "position": pos,
                "token": f"t{pos}",
                "layer_start": start,
                "layer_end": start + 3,
                "changed": pos == 2,
                "new_token": " Santiago" if pos == 2 else None,
            }
            rows.append(
                {
                    "id": f"patching/x/pair-1/{start}/{pos}",
                    "task": "patching",
                    "target": "x",
                    "split": "test",
                    "question": patching_question(meta),
                    "answer": change_answer(meta["changed"], meta["new_token"]),
                    "vector": None,
                    "meta": json.dumps(meta),
                }
            )
    df = pl.DataFrame(rows, schema_overrides={"vector": pl.List(pl.Float32)})
    out = withhold_signal(df, "patching", seed=1)
    assert out["answer"].to_list() == df["answer"].to_list()
    assert all(a != b for a, b in zip(out["question"], df["question"], strict=True))
    assert all(q.startswith('Prompt: "The capital of Peru is"') for q in out["question"])
    assert sorted(out["question"]) == sorted(df["question"])


# ------------------------------------------------------------------ the matrix


def matrix_config(**extra) -> dict:
    base = {
        "tasks": ["ablation", "patching", "features"],
        "targets": ["a", "b"],
        "explainers": ["a", "b"],
        "variants": ["trained", "untrained", "no_signal", "nearest_neighbour"],
        "seeds": [0, 1, 2],
        "control_seeds": [0],
        "controls_for": "all",
        "train": {"n_train": 80, "scaling": [0.125, 0.25, 0.5]},
    }
    return base | extra


def test_matrix_runs_cover_every_pair_variant_and_seed():
    cfg = matrix_config()
    assert scaling_variants(cfg) == ["n10", "n20", "n40"]
    assert [variant_n_train(v, 80) for v in ("trained", "untrained", "n20", "no_signal")] == [
        80,
        0,
        20,
        80,
    ]
    assert variant_seeds(cfg, "trained") == [0, 1, 2]
    assert variant_seeds(cfg, "n10") == [0] and variant_seeds(cfg, "untrained") == [0]
    assert variant_seeds(cfg | {"control_seeds": None}, "no_signal") == [0, 1, 2]
    all_runs = runs(cfg)
    assert len(set(all_runs)) == len(all_runs)
    # per (task, pair): 3 trained + untrained + no_signal + 3 scaling; features + nearest_neighbour
    assert len(all_runs) == 3 * 4 * 8 + 4
    by = {(r.task, r.variant) for r in all_runs}
    assert ("ablation", "nearest_neighbour") not in by and ("patching", "no_signal") in by
    rel = {(r.target, r.explainer): r.relation for r in all_runs}
    assert rel == {("a", "a"): "self", ("b", "b"): "self", ("a", "b"): "other", ("b", "a"): "other"}


def test_controls_for_self_keeps_the_lm_controls_to_self_pairs():
    """controls_for self: other pairs keep trained (all seeds), the data-scaling runs (the
    trained recipe on fewer rows: the scaling curve has self and other) and the model-free
    baselines; untrained and no_signal run only where the explainer is the target."""
    cfg = matrix_config(variants=["trained", "untrained", "no_signal", "surface"])
    cfg["tasks"] = ["ablation"]
    mine = runs(cfg | {"controls_for": "self"})
    assert set(mine) < set(runs(cfg))
    other = {(r.variant, r.seed) for r in mine if r.relation == "other"}
    scaling = {(f"n{n}", s) for n in (10, 20, 40) for s in variant_seeds(cfg, "n10")}
    assert other == {("trained", 0), ("trained", 1), ("trained", 2), ("surface", 0)} | scaling
    self_variants = {r.variant for r in mine if r.relation == "self"}
    assert self_variants == {"trained", "untrained", "no_signal", "surface", "n10", "n20", "n40"}
    assert runs({k: v for k, v in cfg.items() if k != "controls_for"}) == mine  # the default


def test_single_target_tasks_run_the_first_target_only():
    """single_target_tasks: those tasks run the first target; the others every target."""
    from selfexplain.data.matrix import targets_for

    cfg = matrix_config(variants=["trained"])
    cfg["tasks"] = ["ablation", "patching"]
    cfg["single_target_tasks"] = ["ablation"]
    assert targets_for(cfg, "ablation") == ["a"] and targets_for(cfg, "patching") == ["a", "b"]
    by_task = {(r.task, r.target) for r in runs(cfg)}
    assert by_task == {("ablation", "a"), ("patching", "a"), ("patching", "b")}
    assert targets_for(cfg | {"single_target_tasks": []}, "ablation") == ["a", "b"]


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake dry run as {rule: count}."""
    stats = output.split("Job stats:")[1]
    counts = {}
    for line in stats.splitlines()[3:]:
        m = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def test_dag_expands_to_the_matrix(tmp_path):
    cfg = tmp_path / "matrix.yaml"
    cfg.write_text(
        (REPO / "tests/data/tiny.yaml").read_text()
        + "\n"
        + yaml.safe_dump(
            {
                "models": {"tl": "tiny-random-llama", "tg": "tiny-random-gemma"},
                "tasks": ["ablation", "patching", "features"],
                "targets": ["tl", "tg"],
                "explainers": ["tl", "tg"],
                "single_target_tasks": [],
                "variants": ["trained", "untrained", "no_signal", "nearest_neighbour"],
                "seeds": [0, 1, 2],
                "control_seeds": [0],
                "train": {"n_train": 24, "scaling": [0.25, 0.5], "epochs": 1},
            }
        )
    )
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    counts = job_counts(out)
    pairs, tasks = 4, 3
    trained_per_pair = 3 + 1 + 2  # trained x 3 seeds, no_signal, n6 and n12 once each
    assert counts["train_explainer"] == tasks * pairs * trained_per_pair
    assert counts["evaluate"] == tasks * pairs * (trained_per_pair + 1) + pairs  # + untrained, nn
    for rule in ("get_model", "label_ablation", "label_patching", "collect_activations"):
        assert counts[rule] == 2, rule
    for rule in ("summarize", "summary_table", "compute_table", "self_vs_other_figure"):
        assert counts[rule] == 1, rule
    assert counts["scaling_figure"] == counts["baselines_figure"] == 1
    assert "results/eval/features/tl/tg/n6/s0.parquet" in out  # cross-width pair, scaling
    assert "results/explainers/patching/tg/tl/no_signal/s0/" in out
    assert "results/eval/ablation/tg/tg/n12/s1.parquet" not in out  # scaling: control seeds only


def test_paper_config_builds_the_full_dag_offline(tmp_path):
    (tmp_path / "config").symlink_to(REPO / "config")  # train.deepspeed is relative to the workdir
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(REPO / "config/paper.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    assert cfg["offline"] is False
    counts = job_counts(proc.stdout + proc.stderr)
    n_runs = len(runs(yaml.safe_load((REPO / "config/config.yaml").read_text()) | cfg))
    assert counts["evaluate"] == n_runs
    models = len(set(cfg["targets"]) | set(cfg["explainers"]))
    assert counts["get_model"] == models
    assert counts["label_patching"] == len(cfg["targets"])


# ------------------------------------------------------------------ tables


def change_eval(task, target, explainer, variant, seed, n_train, correct: int, n: int = 10):
    """Per-example evaluation rows with `correct` of n exact answers."""
    gold = [change_answer(i % 2 == 0, " x" if i % 2 == 0 else None) for i in range(n)]
    pred = [g if i < correct else "nonsense" for i, g in enumerate(gold)]
    labels = eval_labels(task, target, explainer, variant, seed, n_train)
    base = pl.DataFrame({"id": [f"e{i}" for i in range(n)]}).with_columns(
        *[pl.lit(v).alias(k) for k, v in labels.items()]
    )
    return pl.concat([base, score_change_rows(gold, pred)], how="horizontal")


def test_tidy_table_has_required_columns_and_relation():
    evals = [
        change_eval("ablation", "a", "a", "trained", 0, 40, 7),
        change_eval("ablation", "a", "b", "trained", 0, 40, 4),
        change_eval("ablation", "b", "a", "n10", 0, 10, 5),
    ]
    table = summarize(evals, n_boot=50)
    assert set(TIDY) <= set(table.columns)
    em = table.filter(pl.col("metric") == "exact_match")
    rel = {(r["target"], r["explainer"]): r["relation"] for r in em.iter_rows(named=True)}
    assert rel == {("a", "a"): "self", ("a", "b"): "other", ("b", "a"): "other"}
    assert em.filter(pl.col("explainer") == "b")["value"][0] == pytest.approx(0.4)
    assert em.filter(pl.col("variant") == "n10")["n_train"][0] == 10


def test_seed_summary_mean_and_t_interval_over_seeds():
    evals = [
        change_eval("patching", "a", "a", "trained", s, 40, c) for s, c in enumerate((5, 6, 7))
    ]
    evals.append(change_eval("patching", "a", "a", "untrained", 0, 0, 2))
    summary = seed_summary(summarize(evals, n_boot=50))
    em = summary.filter(pl.col("metric") == "exact_match")
    trained = em.filter(pl.col("variant") == "trained").row(0, named=True)
    half = 4.303 * 0.1 / math.sqrt(3)  # t_{0.975,2} * sd / sqrt(n), sd of (.5, .6, .7) = .1
    assert trained["mean"] == pytest.approx(0.6)
    assert trained["ci_lo"] == pytest.approx(0.6 - half) and trained["ci_hi"] == pytest.approx(
        0.6 + half
    )
    assert trained["ci"] == "seeds" and trained["n_seeds"] == 3 and trained["n"] == 10
    once = em.filter(pl.col("variant") == "untrained").row(0, named=True)
    assert once["ci"] == "bootstrap" and once["mean"] == pytest.approx(0.2)
    assert once["ci_lo"] <= 0.2 <= once["ci_hi"]


def test_mean_ci_and_t_quantiles():
    assert t_quantile_975(2) == pytest.approx(4.303)
    assert t_quantile_975(31) == pytest.approx(2.0395, abs=2e-4)
    assert t_quantile_975(1000) == pytest.approx(1.9623, abs=2e-4)
    mean, lo, hi = mean_ci([1.0, 1.0, 1.0])
    assert (mean, lo, hi) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        mean_ci([1.0])


def test_compute_table_sums_benchmark_files(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    files = {
        "results/benchmarks/train_explainer/ablation/a/b/trained/s0.tsv": (10.0, 900.0),
        "results/benchmarks/train_explainer/ablation/a/b/trained/s1.tsv": (30.0, 1100.0),
        "results/benchmarks/evaluate/ablation/a/a/untrained/s0.tsv": (5.0, 500.0),
        "results/benchmarks/get_model/b.tsv": (2.0, 300.0),
        "results/benchmarks/label_patching/a.tsv": (7.0, 700.0),
    }
    paths = []
    for rel, (s, rss) in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{s}\t0:00:{int(s):02d}\t{rss}\t1\t1\t1\t0\t0\t50\t{s}\n")
        paths.append(path)
    assert parse_benchmark(paths[0]) == {
        "rule": "train_explainer",
        "task": "ablation",
        "model": "b",
        "variant": "trained",
    }
    table = compute_table(read_benchmarks(paths))
    train = table.filter(pl.col("rule") == "train_explainer").row(0, named=True)
    assert train["jobs"] == 2 and train["wall_s_total"] == 40.0 and train["wall_s_max"] == 30.0
    assert train["max_rss_mb"] == 1100.0 and train["model"] == "b"
    assert table.filter(pl.col("rule") == "label_patching")["task"][0] == "patching"
    assert len(table) == 4
    compute_figure(table, tmp_path / "compute.png")
    assert (tmp_path / "compute.png").read_bytes()[:4] == b"\x89PNG"


def test_matrix_figures_from_a_tiny_table(tmp_path):
    evals = []
    for target, explainer in (("a", "a"), ("a", "b"), ("b", "b"), ("b", "a")):
        for seed, correct in enumerate((6, 7)):
            evals.append(change_eval("ablation", target, explainer, "trained", seed, 40, correct))
        evals.append(change_eval("ablation", target, explainer, "n10", 0, 10, 3))
        evals.append(change_eval("ablation", target, explainer, "untrained", 0, 0, 0))
        evals.append(change_eval("ablation", target, explainer, "no_signal", 0, 40, 5))
    summary = seed_summary(summarize(evals, n_boot=50))
    sizes = {}
    for name, draw in MATRIX_FIGURES.items():
        path = Path(tmp_path) / f"{name}.png"
        draw(summary, path)
        assert path.read_bytes()[:4] == b"\x89PNG", name
        sizes[name] = path.stat().st_size
    empty = Path(tmp_path) / "empty.png"
    MATRIX_FIGURES["self_vs_other"](summary.filter(pl.col("variant") == "none"), empty)
    assert all(s > empty.stat().st_size for s in sizes.values())  # real panels, not the notice
