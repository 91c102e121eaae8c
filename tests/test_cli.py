"""The `selfexplain` command, in-process on a tiny workspace laid out like the pipeline's."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selfexplain.cli import COMMANDS, build_parser, main
from selfexplain.cli.ask_ablation import trained_on_last_token
from selfexplain.cli.ask_patching import _patching_layout
from selfexplain.cli.locate import ExplainerDir, explainer_dir
from selfexplain.core.formats import change_answer
from selfexplain.core.schema import read_examples, to_frame, write_parquet
from selfexplain.core.settings import (
    AblationSettings,
    EvaluateSettings,
    FeatureSettings,
    PatchingSettings,
    TrainConfig,
)
from selfexplain.metrics import change_metrics, score_change_rows
from selfexplain.models import decoder_layers, load, resolve
from selfexplain.prompts import Prompt, hint_prompts, read_prompts_jsonl
from selfexplain.tasks.ablation import (
    ablatable_positions,
    ablation_examples,
    ablation_labels,
    encode,
)
from selfexplain.tasks.hint import hint_examples, hint_rows
from selfexplain.tasks.patching import patching_examples, patching_rows, window_starts
from selfexplain.train.trainer import train_explainer

ABLATION = "results/explainers/ablation/tiny/tiny/trained"
PATCHING = "results/explainers/patching/tiny/tiny/trained"
MODEL = "resources/models/tiny"
PAIR_TEMPLATE = (
    "Question: What is the capital of {}?\nA. Paris\nB. Tokyo\nRespond with A or B.\nAnswer:"
)
CLEAN, CF = PAIR_TEMPLATE.format("France"), PAIR_TEMPLATE.format("Japan")
HINTED = "Hint: the answer is B.\nThe answer is"
HINT = "Hint: the answer is B.\n"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace as the pipeline writes it: a tiny target = explainer model, ablation and
    patching (window 2, starts 0 and 2) labels, and one LoRA explainer per task (1 epoch)."""
    root = tmp_path_factory.mktemp("ws")
    model_dir = resolve("tiny-random-llama", root / MODEL)
    model, tok = load(model_dir)
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-2, save_steps=1000, logging_steps=1, seed=0)
    prompts = [
        Prompt("p0", "custom", "The capital of France is"),
        Prompt("p1", "custom", HINTED, HINT),
    ]
    rows = ablation_labels(model, tok, prompts)
    examples = to_frame(ablation_examples(rows, "tiny", test_fraction=0.0))
    write_parquet(examples, root / "results/labels/ablation/tiny.parquet")  # last tokens kept
    train_explainer(model_dir, examples, root / ABLATION / "s0", cfg, root / "ckpt" / "a")
    clean = Prompt("pair-a-clean", "mcq", CLEAN, None, {"subject": "France"})
    cf = Prompt("pair-a-counterfactual", "mcq", CF, None, {"subject": "Japan"})
    rows = patching_rows(model, tok, clean, cf, window=2, layer_starts=[0, 2])
    examples = to_frame(patching_examples(rows, "tiny", test_fraction=0.0))
    write_parquet(examples, root / "results/labels/patching/tiny.parquet")
    train_explainer(model_dir, examples[:12], root / PATCHING / "s0", cfg, root / "ckpt" / "p")
    return root


@pytest.fixture(scope="module")
def tiny(ws):
    return load(ws / MODEL)


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _metric_line(records):
    m = change_metrics(
        score_change_rows([r["answer"] for r in records], [r["prediction"] for r in records])
    )
    return (
        f"has_changed_f1={m['has_changed_f1']:.3f} exact_match={m['exact_match']:.3f} "
        f"n={len(records)}"
    )


