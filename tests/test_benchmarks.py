"""Smoke test of the benchmark scripts: each main() runs on a tiny random model with tiny sizes
and writes a JSON record with the keys the combined table (benchmarks/run_all.py) reads."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

from selfexplain.core.schema import ExplainerExample, to_frame, write_parquet
from selfexplain.core.settings import TrainConfig
from selfexplain.models import load, resolve
from selfexplain.train.weights import lora_model

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
ENV_KEYS = {"torch", "date", "host_cpu", "threads"}


@pytest.fixture(scope="module")
def bench():
    """Import benchmark modules by name (the scripts import their sibling _common)."""
    sys.path.insert(0, str(BENCH))
    threads = torch.get_num_threads()
    try:
        yield importlib.import_module
    finally:
        torch.set_num_threads(threads)  # the scripts set the thread count
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny model dir, an untrained LoRA adapter for it and a small examples parquet."""
    root = tmp_path_factory.mktemp("bench")
    model_dir = resolve("tiny-random-llama", root / "model")
    model, tok = load(model_dir)
    lora_model(model, TrainConfig()).save_pretrained(root / "adapter")
    examples = []
    for i in range(32):
        changed = i % 2 == 0
        examples.append(
            ExplainerExample(
                id=f"ablation/tiny/p{i}/t0",
                task="ablation",
                target="tiny",
                split="test" if i % 4 == 3 else "train",
                question=f'Prompt: "The capital of France is"\nIf token {i % 5} is removed, '
                "what is the model's next token?",
                answer='changes to " Paris"' if changed else "unchanged",
                meta={"changed": changed},
            )
        )
    write_parquet(to_frame(examples), root / "labels.parquet")
    return root


def _check(path: Path, record: dict, keys: set[str]) -> dict:
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(record, default=str))
    missing = (keys | ENV_KEYS) - set(on_disk)
    assert not missing, missing
    return on_disk


def test_patching_labels(bench, workspace):
    out = workspace / "out" / "patching_labels.json"
    args = ["--model", str(workspace / "model"), "--pairs", "1", "--scales", "1,2"]
    rec = bench("patching_labels").main([*args, "--threads", "1", "--out", str(out)])
    rec = _check(out, rec, {"batched_s", "naive_s", "speedup", "identical_labels", "scaling"})
    assert rec["identical_labels"] and rec["max_abs_prob_diff"] < 1e-5
    assert [s["scale"] for s in rec["scaling"]] == [1, 2]
    assert rec["scaling"][1]["rows"] > rec["scaling"][0]["rows"] > 0


def test_ablation_labels(bench, workspace):
    out = workspace / "out" / "ablation_labels.json"
    args = ["--model", str(workspace / "model"), "--per-kind", "1", "--kinds", "fact,hint_mcq"]
    rec = bench("ablation_labels").main([*args, "--threads", "1", "--out", str(out)])
    rec = _check(out, rec, {"batched_s", "naive_s", "speedup", "max_abs_score_diff", "removals"})
    assert rec["prompts"] == 2 and rec["kinds"] == ["fact", "hint_mcq"]
    assert rec["max_abs_score_diff"] < 1e-4
    assert set(rec["seconds"]) == {"batched", "llm_attribution", "ppe1"}


def test_hint_following(bench, workspace):
    out = workspace / "out" / "hint_following.json"
    args = [
        "--model",
        f"tiny={workspace / 'model'}",
        "--forms",
        "plain,strong",
        "--read",
        "raw,chat",
    ]
    rec = bench("hint_following").main([*args, "--n", "3", "--threads", "1", "--out", str(out)])
    rec = _check(out, rec, {"results"})
    got = [(r["model"], r["form"], r["chat"]) for r in rec["results"]]
    assert got == [("tiny", f, c) for f in ("plain", "strong") for c in (False, True)]
    for r in rec["results"]:
        assert r["n"] == 3 and 0 <= r["follow_rate"] <= r["change_rate"] <= 1
        assert 0 < r["letter_mass_without"] <= 1
        assert r["change_ci"][0] <= r["change_rate"] <= r["change_ci"][1]


