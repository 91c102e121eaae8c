"""The task and variant registries (core/registry.py): one record per task and per variant,
read by the config check, the matrix, the controls, the comparisons and the figures. A toy
variant added as one registry line reaches all of them without another edit."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from selfexplain.config import config_problems, load_schema
from selfexplain.core import registry
from selfexplain.core.registry import TASKS, VARIANTS, Variant, applies, task_variants, variant
from selfexplain.data.matrix import is_trained, runs, variant_seeds
from selfexplain.data.variants import apply_control
from selfexplain.report.compare import baselines, comparisons

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def config(**over) -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return cfg | over


def test_the_registries_hold_what_the_tasks_and_variants_were():
    assert list(TASKS) == ["ablation", "patching", "hint", "features"]
    assert registry.CHANGE_TASKS == ("ablation", "patching", "hint")
    assert task_variants("hint") == ("trained", "untrained", "surface", "constant")
    assert task_variants("ablation") == (
        "trained",
        "untrained",
        "no_signal",
        "prompt_only",
        "surface",
        "constant",
    )
    assert variant("n40") is VARIANTS["trained"] and is_trained("n40")
    assert [v for v in VARIANTS if VARIANTS[v].trains] == ["trained", "no_signal", "prompt_only"]
    with pytest.raises(ValueError, match="unknown variant 'trainned'"):
        variant("trainned")


def test_the_schema_takes_its_names_from_the_registries():
    schema = load_schema(SCHEMA)
    assert schema["properties"]["tasks"]["items"]["enum"] == list(TASKS)
    assert schema["properties"]["variants"]["items"]["enum"] == list(VARIANTS)
    problems = config_problems(config(variants=["trained", "toy"]), SCHEMA)
    assert any("'toy' is not allowed" in p for p in problems)


@pytest.fixture
def toy_variant(monkeypatch):
    """A new control, added as one registry line: trained like no_signal, on change tasks."""
    toy = Variant(
        "toy", lambda t: t.change, "explainer", trains=True, control="strip", lm_control=True
    )
    monkeypatch.setitem(VARIANTS, "toy", toy)
    return toy


def test_a_variant_added_as_one_registry_line_reaches_every_reader(toy_variant):
    # the config check accepts it
    cfg = config(variants=["trained", "toy"], targets=["a"], explainers=["a", "b"])
    cfg |= {"models": {"a": "tiny-random-llama", "b": "tiny-random-gemma"}, "seeds": [0, 1]}
    assert not [p for p in config_problems(cfg, SCHEMA) if "toy" in p]
    # the matrix runs it where it applies, for self pairs only (lm_control), with the first seed
    toy_runs = [r for r in runs(cfg) if r.variant == "toy"]
    assert {r.task for r in toy_runs} == set(cfg["tasks"]) & {"ablation", "patching", "hint"}
    assert {r.explainer for r in toy_runs} == {"a"} and is_trained("toy")
    assert variant_seeds(cfg, "toy") == [0]
    assert applies("hint", "toy") and not applies("features", "toy")
    # its questions are the control's, in training and test alike
    rows = pl.DataFrame(
        {
            "question": ["Prompt: x\nRemoved: token 1 (' a')."],
            "meta": ['{"prompt_id": "p"}'],
        }
    )
    assert apply_control(rows, "ablation", "toy", 0)["question"][0].endswith("one part.")
    # and trained is compared with it
    assert "toy" in baselines()
    ids, gold = ["i1", "i2", "i3"], [True, False, True]
    evals = [
        pl.DataFrame(
            {
                "id": ids,
                "meta": [json.dumps({"prompt_id": i}) for i in ids],
                "gold_changed": gold,
                "exact_match": [True, right, True],
                "tf_score": [1.0, -1.0 if right else 1.0, 1.0],
                "task": "ablation",
                "target": "a",
                "explainer": "a",
                "variant": name,
                "seed": 0,
            }
        )
        for name, right in (("trained", True), ("toy", False))
    ]
    table = comparisons(evals, n_boot=50)
    assert "trained - toy" in table["comparison"].to_list()
