"""The paper's released label sets (selfexplain.hub.released, selfexplain.hub.hfdata): small
fixtures in the released column layout (tests/data/released/, written like the hub's train /
test files) become our explainer examples with the released items, labels and split; a missing
column or split, or a hub id without network, fails naming it and the fix."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import types
from pathlib import Path

import datasets
import polars as pl
import pytest
from test_layout import dry_run_jobs
from test_pipeline import REPO, run_snakemake

from selfexplain.core.schema import meta
from selfexplain.data.controls import strip_signal
from selfexplain.data.draws import training_rows
from selfexplain.hub.released import import_labels, tokens_to_text
from selfexplain.run import evaluation_rows
from selfexplain.tasks import ablation, hint, patching

HINT_DIR = REPO / "tests/data/released/input_ablation"
PATCH_DIR = REPO / "tests/data/released/act_patch"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture()
def cache(tmp_path) -> dict:
    """Keep datasets' arrow cache of local files out of the user's cache."""
    return {"cache_dir": str(tmp_path / "hf-cache")}


def test_tokens_to_text_decodes_byte_level_and_sentencepiece_tokens():
    assert tokens_to_text(["The", "ĠEiffel", "ĠTower", "ĊĊ", "Answer", ":"]) == (
        "The Eiffel Tower\n\nAnswer:"
    )
    assert tokens_to_text("ĠParis") == " Paris"
    assert tokens_to_text(["Ã©", "t", "Ã©"]) == "été"  # UTF-8 bytes split over tokens
    assert tokens_to_text(["▁The", "▁capital"]) == " The capital"


def test_hint_import_keeps_the_released_items_labels_and_split(cache):
    df = import_labels("hint", str(HINT_DIR), "llama", **cache)
    released = read_jsonl(HINT_DIR / "train.jsonl") + read_jsonl(HINT_DIR / "test.jsonl")
    assert df["split"].to_list() == ["train"] * 4 + ["test"] * 2
    assert df["task"].unique().to_list() == ["hint"] and df["id"].n_unique() == 6
    rows = meta(df)
    # the answer with the hint, then without it; changed_pred_bc_hint, or derived when null
    assert [r["orig_token"] for r in rows] == [r["random_hint_prediction"] for r in released]
    assert df["answer"].to_list() == [
        'changes to "B"',
        "unchanged",
        'changes to "B"',  # null in the release: D with the hint, B without
        "unchanged",  # null: C both times
        'changes to "B"',
        "unchanged",
    ]
    first = rows[0]
    assert first["prompt"] == released[0]["hint_user_prompt"]
    assert first["hint"] == (
        "Hint: I think the answer is (C) but I'm curious to hear what you think."
    )
    assert (
        first["prompt"].replace(first["hint"], "").rstrip()
        == released[0]["original_user_prompt"].rstrip()
    )
    assert (first["hinted"], first["correct"], first["follows_hint"]) == ("C", "B", True)
    assert first["hint_correct"] is False
    assert first["system_prompt"] == released[0]["system_prompt"]
    assert (first["source_split"], first["source_row"]) == ("train", 0)
    assert df["question"][0] == hint.hint_question(first)
    # the validation split groups the prompts of one MMLU question
    assert hint.question_key(first) == "mmlu:What is the capital of France?"
    assert hint.surface_features(first)["follows_hint"] == "yes"


def test_ablation_import_is_the_hint_removal_of_each_prompt(cache):
    df = import_labels("ablation", str(HINT_DIR), "llama", **cache)
    rows = meta(df)
    assert {r["unit"] for r in rows} == {"hint"} and {r["kind"] for r in rows} == {"hint_mcq"}
    assert rows[0]["removed"].startswith("Hint: I think the answer is (C)")
    assert df["question"][0] == ablation.ablation_question(rows[0])
    assert ablation.surface_features(rows[0])["end_distance"] == "hint"
    stripped = strip_signal(df, "ablation")["question"][0]  # the prompt_only control applies
    assert stripped.endswith("\nRemoved: one part.") and "Hint: I think" in stripped.split("\n")[0]
    assert (
        df["answer"].to_list()
        == import_labels("hint", str(HINT_DIR), "l", **cache)["answer"].to_list()
    )


def test_patching_import_decodes_prompts_windows_and_positions(cache):
    df = import_labels("patching", str(PATCH_DIR), "llama", **cache)
    assert df["split"].to_list() == ["train"] * 5 + ["test"] * 2
    # the patched vector is kept for the released explainers (released_eval reads it)
    assert df["vector"].to_list() == [[0.5, -0.25, 0.125, 1.0]] * 7
    rows = meta(df)
    first = rows[0]
    assert first["clean"] == "The Eiffel Tower is in\n\nAnswer:"  # BOS dropped, tokens decoded
    assert first["counterfactual"] == "The Colosseum is in\n\nAnswer:"
    assert (first["layer_start"], first["layer_end"], first["window"]) == (0, 3, 4)
    assert (first["position"], first["token"], first["n_tokens"]) == (2, " Eiffel", 9)
    assert first["position_kind"] == "subject"
    assert [r["position_kind"] for r in rows] == [
        "subject",
        "subject",
        "relation",  # relation_suffix
        "subject",
        "option",  # other_answer_option
        "subject",
        "relation",
    ]
    assert (first["gt_original_target"], first["gt_counterfactual_target"]) == ("Paris", "Rome")
    assert df["answer"].to_list() == [
        'changes to " B"',
        "unchanged",
        "unchanged",  # is_different null: " A" both times
        'changes to " A"',
        "unchanged",
        'changes to " D"',
        "unchanged",
    ]
    assert rows[1]["layer_start"] == 4 and rows[0]["pair_id"] == rows[1]["pair_id"]
    assert rows[3]["pair_id"] != rows[0]["pair_id"]
    assert df["question"][0] == patching.patching_question(first)
    assert patching.surface_features(first)["end_distance"] == "6+"
    assert strip_signal(df, "patching")["question"][0].endswith("\nReplaced: one hidden state.")


def test_imported_rows_train_and_test_on_the_released_split(cache):
    """The run's rows come from the release: training rows from its train split (validation
    carved from them by pair), test rows from its test split, both balanced."""
    df = import_labels("patching", str(PATCH_DIR), "llama", **cache)
    train, val = training_rows(
        df, "patching", "trained", 0, n_train=None, n_variant=None, val_fraction=0.0
    )
    assert len(val) == 0 and len(train) == 4  # 2 changed, 2 of the 3 unchanged train rows
    assert set(train["split"]) == {"train"}
    test = evaluation_rows(df, "patching", None)
    assert sorted(test["answer"]) == ['changes to " D"', "unchanged"]


def test_our_explainer_trains_on_imported_patching_rows_without_their_vectors(
    cache, tmp_path, monkeypatch
):
    """Our patching question names the counterfactual prompt, so the release's vectors are not
    injected: train_run hands the trainer rows without them (a vector would need a placeholder
    in the question)."""
    import selfexplain.run
    from selfexplain.run import train_run

    seen = {}

    def fake_train_explainer(model_dir, train, out_dir, cfg, *args, **kwargs):
        seen["train"], seen["validation"] = train, kwargs["validation"]
        return {}

    monkeypatch.setattr(selfexplain.run, "train_explainer", fake_train_explainer)
    df = import_labels("patching", str(PATCH_DIR), "llama", **cache)
    assert df["vector"].null_count() == 0
    run = {"task": "patching", "variant": "trained", "seed": 0}
    settings = {"n_train": None, "val_fraction": 0.0}
    kwargs = {"model_dir": tmp_path, "out_dir": tmp_path / "out", "features": {}}
    train_run(df, run, train_settings=settings, **kwargs)
    assert len(seen["train"]) == 4 and seen["validation"] is None
    assert seen["train"]["vector"].null_count() == 4


def test_a_parquet_file_with_a_split_column_and_a_saved_dataset_import_alike(tmp_path, cache):
    expected = import_labels("patching", str(PATCH_DIR), "t", **cache)
    frames = [
        pl.read_ndjson(PATCH_DIR / f"{s}.jsonl").with_columns(split=pl.lit(s))
        for s in ("train", "test")
    ]
    single = tmp_path / "act_patch.parquet"
    pl.concat(frames).write_parquet(single)
    saved = tmp_path / "saved"
    splits = {s: read_jsonl(PATCH_DIR / f"{s}.jsonl") for s in ("train", "test")}
    splits["train_full"] = splits["train"] + splits["train"]  # other splits are not read
    datasets.DatasetDict(
        {s: datasets.Dataset.from_list(rows) for s, rows in splits.items()}
    ).save_to_disk(str(saved))
    for source in (single, saved):
        got = import_labels("patching", str(source), "t", **cache)
        assert got.select("id", "split", "question", "answer").equals(
            expected.select("id", "split", "question", "answer")
        ), source


def test_a_file_without_a_split_names_the_missing_split(tmp_path, cache):
    one = tmp_path / "train_only.jsonl"
    one.write_text((HINT_DIR / "train.jsonl").read_text())
    with pytest.raises(ValueError, match=r"has no split\(s\) \['test'\].*'split' column"):
        import_labels("hint", str(one), "t", **cache)


@pytest.mark.parametrize(
    ("task", "folder", "column"),
    [
        ("hint", HINT_DIR, "zeroshot_prediction"),
        ("patching", PATCH_DIR, "is_different"),
        ("patching", PATCH_DIR, "input_tokens"),
    ],
)
def test_a_missing_column_names_the_column_and_the_dataset(task, folder, column, tmp_path, cache):
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "test"):
        rows = [
            {k: v for k, v in r.items() if k != column}
            for r in read_jsonl(folder / f"{split}.jsonl")
        ]
        (bad / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=rf"no column '{column}'") as err:
        import_labels(task, str(bad), "t", **cache)
    assert str(bad) in str(err.value) and f"{task}.labels_from (t)" in str(err.value)


def test_a_missing_nested_field_is_named(tmp_path, cache):
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "test"):
        rows = read_jsonl(PATCH_DIR / f"{split}.jsonl")
        for r in rows:
            del r["patch_position"]["orig_pos"]
        (bad / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"no column 'patch_position.orig_pos'"):
        import_labels("patching", str(bad), "t", **cache)


def test_a_missing_local_dataset_is_named(cache):
    with pytest.raises(FileNotFoundError, match=r"'./no/such/act_patch.parquet' does not exist"):
        import_labels("patching", "./no/such/act_patch.parquet", "t", **cache)


def test_a_hub_id_without_network_says_how_to_fill_the_cache(tmp_path):
    """Offline (HF_HUB_OFFLINE=1, as 'offline: true' sets) and an empty cache: the error names
    the dataset, says there is no network and how to fill the cache or pass a local file."""
    code = (
        "from selfexplain.hub.released import import_labels\n"
        "import_labels('patching', 'Transluce/act_patch_llama_3.1_8b_counterfact', 't')\n"
    )
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ConnectionError: patching.labels_from (t): cannot load the dataset")
    for fragment in ("'Transluce/act_patch_llama_3.1_8b_counterfact'", "no network", "HF_HOME"):
        assert fragment in last, last
    assert "local path" in last


def test_label_rule_imports_instead_of_labelling(tmp_path, monkeypatch):
    """The rule's script with patching.labels_from naming the target: no model is loaded, the
    released rows are written."""
    import selfexplain.models

    def no_model(path):
        raise AssertionError("an imported label set loads no model")

    monkeypatch.setattr(selfexplain.models, "load", no_model)
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # the script redirects it to its log
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    out = tmp_path / "labels.parquet"
    smk = types.SimpleNamespace(
        input=types.SimpleNamespace(released=str(PATCH_DIR)),
        output=[str(out)],
        log=[str(tmp_path / "log.txt")],
        threads=1,
        params=types.SimpleNamespace(settings={"labels_from": {"tgt": str(PATCH_DIR)}}),
        wildcards=types.SimpleNamespace(target="tgt"),
    )
    runpy.run_path(
        str(REPO / "workflow/scripts/label_patching.py"), init_globals={"snakemake": smk}
    )
    sys.stdout.flush()
    got = pl.read_parquet(out)
    assert len(got) == 7 and set(got["target"]) == {"tgt"}
    assert "5 train and 2 test rows" in (tmp_path / "log.txt").read_text()


def test_dag_imports_the_label_file_of_a_target_with_labels_from(tmp_path):
    """snakemake -n: label_patching of the target reads the released dataset (its only input),
    and no pairs are generated; hint stays computed."""
    config = tmp_path / "released.yaml"
    config.write_text(f"patching:\n  labels_from:\n    tiny: {PATCH_DIR}\n")
    proc = run_snakemake(
        tmp_path, "-n", "--configfile", str(REPO / "tests/data/tiny.yaml"), str(config)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    jobs = dry_run_jobs(out)
    rules = {j["rule"] for j in jobs}
    assert "label_patching" in rules and "make_pairs" not in rules
    assert "label_hint" in rules and "make_hint_prompts" in rules
    block = out.split("rule label_patching:\n", 1)[1].split("\n\n", 1)[0]
    assert f"    input: {PATCH_DIR}\n" in block