def test_train_throughput(bench, workspace):
    out = workspace / "out" / "train_throughput.json"
    args = ["--model", str(workspace / "model"), "--labels", str(workspace / "labels.parquet")]
    args += ["--steps", "1", "--scales", "1,2", "--warmup-steps", "0"]
    args += ["--matmul-size", "128", "--matmul-repeats", "2"]
    rec = bench("train_throughput").main([*args, "--threads", "1", "--out", str(out)])
    rec = _check(
        out,
        rec,
        {"tokens_per_s", "achieved_flops_6n", "matmul_ceiling_flops", "ratio_6n", "runs"},
    )
    assert [r["steps"] for r in rec["runs"]] == [1, 2]
    for run in rec["runs"]:  # every example seen once: hook count == summary count
        assert run["tokens"] == run["summary_tokens"] > 0
        assert 0 < run["logit_rows"] < run["tokens"]  # logits only where an answer is predicted
    assert rec["params"] > rec["trainable_params"] > 0
    assert 0 < rec["executed_flops"] < rec["achieved_flops_6n"]
    assert rec["train_config"]["batch_size"] == 8 and rec["train_config"]["lora_r"] == 16


def test_generation(bench, workspace):
    out = workspace / "out" / "generation.json"
    args = ["--model", str(workspace / "model"), "--adapter", str(workspace / "adapter")]
    args += ["--labels", str(workspace / "labels.parquet"), "--n", "4", "--batch-size", "2"]
    args += ["--max-new-tokens", "3", "--shared-batch-sizes", "4"]
    rec = bench("generation").main([*args, "--threads", "1", "--out", str(out)])
    rec = _check(out, rec, {"batched_s", "naive_s", "speedup", "identical_answers"})
    assert rec["questions"] == 4 and rec["identical_shared"] == 4 and rec["shared_s"] > 0
    larger = rec["shared_batch_sizes"]["shared4"]  # one group of 4 from one cached prefix
    assert larger["batch_size"] == 4 and larger["identical_to_batched"] == 4


def test_run_all_table(bench, workspace):
    """The combined table has one row per benchmark found (plus the scaling row)."""
    run_all = bench("run_all")
    folder = workspace / "out"
    records = run_all.load_records(folder)
    if len(records) < len(run_all.NAMES):
        pytest.skip("needs the four benchmark tests above to have run")
    table = run_all.main(["--table-only", "--dir", str(folder)])
    body = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(body) == 1 + 5  # header + patching, scaling, ablation, training, generation


def test_answer_loss(bench, workspace):
    out = workspace / "out" / "answer_loss.json"
    args = ["--model", str(workspace / "model"), "--labels", str(workspace / "labels.parquet")]
    rec = bench("answer_loss").main([*args, "--repeats", "1", "--threads", "1", "--out", str(out)])
    rec = _check(out, rec, {"best_s", "speedup", "loss", "max_abs_loss_diff"})
    assert rec["max_abs_loss_diff"] < 1e-5
    assert 0 < rec["answer_positions"] < rec["tokens"]


def test_width_map(bench, tmp_path):
    source = resolve("tiny-random-llama", tmp_path / "llama")
    model = resolve("tiny-random-gemma", tmp_path / "gemma")
    out = tmp_path / "width_map.json"
    args = ["--source", str(source), "--model", str(model), "--n-test", "20", "--threads", "1"]
    args += ["--ridges", "0", "1e-3", "--epochs", "0", "2", "--out", str(out)]
    rec = _check(out, bench("width_map").main(args), {"rows", "n_test"})
    grid = [(r["ridge"], r["epochs"]) for r in rec["rows"]]
    assert rec["n_test"] == 20 and grid == [(0.0, 0), (0.0, 2), (1e-3, 0), (1e-3, 2)]
    for row in rec["rows"]:
        assert 0 <= row["top1"] <= row["top5"] <= 1 and row["n_anchors"] > 20
        assert row["seconds"] >= 0 and -1 <= row["cosine"] <= 1
    # the contrastive passes leave 5% of the anchors out of the fit to choose the pass kept
    assert rec["rows"][1]["n_anchors"] < rec["rows"][0]["n_anchors"]


