"""Each labelling recipe exists once: the rule's script (workflow/scripts/label_*.py) and
`selfexplain labels` both call tasks.<task>.label (no model runs: the recipe is replaced by a
recorder)."""

from __future__ import annotations

import json
import runpy
import sys
import types
from pathlib import Path

import polars as pl
import pytest
import torch

from selfexplain.cli import main
from selfexplain.core.schema import ExplainerExample, to_frame
from selfexplain.core.settings import AblationSettings, PatchingSettings

REPO = Path(__file__).resolve().parents[1]
PROMPT = {"prompt": "The capital of France is"}
PAIR = {"clean": "The capital of France is", "counterfactual": "The capital of Italy is"}


class Recorder:
    """Stands in for tasks.<task>.label: records its calls, returns one example."""

    def __init__(self, task: str):
        self.task, self.calls = task, []

    def __call__(self, model, tokenizer, items, target, **kwargs):
        self.calls.append((model, list(items), target, kwargs))
        ex = ExplainerExample(f"{self.task}/{target}/x", self.task, target, "test", "q?", "a")
        return to_frame([ex])


@pytest.fixture
def recorders(monkeypatch):
    import selfexplain.models
    from selfexplain.tasks import ablation, hint, patching

    out = {}
    for module in (ablation, patching, hint):
        task = module.__name__.rsplit(".", 1)[1]
        out[task] = Recorder(task)
        monkeypatch.setattr(module, "label", out[task])
    monkeypatch.setattr(selfexplain.models, "load", lambda path: ("model", "tokenizer"))
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # the scripts redirect it to their log
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    return out


def write_jsonl(path: Path, row: dict) -> Path:
    path.write_text(json.dumps(row) + "\n")
    return path


SETTINGS = {
    "ablation": {"batch_size": 8, "engine": "feature_ablation", "test_fraction": 0.25},
    "hint": {"batch_size": 8, "test_fraction": 0.3},
    "patching": {
        "window": 2,
        "layer_stride": None,
        "max_pairs": 5,
        "max_positions": None,
        "batch_size": 16,
        "test_fraction": 0.3,
        "holdout": "prompt",
    },
}


@pytest.mark.parametrize("task", ["ablation", "patching", "hint"])
def test_rule_script_calls_the_task_recipe(task, recorders, tmp_path):
    key = "pairs" if task == "patching" else "prompts"
    items = write_jsonl(tmp_path / "in.jsonl", PAIR if task == "patching" else PROMPT)
    out = tmp_path / "labels.parquet"
    smk = types.SimpleNamespace(
        input=types.SimpleNamespace(model=str(tmp_path / "m/marker.json"), **{key: str(items)}),
        output=[str(out)],
        log=[str(tmp_path / "log.txt")],
        threads=torch.get_num_threads(),
        params=types.SimpleNamespace(settings=SETTINGS[task]),
        wildcards=types.SimpleNamespace(target="tgt"),
    )
    runpy.run_path(str(REPO / f"workflow/scripts/label_{task}.py"), init_globals={"snakemake": smk})
    sys.stdout.flush()
    [(model, got, target, kwargs)] = recorders[task].calls
    assert model == "model" and target == "tgt" and len(got) == 1
    assert kwargs["test_fraction"] == SETTINGS[task]["test_fraction"]
    assert pl.read_parquet(out)["id"].to_list() == [f"{task}/tgt/x"]
    assert all(not r.calls for t, r in recorders.items() if t != task)


@pytest.mark.parametrize("task", ["ablation", "patching"])
def test_cli_labels_calls_the_task_recipe(task, recorders, tmp_path, monkeypatch, capsys):
    import selfexplain.cli.labels

    model = tmp_path / "mymodel"
    model.mkdir()
    monkeypatch.setattr(selfexplain.cli.labels, "model_dir", lambda value, flag, cache: model)
    items = write_jsonl(tmp_path / "in.jsonl", PAIR if task == "patching" else PROMPT)
    out = tmp_path / "labels.parquet"
    argv = ["labels", task, "--target", str(model), "--prompts", str(items), "--out", str(out)]
    assert main(argv) == 0
    [(_, got, target, kwargs)] = recorders[task].calls
    # the CLI's test fraction is the pipeline's setting of the task
    section = {"ablation": AblationSettings, "patching": PatchingSettings}[task]
    assert target == "mymodel" and len(got) == 1
    assert kwargs["test_fraction"] == section().test_fraction
    assert pl.read_parquet(out)["task"].to_list() == [task]
    assert f"1 examples (0 train, 1 test) -> {out}" in capsys.readouterr().out
