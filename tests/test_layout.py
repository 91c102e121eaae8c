"""selfexplain.core.layout, the one definition of the results paths: every path round-trips through
its parser, and the rules' jobs write exactly the paths layout gives (a dry run)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_pipeline import REPO, run_snakemake

from selfexplain.cli.locate import explainer_dir
from selfexplain.core import layout
from selfexplain.core.layout import Run

RUNS = [
    Run("ablation", "smollm2", "smollm2", "trained", 0),
    Run("patching", "smollm2", "gemma", "no_signal", 2),
    Run("features", "tl", "tg", "n12", 10),
]


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.key)
def test_run_paths_round_trip(run, tmp_path):
    assert run.adapter_dir() == f"results/explainers/{run.key}"
    assert layout.parse_adapter_dir(run.adapter_dir()) == (Path("."), run)
    assert layout.parse_adapter_dir(tmp_path / run.adapter_dir()) == (tmp_path, run)
    assert layout.parse_summary_file(run.summary_file()) == run
    for rule in layout.RUN_RULES:
        assert layout.parse_benchmark(run.benchmark_file(rule)) == {
            "rule": rule,
            "task": run.task,
            "model": run.explainer,
            "variant": run.variant,
        }
    # the CLI reads the same run from a real adapter directory
    adapter = tmp_path / run.adapter_dir()
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    info = explainer_dir(adapter)
    assert (info.task, info.target, info.explainer, info.variant, info.seed) == (
        run.task,
        run.target,
        run.explainer,
        run.variant,
        run.seed,
    )
    assert info.root == tmp_path.resolve()
    assert explainer_dir(adapter.parent).adapter == adapter  # a variant dir: its lowest seed


def test_other_paths_do_not_parse():
    assert layout.parse_adapter_dir("results/explainers/ablation/a/b/trained") is None
    assert layout.parse_adapter_dir("results/explainers/ablation/a/b/trained/seed0") is None
    assert layout.parse_adapter_dir("out/explainers/ablation/a/b/trained/s0") is None
    assert layout.parse_seed_dir("s7") == 7 and layout.parse_seed_dir("s7x") is None
    with pytest.raises(ValueError):
        layout.parse_summary_file("somewhere/train_summary.json")


def test_per_target_benchmarks_parse():
    assert layout.parse_benchmark(layout.benchmark_file("label_patching", "a")) == {
        "rule": "label_patching",
        "task": "patching",
        "model": "a",
    }
    assert layout.parse_benchmark(layout.benchmark_file("train_sae", "a")) == {
        "rule": "train_sae",
        "task": "features",
        "model": "a",
    }
    assert layout.parse_benchmark(layout.benchmark_file("get_model", "b"))["model"] == "b"
    # token identity trains the explainer: the job's model is the explainer, not the target
    assert layout.parse_benchmark(layout.benchmark_file("token_identity", "a", "b")) == {
        "rule": "token_identity",
        "task": "features",
        "model": "b",
    }


def test_pattern_is_the_wildcards():
    pattern = Run.pattern()
    key = "{task}/{target}/{explainer}/{variant}/s{seed}"
    assert pattern.eval_file() == f"results/eval/{key}.parquet"
    assert Run.of(RUNS[1]) == RUNS[1]


def dry_run_jobs(out: str) -> list[dict]:
    """rule, output, log, benchmark and wildcards of every job a dry run prints."""
    jobs = []
    for block in re.split(r"\n(?=rule \w+:\n)", out):
        m = re.match(r"rule (\w+):\n", block)
        if not m:
            continue
        job = {"rule": m.group(1)}
        for key in ("output", "log", "benchmark", "wildcards"):
            found = re.search(rf"^    {key}: (.*)$", block, re.M)
            job[key] = found.group(1).split(", ") if found else []
        job["wildcards"] = dict(w.split("=", 1) for w in job["wildcards"])
        jobs.append(job)
    return jobs


def test_rules_write_the_layout_paths(tmp_path):
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(REPO / "tests/data/tiny.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = dry_run_jobs(proc.stdout + proc.stderr)
    seen = set()
    for job in jobs:
        rule, w = job["rule"], job["wildcards"]
        if rule in layout.RUN_RULES:
            run = Run(w["task"], w["target"], w["explainer"], w["variant"], int(w["seed"]))
            if rule == "train_explainer":
                assert job["output"] == [run.adapter_file(), run.summary_file()]
            else:
                assert job["output"] == [run.eval_file()]
            assert job["log"] == [run.log_file(rule)]
            assert job["benchmark"] == [run.benchmark_file(rule)]
        elif rule.startswith("label_"):
            task = rule.removeprefix("label_")
            assert job["output"] == [layout.labels_file(task, w["target"])]
            assert job["benchmark"] == [layout.benchmark_file(rule, w["target"])]
        elif rule == "get_model":
            assert job["output"] == [layout.model_marker(w["model"])]
        elif rule == "train_sae":
            target = w["target"]
            assert job["output"] == [layout.sae_file(target), layout.sae_stats_file(target)]
        seen.add(rule)
    assert {"train_explainer", "evaluate", "label_ablation", "get_model", "train_sae"} <= seen


def test_full_fine_tuning_trains_and_evaluates_a_whole_model(tmp_path):
    """With train.method full the training jobs (rule train_explainer_full) write the whole
    model's weights and the evaluation jobs read them; a task whose train.per_task sets method
    lora keeps rule train_explainer and its adapter."""
    config = tmp_path / "full.yaml"
    config.write_text("train:\n  method: full\n  per_task:\n    patching: {method: lora}\n")
    tiny = str(REPO / "tests/data/tiny.yaml")
    proc = run_snakemake(tmp_path, "-n", "--configfile", tiny, str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = dry_run_jobs(proc.stdout + proc.stderr)
    trainings = [j for j in jobs if j["rule"].startswith("train_explainer")]
    assert {j["wildcards"]["task"] for j in trainings} == {
        "ablation",
        "patching",
        "hint",
        "features",
    }
    evaluations = {j["output"][0]: j for j in jobs if j["rule"] == "evaluate"}
    for job in trainings:
        w = job["wildcards"]
        run = Run(w["task"], w["target"], w["explainer"], w["variant"], int(w["seed"]))
        method = "lora" if run.task == "patching" else "full"
        rule = "train_explainer" if method == "lora" else "train_explainer_full"
        assert job["rule"] == rule
        assert job["output"] == [run.adapter_file(method), run.summary_file()]
        assert job["log"] == [run.log_file("train_explainer")]
        assert job["benchmark"] == [run.benchmark_file("train_explainer")]
        assert run.eval_file() in evaluations
    assert Run("hint", "t", "t", "trained", 0).adapter_file("full").endswith("/model.safetensors")
    evaluate_inputs = re.findall(
        r"^rule evaluate:\n    input: (.*)$", proc.stdout + proc.stderr, re.M
    )
    weights = [p for line in evaluate_inputs for p in line.split(", ") if "/explainers/" in p]
    assert weights and all(
        p.endswith("adapter_model.safetensors") == ("/patching/" in p) for p in weights
    )


def test_ask_finds_a_fully_fine_tuned_explainer(tmp_path):
    """selfexplain ask accepts a fully fine-tuned explainer directory (or its variant dir)."""
    from selfexplain.cli.locate import find_adapter

    run = tmp_path / "trained" / "s0"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "train_summary.json").write_text("{}")
    assert find_adapter(run) == run and find_adapter(tmp_path / "trained") == run
