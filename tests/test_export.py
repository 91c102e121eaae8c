"""Hugging Face dataset export (selfexplain.hub.export, rule export_dataset): the exported
directory loads with datasets.load_dataset and gives back the examples, and its card says what
it is."""

from __future__ import annotations

import json
import runpy
import sys
import types

import datasets
import polars as pl
import pytest
import yaml
from test_layout import dry_run_jobs
from test_pipeline import REPO, run_snakemake
from toy_data import toy_patching_rows

from selfexplain.core import layout
from selfexplain.core.schema import ExplainerExample, to_frame, write_parquet
from selfexplain.hub.export import dataset_frame, export_dataset

CONFIG = {"patching": {"window": 4, "max_pairs": 6}, "models": {"t": "tiny-random-llama"}}


def _load(out, cache) -> datasets.DatasetDict:
    files = {s: str(out / "data" / f"{s}-00000-of-00001.parquet") for s in ("train", "test")}
    return datasets.load_dataset("parquet", data_files=files, cache_dir=cache)


def test_exported_dataset_loads_back_as_the_examples(tmp_path):
    examples = toy_patching_rows()
    out = export_dataset(
        examples,
        tmp_path / "ds",
        task="patching",
        target="t",
        model="tiny-random-llama",
        config=CONFIG,
    )
    loaded = _load(out, str(tmp_path / "cache"))
    for split in ("train", "test"):
        want = examples.filter(pl.col("split") == split)
        got = loaded[split]
        assert got["id"] == want["id"].to_list()
        assert got["question"] == want["question"].to_list()
        assert got["answer"] == want["answer"].to_list()
        assert [json.loads(m) for m in got["meta"]] == [json.loads(m) for m in want["meta"]]
        metas = [json.loads(m) for m in want["meta"]]
        # every label field is a column of its own, with its type
        assert got["changed"] == [m["changed"] for m in metas]
        assert got["layer_start"] == [m["layer_start"] for m in metas]
        assert got["pair_id"] == [m["pair_id"] for m in metas]
    assert "vector" not in loaded["train"].column_names  # no row of this task has one
    # the directory itself is a dataset: its card's front matter names the files per split
    by_dir = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache2"))
    assert {s: len(d) for s, d in by_dir.items()} == {"train": 32, "test": 16}


def test_feature_export_keeps_vectors_and_list_labels(tmp_path):
    rows = [
        ExplainerExample(
            id=f"features/t/l1/f{i}",
            task="features",
            target="t",
            split="test" if i == 0 else "train",
            question="What does the feature <v> encode?",
            answer=f"the word number {i}",
            vector=[0.5 * i, -1.0, 2.0],
            meta={"feature": i, "top_tokens": [" a", " b"], "frequency": 0.01 * (i + 1)},
        )
        for i in range(3)
    ]
    examples = to_frame(rows)
    frame = dataset_frame(examples)
    assert frame.columns == [
        "id",
        "question",
        "answer",
        "vector",
        "feature",
        "frequency",
        "top_tokens",
        "meta",
    ]  # label fields in meta's (sorted) order
    out = export_dataset(examples, tmp_path / "ds", task="features", target="t")
    loaded = _load(out, str(tmp_path / "cache"))
    assert loaded["train"]["vector"] == [[0.5, -1.0, 2.0], [1.0, -1.0, 2.0]]
    assert [json.loads(t) for t in loaded["test"]["top_tokens"]] == [[" a", " b"]]
    assert loaded["train"]["feature"] == [1, 2]


def test_card_names_columns_target_method_and_config(tmp_path):
    examples = toy_patching_rows()
    out = export_dataset(
        examples,
        tmp_path / "ds",
        task="patching",
        target="t",
        model="tiny-random-llama",
        config=CONFIG,
    )
    card = (out / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train-*.parquet"},
        {"split": "test", "path": "data/test-*.parquet"},
    ]
    assert "patching" in meta["tags"]
    assert "48 questions" in body and "(32 train, 16 test)" in body
    assert "`t`: `tiny-random-llama`" in body
    assert "Activation patching" in body
    for column in dataset_frame(examples).columns:
        assert f"| `{column}` |" in body, column
    config_block = body.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(config_block) == CONFIG


def test_export_refuses_examples_of_another_task_or_target(tmp_path):
    with pytest.raises(
        ValueError, match=r"examples of 'hint' on 't' expected; found \['patching'\]"
    ):
        export_dataset(toy_patching_rows(), tmp_path / "ds", task="hint", target="t")
    assert not (tmp_path / "ds").exists()


def test_export_rule_writes_the_layout_directory(tmp_path, monkeypatch):
    """The rule's script exports a label file; snakemake export_datasets asks for one export per
    task and target, at layout.dataset_dir."""
    labels = tmp_path / "labels.parquet"
    write_parquet(toy_patching_rows(), labels)
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # the script redirects it to its log
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    out = tmp_path / layout.dataset_dir("patching", "t")
    smk = types.SimpleNamespace(
        input=[str(labels)],
        output=[str(out)],
        log=[str(tmp_path / "log.txt")],
        params=types.SimpleNamespace(model="tiny-random-llama", settings=CONFIG),
        wildcards=types.SimpleNamespace(task="patching", target="t"),
    )
    runpy.run_path(
        str(REPO / "workflow/scripts/export_dataset.py"), init_globals={"snakemake": smk}
    )
    sys.stdout.flush()
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
    ]
    assert "tiny-random-llama" in (out / "README.md").read_text()

    proc = run_snakemake(
        tmp_path / "dag",
        "export_datasets",
        "-n",
        "--configfile",
        str(REPO / "tests/data/tiny.yaml"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [j for j in dry_run_jobs(proc.stdout + proc.stderr) if j["rule"] == "export_dataset"]
    got = {(j["wildcards"]["task"], j["wildcards"]["target"]): j["output"] for j in jobs}
    tasks = yaml.safe_load((REPO / "tests/data/tiny.yaml").read_text())["tasks"]
    assert got == {(t, "tiny"): [layout.dataset_dir(t, "tiny")] for t in tasks}