def test_one_cell(bench, workspace):
    """One cell end to end on toy patching labels: training with the validation curve, the
    trained explainer and the baselines on the same rows, paired comparisons."""
    from toy_data import toy_patching_rows

    write_parquet(toy_patching_rows(8), workspace / "patching.parquet")
    out = workspace / "out" / "one_cell.json"
    args = ["--task", "patching", "--labels", str(workspace / "patching.parquet")]
    args += ["--model", str(workspace / "model"), "--out", str(workspace / "cell")]
    args += ["--set", "epochs=1", "--set", "eval_steps=2", "--set", "n_train=null"]
    args += ["--set", "val_fraction=0.6"]  # pairs 4 and 6 of the toy set validate
    rec = bench("one_cell").main([*args, "--record", str(out)])
    rec = _check(out, rec, {"train_seconds", "validation", "metrics", "comparisons"})
    assert set(rec["metrics"]) == {"trained", "surface", "constant"}
    rows = pl.read_parquet(workspace / "cell" / "eval_trained.parquet")
    assert rec["validation"][0]["step"] == 0 and rec["n_test"] == rows["in_sample"].sum()
    # the heatmap pairs' every cell is scored too, for the heatmap agreement
    assert rows["heatmap"].sum() > 0 and 0 <= rec["metrics"]["trained"]["heatmap_agreement"] <= 1
    metrics = {r["metric"] for r in rec["comparisons"]["trained - surface"]}
    assert {"balanced_accuracy", "auc", "exact_match"} <= metrics


def test_sweep(bench, workspace):
    """Two learning rates on toy patching labels: one validation curve each, read at the end
    of every epoch, in the record and its markdown table."""
    from toy_data import toy_patching_rows

    write_parquet(toy_patching_rows(8), workspace / "sweep.parquet")
    out = workspace / "out" / "sweep.json"
    args = ["--task", "patching", "--labels", str(workspace / "sweep.parquet")]
    args += ["--model", str(workspace / "model"), "--out", str(workspace / "sweep")]
    args += ["--lr", "1e-3", "1e-2", "--epochs", "2", "--set", "eval_steps=2"]
    args += ["--set", "val_fraction=0.6", "--record", str(out)]
    rec = _check(out, bench("sweep").main(args), {"runs", "table"})
    assert [r["settings"]["lr"] for r in rec["runs"]] == [1e-3, 1e-2]
    for run in rec["runs"]:
        assert run["settings"]["patience"] == 0 and run["validation"][0]["step"] == 0
        assert run["validation"][-1]["step"] == run["steps"]
    lines = rec["table"].splitlines()
    assert len(lines) == 4 and "epoch 2 AUC" in lines[0] and lines[2].startswith("| 0.001 |")


def test_gpu_run_dry_run(bench, tmp_path):
    """The GPU script plans the default matrix with 3 seeds through the same pipeline (ZeRO-2
    config merged in) and writes its record labelled with the device; no GPU needed."""
    out = tmp_path / "out"
    rec = bench("gpu_run").main(["--dry-run", "--workdir", str(tmp_path / "w"), "--out", str(out)])
    saved = json.loads((out / "gpu_dry-run.json").read_text())
    assert saved["device"] == rec["device"] == "cpu (dry run)" and saved["dry_run"]
    assert "--configfile config/gpu.yaml" in saved["command"]
    jobs = saved["planned_jobs"]
    assert jobs["train_explainer"] > 0 and jobs["evaluate"] > jobs["train_explainer"]
    assert saved["matmul_ceiling"]["median_flops"] > 0 and ENV_KEYS <= set(saved)


@pytest.mark.e2e
def test_pipeline_scaling(bench, tmp_path):
    """The whole pipeline (one patching cell of the tiny model) at 1x and 2x the pairs, each
    from an empty results directory: rows, steps and phase times are read back and fitted."""
    override = tmp_path / "cell.yaml"
    override.write_text(
        "tasks: [patching]\nexplainers: [tiny]\nvariants: [trained, constant]\n"
        "train: {n_train: null}\n"
    )
    out = tmp_path / "out"
    args = ["--configfile", str(BENCH.parent / "tests/data/tiny.yaml"), str(override)]
    args += ["--pairs", "3", "--scales", "1,2", "--candidates-per-pair", "40"]
    args += ["--workdir", str(tmp_path / "w"), "--out", str(out)]
    rec = bench("pipeline_scaling").main(args)
    saved = json.loads((out / "pipeline_scaling.json").read_text())
    assert [r["pairs"] for r in saved["runs"]] == [3, 6] and ENV_KEYS <= set(saved)
    small, large = rec["runs"]
    assert small["kept_pairs"] == 3 and large["kept_pairs"] == 6
    assert 0 < small["n_train"] < large["n_train"]  # the training rows grow with the pairs
    for run in rec["runs"]:
        assert [r["run"] for r in run["training_runs"]] == ["patching/tiny/tiny/trained/s0"]
        assert run["phase_seconds"]["training"] > 0 and run["phase_seconds"]["labels"] > 0
        assert run["wall_seconds"] > sum(run["phase_seconds"].values()) / 2  # 2 cores
        vs_constant = [c for c in run["comparisons"] if c["comparison"] == "trained - constant"]
        assert {c["metric"] for c in vs_constant} == {"balanced_accuracy", "auc"}
    assert set(rec["fits"]) == {"wall_seconds", "labels", "training", "evaluation", "other",
                                "training_per_step"}  # fmt: skip
    assert rec["fits"]["training"]["slope"] == pytest.approx(
        (large["phase_seconds"]["training"] - small["phase_seconds"]["training"])
        / (large["n_train"] - small["n_train"])
    )  # two points: the line through both