def test_ask_ablation_one_prompt(ws, tiny, tmp_path, capsys):
    _, tok = tiny
    text = "The capital of France is"
    out = tmp_path / "answers.jsonl"
    rc = main(
        ["ask", "ablation", "--explainer", str(ws / ABLATION / "s0"), "--prompt", text]
        + ["--out", str(out)]
    )
    stdout = capsys.readouterr().out
    assert rc == 0
    n = len(ablatable_positions(tok, encode(tok, text)))
    assert [int(p) for p in re.findall(r"^\s+(\d+)\s", stdout, re.M)] == list(range(n))
    assert "target's next token:" in stdout and "predicted" in stdout and "true" in stdout
    records = _records(out)
    assert len(records) == n
    assert [r["position"] for r in records] == list(range(n))
    for r in records:
        assert json.dumps(r["token"], ensure_ascii=False)[:20] in stdout
    # the last line is the pipeline's metrics on exactly the questions written to --out
    assert stdout.strip().splitlines()[-1] == _metric_line(records)


def test_ask_ablation_prompts_file_matches_direct_labels(ws, tiny, tmp_path, capsys):
    model, tok = tiny
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"id": "a", "prompt": "7 - 3 ="})
        + "\n"
        + json.dumps({"id": "b", "prompt": HINTED, "hint": HINT})
        + "\n"
    )
    out = tmp_path / "answers.jsonl"
    # the variant directory (.../trained) resolves to its lowest seed
    args = ["ask", "ablation", "--explainer", str(ws / ABLATION), "--prompts", str(prompts)]
    assert main([*args, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    records = _records(out)
    direct = ablation_labels(model, tok, read_prompts_jsonl(prompts))
    n_tokens = sum(len(ablatable_positions(tok, encode(tok, t))) for t in ("7 - 3 =", HINTED))
    assert len(records) == len(direct) == n_tokens + 1  # + the hint row
    assert [r["unit"] for r in records].count("hint") == 1
    assert re.search(r"^\s+hint\s", stdout, re.M)
    for rec, row in zip(records, direct, strict=True):
        assert (rec["prompt_id"], rec["position"], rec["token"]) == (
            row["prompt_id"],
            row["position"],
            row["removed"],
        )
        assert rec["true_changed"] == row["changed"]
        assert rec["true_new_token"] == (row["new_token"] if row["changed"] else None)
        assert rec["answer"] == change_answer(row["changed"], row["new_token"])
    assert stdout.strip().splitlines()[-1] == _metric_line(records)

    # --no-truth asks the same questions (same answers) and prints only n
    out2 = tmp_path / "no_truth.jsonl"
    assert main([*args, "--no-truth", "--out", str(out2)]) == 0
    stdout = capsys.readouterr().out
    plain = _records(out2)
    assert [r["prediction"] for r in plain] == [r["prediction"] for r in records]
    assert all(r["true_changed"] is None and r["answer"] is None for r in plain)
    assert stdout.strip().splitlines()[-1] == f"n={len(records)}"


def test_ask_ablation_asks_the_last_token_only_where_the_explainer_learnt_it(
    ws, tiny, tmp_path, capsys
):
    """The pipeline's labels drop the last token's removal (ablation.drop_last): an explainer
    trained on them is not asked it, unless --keep-last; one trained with it is."""
    model, tok = tiny
    text = "The capital of France is"
    n = len(ablatable_positions(tok, encode(tok, text)))
    kept = ws / "results/labels/ablation/tiny.parquet"
    dropped = tmp_path / "dropped.parquet"
    rows = ablation_labels(model, tok, [Prompt("p0", "custom", text)], drop_last=True)
    write_parquet(to_frame(ablation_examples(rows, "tiny", test_fraction=0.0)), dropped)
    info = explainer_dir(ws / ABLATION / "s0")
    assert trained_on_last_token(info) and trained_on_last_token(info, str(kept))
    assert not trained_on_last_token(info, str(dropped))
    ask = ["ask", "ablation", "--explainer", str(ws / ABLATION / "s0"), "--prompt", text]
    for extra, n_asked in (([], n), (["--labels", str(dropped)], n - 1)):
        for truth in ([], ["--no-truth"]):
            out = tmp_path / "answers.jsonl"
            assert main([*ask, *extra, *truth, "--out", str(out)]) == 0
            err = capsys.readouterr().err
            assert [r["position"] for r in _records(out)] == list(range(n_asked))
            assert ("not asked: removing each prompt's last token" in err) == (n_asked < n)
    assert main([*ask, "--labels", str(dropped), "--keep-last", "--out", str(out)]) == 0
    assert len(_records(out)) == n


def test_model_dirs_are_inferred_or_named(ws, tmp_path, capsys):
    # same adapter, but the target "ghost" has no resources/models/ghost
    adapter = tmp_path / "results/explainers/ablation/ghost/tiny/trained/s0"
    shutil.copytree(ws / ABLATION / "s0", adapter)
    args = ["ask", "ablation", "--explainer", str(adapter), "--prompt", "2 + 5 ="]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "selfexplain: error:" in err and "--target-model" in err
    assert str(tmp_path / "resources/models/ghost") in err and "Traceback" not in err
    model = str(ws / MODEL)
    assert main([*args, "--target-model", model, "--explainer-model", model, "--no-truth"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("n=")

    assert main(["ask", "ablation", "--explainer", str(tmp_path), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "adapter_config.json" in err and "--explainer" in err
    # an ablation explainer is not asked about patching
    args = ["ask", "patching", "--explainer", str(ws / ABLATION)]
    assert main([*args, "--clean", CLEAN, "--counterfactual", CF]) == 2
    assert "selfexplain ask ablation" in capsys.readouterr().err


def test_ask_patching_one_cell(ws, tiny, tmp_path, capsys):
    model, tok = tiny
    out = tmp_path / "cell.jsonl"
    args = ["ask", "patching", "--explainer", str(ws / PATCHING), "--clean", CLEAN]
    args += ["--counterfactual", CF, "--layer", "0", "--position", "1", "--out", str(out)]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "predicted" in stdout and "true" in stdout
    (rec,) = _records(out)
    # the window (2) comes from the label file the explainer was trained on
    assert (rec["layer_start"], rec["layer_end"], rec["position"]) == (0, 1, 1)
    truth = next(
        r
        for r in patching_rows(
            model,
            tok,
            Prompt("c-clean", "custom", CLEAN),
            Prompt("c-cf", "custom", CF),
            window=2,
            layer_starts=[0],
        )
        if r["position"] == 1
    )
    assert rec["true_changed"] == truth["changed"] and rec["token"] == truth["token"]
    assert stdout.strip().splitlines()[-1] == _metric_line([rec])

    assert main([*args[:-6], "--layer", "0", "--position", "999"]) == 2
    assert "--position 999" in capsys.readouterr().err


def test_ask_patching_heatmap(ws, tiny, tmp_path, capsys):
    model, tok = tiny
    png, out = tmp_path / "map.png", tmp_path / "grid.jsonl"
    args = ["ask", "patching", "--explainer", str(ws / PATCHING), "--clean", CLEAN]
    args += ["--counterfactual", CF, "--heatmap", str(png), "--out", str(out)]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = _records(out)
    n_pos = len(ablatable_positions(tok, encode(tok, CLEAN)))
    assert len(records) == 2 * n_pos
    assert {(r["layer_start"], r["layer_end"]) for r in records} == {(0, 1), (2, 3)}
    assert re.search(r"^\s+0-1\s+[#.?]+\s+[#.?]+\s+[.*]+$", stdout, re.M)
    assert stdout.strip().splitlines()[-1] == _metric_line(records)


HINT_EXPLAINER = "results/explainers/hint/tiny/tiny/trained"


@pytest.fixture(scope="module")
def hint_ws(ws):
    """The workspace with hint labels of the tiny target and a hint explainer trained on them."""
    model, tok = load(ws / MODEL)
    rows = hint_rows(model, tok, hint_prompts(8, seed=7))
    examples = to_frame(hint_examples(rows, "tiny", test_fraction=0.0))
    write_parquet(examples, ws / "results/labels/hint/tiny.parquet")
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-2, save_steps=1000, logging_steps=1, seed=0)
    train_explainer(ws / MODEL, examples, ws / HINT_EXPLAINER / "s0", cfg, ws / "ckpt" / "h")
    return ws


def test_ask_hint_one_prompt_and_a_file(hint_ws, tiny, tmp_path, capsys):
    model, tok = tiny
    prompts = hint_prompts(3, seed=11)
    out = tmp_path / "hint.jsonl"
    args = ["ask", "hint", "--explainer", str(hint_ws / HINT_EXPLAINER)]
    one = ["--prompt", prompts[0].text, "--hint", prompts[0].hint]
    assert main([*args, *one, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    (rec,) = _records(out)
    (truth,) = hint_rows(model, tok, prompts[:1])
    assert rec["chosen"] == truth["orig_token"] and rec["hinted"] == prompts[0].meta["hinted"]
    assert rec["true_changed"] == truth["changed"]
    assert rec["answer"] == change_answer(truth["changed"], truth["new_token"])
    assert "chosen" in stdout and "predicted" in stdout and "true" in stdout
    assert stdout.strip().splitlines()[-1] == _metric_line([rec])

    file = tmp_path / "prompts.jsonl"
    file.write_text(
        "".join(json.dumps({"id": p.id, "prompt": p.text, "hint": p.hint}) + "\n" for p in prompts)
    )
    assert main([*args, "--prompts", str(file), "--out", str(out)]) == 0
    records = _records(out)
    rows = hint_rows(model, tok, prompts)
    assert [r["prompt_id"] for r in records] == [p.id for p in prompts]
    assert [r["true_changed"] for r in records] == [r["changed"] for r in rows]
    assert capsys.readouterr().out.strip().splitlines()[-1] == _metric_line(records)
    # --no-truth asks the same questions (same answers) and prints only n
    assert main([*args, "--prompts", str(file), "--no-truth", "--out", str(out)]) == 0
    blind = _records(out)
    assert [r["prediction"] for r in blind] == [r["prediction"] for r in records]
    assert [r["chosen"] for r in blind] == [r["chosen"] for r in records]
    assert blind[0]["true_changed"] is None
    assert capsys.readouterr().out.strip().splitlines()[-1] == "n=3"


def test_ask_hint_bad_input(hint_ws, capsys):
    args = ["ask", "hint", "--explainer", str(hint_ws / HINT_EXPLAINER)]
    text = hint_prompts(1)[0].text
    assert main([*args, "--prompt", text]) == 2
    assert "one --hint per --prompt" in capsys.readouterr().err
    assert main([*args, "--prompt", text, "--hint", "Not in it."]) == 2
    assert "not a substring" in capsys.readouterr().err
    # a hint explainer is not asked about ablation, and says which ask it takes
    ablation = ["ask", "ablation", "--explainer", str(hint_ws / HINT_EXPLAINER)]
    assert main([*ablation, "--prompt", text]) == 2
    assert "selfexplain ask hint" in capsys.readouterr().err


def test_ask_reads_scores_at_the_targets_base_rate(ws, tmp_path):
    """An ask reads its scores at the natural-rate threshold: the run's recorded base rate, else
    the train split of the label file the explainer trained on, else the validation one."""
    from selfexplain.cli.answers import natural_threshold
    from selfexplain.core.schema import read_parquet
    from selfexplain.metrics import prior_shift
    from selfexplain.run import train_base_rate

    labels = ws / "results/labels/patching/tiny.parquet"
    rate = train_base_rate(read_parquet(labels))
    threshold, how = natural_threshold(explainer_dir(ws / PATCHING / "s0"))
    assert threshold == pytest.approx(prior_shift(rate)) and str(labels) in how
    copy = tmp_path / "adapter"  # outside a workspace, no labels: the validation threshold
    shutil.copytree(ws / PATCHING / "s0", copy)
    assert natural_threshold(explainer_dir(copy))[0] == 0.0
    summary = json.loads((copy / "train_summary.json").read_text()) | {"base_rate": 0.25}
    (copy / "train_summary.json").write_text(json.dumps(summary))
    assert natural_threshold(explainer_dir(copy))[0] == pytest.approx(prior_shift(0.25))


def test_ask_threshold_rules(ws, tiny, tmp_path, capsys):
    """--threshold: rank (the default of ask ablation) answers "changes to" for the base-rate
    share of the questions scored highest; natural, balanced and a number are one threshold;
    anything else is refused by name."""
    from selfexplain.cli.answers import ask_threshold, known_base_rate, natural_threshold
    from selfexplain.evaluate.summary import run_summary, summary_threshold

    info = explainer_dir(ws / PATCHING / "s0")
    assert ask_threshold(info, "rank")[1] == known_base_rate(info)[0] is not None
    assert ask_threshold(info, "natural")[:2] == (natural_threshold(info)[0], None)
    balanced = summary_threshold(run_summary(info.adapter))
    assert ask_threshold(info, "balanced")[:2] == (balanced, None)
    assert ask_threshold(info, "-1.5")[:2] == (-1.5, None)
    copy = tmp_path / "adapter"  # no base rate known: rank falls back to the balanced threshold
    shutil.copytree(ws / PATCHING / "s0", copy)
    assert ask_threshold(explainer_dir(copy), "rank")[1] is None
    _, tok = tiny
    text = "The capital of France is"
    n = len(ablatable_positions(tok, encode(tok, text)))
    ask = ["ask", "ablation", "--explainer", str(ws / ABLATION / "s0"), "--prompt", text]
    out = tmp_path / "answers.jsonl"
    assert main([*ask, "--no-truth", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    rate = ask_threshold(explainer_dir(ws / ABLATION / "s0"), "rank")[1]
    assert "has-changed threshold: rank" in err
    assert sum(r["pred_changed"] for r in _records(out)) == round(rate * n)
    for rule, changed in (("1e9", 0), ("-1e9", n)):
        assert main([*ask, "--no-truth", f"--threshold={rule}", "--out", str(out)]) == 0
        assert sum(r["pred_changed"] for r in _records(out)) == changed
    assert main([*ask, "--threshold", "median"]) == 2
    assert "must be one of rank, natural, balanced or a number, got 'median'" in (
        capsys.readouterr().err
    )


def test_labels_ablation_from_dir_and_spec(ws, tiny, tmp_path, capsys):
    _, tok = tiny
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "The capital of France is"})
        + "\n"
        + json.dumps({"prompt": HINTED, "hint": HINT})
        + "\n"
    )
    n = sum(
        len(ablatable_positions(tok, encode(tok, t))) for t in ("The capital of France is", HINTED)
    )
    out = tmp_path / "labels.parquet"
    assert (
        main(
            ["labels", "ablation", "--target", str(ws / MODEL), "--prompts", str(prompts)]
            + ["--out", str(out)]
        )
        == 0
    )
    df = read_examples(out)
    # as the pipeline (ablation.drop_last): each prompt's last token's removal is not labelled
    n_rows = n - 2 + 1
    assert len(df) == n_rows and set(df["task"]) == {"ablation"} and set(df["target"]) == {"tiny"}
    assert f"{n_rows} examples" in capsys.readouterr().out
    # a model spec is resolved into the cache (the same seed-0 tiny model: the same labels)
    out2 = tmp_path / "labels2.parquet"
    args = ["labels", "ablation", "--target", "tiny-random-llama", "--prompts", str(prompts)]
    assert main([*args, "--out", str(out2), "--cache", str(tmp_path / "cache")]) == 0
    assert (tmp_path / "cache/tiny-random-llama/config.json").is_file()
    assert read_examples(out2)["answer"].to_list() == df["answer"].to_list()


def test_labels_patching(ws, tiny, tmp_path, capsys):
    model, _ = tiny
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"id": "fr-jp", "clean": CLEAN, "counterfactual": CF, "meta": {"subject": "France"}},
        {
            "id": "pe-cl",
            "clean": PAIR_TEMPLATE.format("Peru"),
            "counterfactual": PAIR_TEMPLATE.format("Chile"),
        },
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "patching.parquet"
    args = ["labels", "patching", "--target", str(ws / MODEL), "--prompts", str(pairs)]
    rc = main([*args, "--out", str(out), "--window", "2"])
    captured = capsys.readouterr()
    kept = re.search(r"(\d+) of 2 pairs kept", captured.out + captured.err)
    assert kept, captured
    if int(kept.group(1)) == 0:  # the random tiny model gives the same answer to both prompts
        assert rc == 2 and "0 of 2 pairs kept" in captured.err
        return
    assert rc == 0
    df = read_examples(out)
    n_layers = len(decoder_layers(model))
    metas = [json.loads(m) for m in df["meta"]]
    assert {m["window"] for m in metas} == {2}
    # the pipeline's stride (patching.layer_stride), not the window
    stride = PatchingSettings().layer_stride
    assert {m["layer_start"] for m in metas} == set(window_starts(n_layers, 2, stride))
    assert len({m["pair_id"] for m in metas}) == int(kept.group(1))


FEATURES = "results/explainers/features/tiny/tiny/trained"
FEATURE_TEXT = (
    "The capital of France is Paris. The capital of Italy is Rome. The cat sat on the mat. "
    "The dog ran in the park with a red ball. Water boils at 100 degrees Celsius. "
) * 6


@pytest.fixture(scope="module")
def feature_ws(ws):
    """Feature labels of the tiny model (layer 1, a 32-latent SAE, deterministic descriptions)
    and a LoRA explainer trained on their train split, laid out like the pipeline's."""
    from selfexplain.features.activations import collect_activations, token_windows
    from selfexplain.features.corpus import Document
    from selfexplain.features.describe import describe_records
    from selfexplain.features.records import feature_records
    from selfexplain.features.sae import SAEConfig, train_sae
    from selfexplain.tasks.features import feature_examples

    model, tok = load(ws / MODEL)
    windows = token_windows(tok, [Document("d", FEATURE_TEXT)], context_len=16, n_windows=12)
    acts = collect_activations(model, windows, layer=1)
    sae, _ = train_sae(acts[:, 1:].reshape(-1, 64), SAEConfig(d_model=64, n_latents=32, k=4))
    records = feature_records(model, tok, sae, windows, acts, n_examples=4, min_count=3)
    for r, text in zip(records, describe_records(records), strict=True):
        r.description = text
    examples = to_frame(feature_examples(records, sae.W_dec.detach(), "tiny", 1))
    write_parquet(examples, ws / "results/labels/features/tiny.parquet")
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-2, save_steps=1000, seed=0)
    train = examples.filter(examples["split"] == "train")[:12]
    train_explainer(ws / MODEL, train, ws / FEATURES / "s0", cfg, ws / "ckpt" / "f")
    return ws, examples


def test_ask_features_by_id_matches_the_library(feature_ws, tmp_path, capsys):
    import polars as pl

    from selfexplain.evaluate.generation import (
        evaluate_feature_task,
        explainer_injector,
        generate_answers,
        load_explainer,
    )
    from selfexplain.features.metrics import feature_metrics

    ws, examples = feature_ws
    test = examples.filter(pl.col("split") == "test")
    fids = [json.loads(m)["feature"] for m in test["meta"][:2]]
    out = tmp_path / "features.jsonl"
    args = ["ask", "features", "--explainer", str(ws / FEATURES), "--out", str(out)]
    assert main([*args, "--feature", str(fids[0]), "--feature", str(fids[1])]) == 0
    stdout = capsys.readouterr().out
    # the same answers and metrics as the pipeline's functions on the same rows
    model, tok = load_explainer(ws / MODEL, ws / FEATURES / "s0")
    injector = explainer_injector(model, tok, ws / FEATURES / "s0", 64)
    rows = test[:2]
    preds = generate_answers(
        model,
        tok,
        rows["question"].to_list(),
        max_new_tokens=40,
        vectors=rows["vector"].to_list(),
        injector=injector,
    )
    scored = evaluate_feature_task(rows, preds, labels={}, pool=examples)
    records = _records(out)
    assert [r["feature"] for r in records] == fids
    assert [r["prediction"] for r in records] == preds
    assert [r["answer"] for r in records] == rows["answer"].to_list()
    for answer in rows["answer"]:
        assert f"ground truth: {answer}" in stdout
    first = json.loads(rows["meta"][0])["examples"][0]
    assert f"{first['activation']:8.2f}" in stdout and "top-activating contexts" in stdout
    m = feature_metrics(scored)
    expected = f"similarity={m['similarity']:.3f} simulation={m['simulation']:.3f} n=2"
    assert stdout.strip().splitlines()[-1] == expected


def test_ask_features_by_vector_file(feature_ws, tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    ws, examples = feature_ws
    row = examples[3]
    fid = json.loads(row["meta"][0])["feature"]
    vec = tmp_path / "v.safetensors"
    save_file({"vector": torch.tensor(row["vector"][0].to_list())}, str(vec))
    args = ["ask", "features", "--explainer", str(ws / FEATURES), "--vector", str(vec)]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert f"nearest labelled feature {fid} (cos 1.000)" in stdout
    assert f"ground truth: {row['answer'][0]}" in stdout
    # no label file: the layer must be given, and only the explanation is printed
    other = tmp_path / "elsewhere"
    shutil.copytree(ws / FEATURES / "s0", other)
    model = str(ws / MODEL)
    args = ["ask", "features", "--explainer", str(other), "--vector", str(vec)]
    args += ["--target-model", model, "--explainer-model", model]
    assert main(args) == 2
    assert "--layer" in capsys.readouterr().err
    assert main([*args, "--layer", "1"]) == 0
    stdout = capsys.readouterr().out
    assert "explainer:" in stdout and "ground truth" not in stdout
    assert stdout.strip().splitlines()[-1] == "n=1"


def test_ask_features_bad_input(feature_ws, tmp_path, capsys):
    ws, _ = feature_ws
    args = ["ask", "features", "--explainer", str(ws / FEATURES)]
    assert main([*args, "--feature", "99999"]) == 2
    assert "--feature 99999 is not in" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    assert main([*args, "--vector", str(bad)]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    assert main(["ask", "features", "--explainer", str(ws / ABLATION), "--feature", "1"]) == 2
    assert "selfexplain ask ablation" in capsys.readouterr().err


def test_bad_input_exits_2_naming_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "fine"}) + "\n{not json\n")
    args = ["ask", "ablation", "--explainer", str(tmp_path), "--prompts", str(bad)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and err.startswith("selfexplain: error:") and "Traceback" not in err
    args = ["labels", "ablation", "--target", "tiny-random-llama", "--prompts", str(bad)]
    assert main([*args, "--out", str(tmp_path / "x.parquet")]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert main(["ask", "ablation", "--explainer", "x"]) == 2  # argparse: --prompt missing
    assert main(["--help"]) == 0


def test_ask_patching_pairs_file(ws, tiny, tmp_path, capsys):
    """--pairs: every cell of every pair in one call (one explainer load), a heatmap per pair,
    per-pair metric lines and, last, the metrics pooled over all records; the pair of --clean /
    --counterfactual gives the same records as asking it alone."""
    pairs = tmp_path / "pairs.jsonl"
    lines = [
        {"id": "fr-jp", "clean": CLEAN, "counterfactual": CF},
        {"clean": CF, "counterfactual": CLEAN},
    ]
    pairs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    png, out = tmp_path / "map.png", tmp_path / "all.jsonl"
    base = ["ask", "patching", "--explainer", str(ws / PATCHING)]
    assert main([*base, "--pairs", str(pairs), "--heatmap", str(png), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    records = _records(out)
    assert {r["pair_id"] for r in records} == {"fr-jp", "pair-00002"}
    assert (tmp_path / "map-fr-jp.png").is_file() and (tmp_path / "map-pair-00002.png").is_file()
    assert stdout.strip().splitlines()[-1] == _metric_line(records)
    assert "all 2 pairs:" in stdout
    alone = tmp_path / "alone.jsonl"
    args = [*base, "--clean", CLEAN, "--counterfactual", CF, "--heatmap", str(png)]
    assert main([*args, "--out", str(alone)]) == 0
    drop = ("pair_id",)
    first = [
        {k: v for k, v in r.items() if k not in drop} for r in records if r["pair_id"] == "fr-jp"
    ]
    assert first == [{k: v for k, v in r.items() if k not in drop} for r in _records(alone)]
    capsys.readouterr()
    assert main([*base, "--pairs", str(pairs), "--clean", CLEAN]) == 2
    assert "--pairs replaces --clean" in capsys.readouterr().err
    assert main(base) == 2
    assert "--clean is required (or --pairs FILE.jsonl)" in capsys.readouterr().err


def test_help_imports_no_torch():
    """Building the parser and printing --help import none of the commands (torch): each command's
    module is imported only when it runs (cli.parser.COMMANDS)."""
    code = (
        "import sys\n"
        "from selfexplain.cli import main\n"
        "for argv in (['--help'], ['ask', 'patching', '--help'], ['labels', 'ablation', '-h']):\n"
        "    assert main(argv) == 0\n"
        "assert main(['ask', 'ablation', '--explainer', 'x']) == 2\n"
        "heavy = [m for m in ('torch', 'transformers', 'selfexplain.cli.answers') "
        "if m in sys.modules]\n"
        "sys.exit(f'imported {heavy}' if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage: selfexplain" in done.stdout


def test_every_command_names_a_function():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    named = {
        f"{command} {task}"
        for command, p in sub.choices.items()
        for a in p._actions
        if isinstance(a, argparse._SubParsersAction)
        for task in a.choices
    }
    assert named == set(COMMANDS)
    for target in COMMANDS.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))


def _defaults(argv: list[str]) -> dict:
    return vars(build_parser().parse_args(argv))


def test_defaults_are_the_pipelines_settings():
    """The command's defaults are the pipeline's (core.settings): labels as the rules write them,
    asks answered as the evaluate step answers."""
    out = ["--target", "m", "--prompts", "p.jsonl", "--out", "o.parquet"]
    abl, s = _defaults(["labels", "ablation", *out]), AblationSettings()
    assert (abl["test_fraction"], abl["batch_size"], abl["engine"]) == (
        s.test_fraction,
        s.batch_size,
        s.engine,
    )
    assert abl["keep_last"] == (not s.drop_last) and abl["holdout"] == s.holdout
    pat, s = _defaults(["labels", "patching", *out]), PatchingSettings()
    for key in ("window", "layer_stride", "max_positions", "max_pairs", "holdout"):
        assert pat[key] == getattr(s, key), key
    assert (pat["test_fraction"], pat["batch_size"]) == (s.test_fraction, s.batch_size)
    assert (
        _defaults(["labels", "patching", *out, "--max-positions", "all"])["max_positions"] is None
    )
    e = EvaluateSettings()
    for task, required in (
        ("ablation", ["--prompt", "y"]),
        ("patching", []),
        ("hint", ["--prompt", "y"]),
    ):
        ask = _defaults(["ask", task, "--explainer", "x", *required])
        assert (ask["max_new_tokens"], ask["batch_size"]) == (e.max_new_tokens, e.batch_size)
    feat = _defaults(["ask", "features", "--explainer", "x", "--feature", "1"])
    assert (feat["max_new_tokens"], feat["batch_size"]) == (
        FeatureSettings().max_new_tokens,
        e.batch_size,
    )


def test_ask_patching_without_labels_uses_the_pipelines_window(capsys):
    """No label file to read the window from: the pipeline's patching.window and layer_stride."""
    s = PatchingSettings()
    args = argparse.Namespace(labels=None, window=None, layer_stride=None)
    info = ExplainerDir(adapter=Path("adapter"))
    assert _patching_layout(args, info, 30) == (
        s.window,
        window_starts(30, s.window, s.layer_stride),
    )
    args.window = 2
    assert _patching_layout(args, info, 30) == (2, window_starts(30, 2, s.layer_stride))
    assert "(--window/--layer-stride)" in capsys.readouterr().err