def test_packed_training(bench, workspace):
    """Both tasks' rows from whole groups of the training draw; packing computes fewer tokens."""
    paths = {}
    for task, key in (("patching", "pair_id"), ("ablation", "prompt_id")):
        rows = [
            ExplainerExample(
                id=f"{task}/tiny/g{g}/q{q}",
                task=task,
                target="tiny",
                split="train",
                question=f'Prompt: "The capital of country {g} is"\nIf token {q} goes, what then?',
                answer='changes to " Paris"' if q % 2 else "unchanged",
                meta={"changed": bool(q % 2), key: f"g{g}", "kind": "fact"},
            )
            for g in range(6)
            for q in range(8)
        ]
        paths[task] = workspace / f"{task}_pack.parquet"
        write_parquet(to_frame(rows), paths[task])
    out = workspace / "out" / "packed_training.json"
    args = ["--model", str(workspace / "model"), "--rows", "16", "--packs", "4"]
    args += [
        "--precisions",
        "bf16",
        "--patching",
        str(paths["patching"]),
        "--ablation",
        str(paths["ablation"]),
    ]
    args += ["--matmul-size", "128", "--matmul-repeats", "2"]
    rec = bench("packed_training").main([*args, "--threads", "1", "--out", str(out)])
    rec = _check(out, rec, {"tasks", "matmul_ceiling_flops", "packs"})
    for task in ("patching", "ablation"):
        unpacked, packed, unpacked_bf16, packed_bf16 = rec["tasks"][task]["runs"]
        assert [r["pack"] for r in rec["tasks"][task]["runs"]] == [1, 4, 1, 4]
        assert (unpacked["precision"], packed_bf16["precision"]) == ("fp32", "bf16")
        assert packed_bf16["tokens_computed"] == packed["tokens_computed"]
        assert unpacked_bf16["speedup"] > 0 and packed_bf16["ratio_executed"] > 0
        assert unpacked["examples"] == packed["examples"] >= 16
        assert packed["tokens_computed"] < unpacked["tokens_computed"] == unpacked["row_tokens"]
        assert packed["sequences"] < unpacked["sequences"]
        assert 0 < packed["ratio_executed"] and packed["speedup"] > 0


def test_token_identity_runs(bench, tmp_path):
    """Two runs of the check on tiny models, with other training sizes: the --set keys reach the
    check and train.*, the records keep the result, and compare pairs them on the same words
    (and refuses records scored on other words)."""
    target = resolve("tiny-random-llama", tmp_path / "llama")
    explainer = resolve("tiny-random-gemma", tmp_path / "gemma")
    module = bench("token_identity_runs")
    common = ["run", "--target", str(target), "--explainer", str(explainer)]
    common += ["--out", str(tmp_path / "adapters"), "--set", "n_test=6", "--set", "n_val=4"]
    common += ["--set", "scales=[1.0]", "--set", "epochs=1", "--set", "batch_size=4"]
    records = {}
    for n_train in (8, 16):
        out = tmp_path / f"n{n_train}.json"
        args = [*common, "--name", f"n{n_train}", "--set", f"n_train={n_train}"]
        records[n_train] = _check(out, module.main([*args, "--record", str(out)]), {"result"})
        result = records[n_train]["result"]
        assert (result["n_train"], result["n_test"], result["n_val"]) == (n_train, 6, 4)
        assert result["steps"] == n_train // 4 and result["relation"] == "other"
    diff = module.main(["compare", str(tmp_path / "n16.json"), str(tmp_path / "n8.json")])
    hits = {
        n: sum(
            w["prediction"].strip().lower() == w["token"].lower() for w in r["result"]["per_word"]
        )
        for n, r in records.items()
    }
    assert diff["n_words"] == 6 and diff["diff"] == pytest.approx((hits[16] - hits[8]) / 6)
    other = json.loads((tmp_path / "n8.json").read_text())
    other["result"]["per_word"][0]["token"] = "elsewhere"
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="different words"):
        module.main(["compare", str(tmp_path / "other.json"), str(tmp_path / "n8.json")])
