"""Export one task's explainer examples on one target as a Hugging Face dataset directory (rule
export_dataset): ``data/{train,test}-00000-of-00001.parquet`` in the hub's layout, loadable with
``datasets.load_dataset("parquet", data_files=...)`` or ``datasets.load_dataset(DIR)``, and a
dataset card ``README.md`` (columns, target model, how the labels were made, the config used).

Columns: the example's id, question, answer (and vector for features), its label fields (the
meta dict's keys, one column each; lists and dicts as JSON text) and meta itself as JSON, so a
row converts back to the shared examples schema (selfexplain.core.schema) without loss.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl
import yaml

from selfexplain.core.schema import SCHEMA, has_vectors, meta

SPLITS = ("train", "test")
EXAMPLE_COLUMNS = ("id", "question", "answer", "vector", "meta")  # task, target: in the card

COLUMN_DOCS = {
    "id": "unique id of the question",
    "question": "the question the explainer is asked (selfexplain's fixed template)",
    "answer": 'ground truth: "unchanged" or "changes to <token>" (features: a description)',
    "vector": (
        "features: the SAE feature's decoder vector (the target's width), injected; patching: "
        "the patched vector (the counterfactual's output of the window's first block at the "
        "position; injected when questions are asked in the paper format)"
    ),
    "meta": "every label field of the row as one JSON object (the shared examples schema)",
    "changed": "whether the target's next token changes (the label)",
    "orig_token": "the target's next token on the prompt",
    "new_token": "its next token after the removal / patch",
    "prompt": "the prompt the target reads",
    "prompt_id": "the prompt's id (train/test split and validation group)",
    "hint": "the hint sentence that is removed",
    "removed": "what is removed: a token or the hint",
    "unit": "what is removed: token or hint",
    "position": "token position (with BOS) removed or patched",
    "clean": "the prompt the target reads",
    "counterfactual": "the prompt the patched hidden state comes from",
    "pair_id": "the (clean, counterfactual) pair (train/test split and validation group)",
    "layer_start": "first patched layer",
    "layer_end": "last patched layer",
    "window": "patched layers",
    "token": "the patched token",
    "position_kind": "subject, relation, option or other",
    "feature": "the SAE latent",
    "layer": "the target layer read",
    "source": "where the row was imported or built from",
    "source_split": "its split there",
    "source_row": "its row there",
}

TASK_NOTES = {
    "ablation": (
        "Input ablation: the target's greedy next token on a prompt and on the prompt with one "
        "input token (or its hint) removed (Captum FeatureAblation with a removal baseline; "
        "selfexplain.tasks.ablation). Split by prompt."
    ),
    "hint": (
        "Hint removal: the option the target chooses (the letter it rates highest) on a hinted "
        "multiple-choice prompt and on the same prompt without the hint sentence "
        "(selfexplain.tasks.hint). Split by question."
    ),
    "patching": (
        "Activation patching: the target's greedy next token on a clean prompt whose residual "
        "stream at one position, over a window of layers, is replaced by its value from a "
        "counterfactual prompt (selfexplain.tasks.patching). Split by pair (or layer window)."
    ),
    "features": (
        "Feature descriptions: a TopK SAE trained on the target's residual stream, each live "
        "latent described from its top-activating contexts; the explainer reads the decoder "
        "vector (selfexplain.tasks.features). Split by feature (or frequency band)."
    ),
}


def _cell(value):
    """A label value as a column cell: scalars as they are, lists and dicts as JSON text."""
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return value


def dataset_frame(examples: pl.DataFrame) -> pl.DataFrame:
    """The exported columns of examples (shared schema): id, question, answer, vector (only when
    some row has one), a column per label field, meta."""
    rows = meta(examples)
    keys = list(dict.fromkeys(k for m in rows for k in m))
    labels = {}
    for key in keys:
        name = key if key not in (*EXAMPLE_COLUMNS, "split", "task", "target") else f"meta_{key}"
        cells = [_cell(m.get(key)) for m in rows]
        kinds = {type(c) for c in cells if c is not None}
        if len(kinds) > 1 and kinds != {int, float}:  # mixed types: text, so one dtype
            cells = [None if c is None else str(c) for c in cells]
        labels[name] = pl.Series(name, cells, strict=False)
    out = examples.select("id", "question", "answer")
    if has_vectors(examples):
        out = out.with_columns(examples["vector"])
    return out.with_columns(*labels.values(), examples["meta"])


def _front_matter(task: str, target: str, splits: dict[str, int]) -> dict:
    return {
        "pretty_name": f"selfexplain {task} examples of {target}",
        "tags": ["interpretability", "self-explanation", "selfexplain", task],
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": s, "path": f"data/{s}-*.parquet"} for s in SPLITS if splits[s]
                ],
            }
        ],
    }


CARD = """---
{front}---

# selfexplain: {task} examples of {target}

{n} questions about the internals of the target model `{target}`
({n_train} train, {n_test} test), each with its ground-truth answer, made by
[selfexplain](https://arxiv.org/abs/2511.08579)'s pipeline (Li et al., *Training Language
Models to Explain Their Own Computations*, rebuilt as one Snakemake workflow).

## Target model

`{target}`: `{model}` (the config's `models.{target}`).

## How it was made

{made}
Answers follow one template (`unchanged` / `changes to "<token>"` for the change tasks), scored
by exact match and has-changed balanced accuracy.

## Columns

| column | type | meaning |
|---|---|---|
{columns}

## Config used

```yaml
{settings}
```

## Load

```python
import datasets

ds = datasets.load_dataset("parquet", data_files={{{files}}})
```
"""


def _how_made(examples: pl.DataFrame, task: str) -> str:
    """The card's note on how the rows were made, with the sources they came from."""
    sources = sorted({str(m.get("source")) for m in meta(examples) if m.get("source")})
    made = TASK_NOTES.get(task, f"task {task}")
    if sources:
        made += f" Rows imported or built from: {', '.join(sources)}."
    return made


def _column_table(frame: pl.DataFrame) -> str:
    """The card's column table rows: name, dtype, meaning."""
    return "\n".join(
        f"| `{name}` | {dtype} | {COLUMN_DOCS.get(name.removeprefix('meta_'), 'label field')} |"
        for name, dtype in frame.schema.items()
    )


def dataset_card(
    examples: pl.DataFrame,
    frame: pl.DataFrame,
    *,
    task: str,
    target: str,
    model: str | None,
    config: dict,
) -> str:
    """The README.md of an exported dataset: front matter for the hub, then what it is."""
    splits = {s: int((examples["split"] == s).sum()) for s in SPLITS}
    return CARD.format(
        front=yaml.safe_dump(_front_matter(task, target, splits), sort_keys=False),
        task=task,
        target=target,
        n=len(examples),
        n_train=splits["train"],
        n_test=splits["test"],
        model=model or "unknown",
        made=_how_made(examples, task),
        columns=_column_table(frame),
        settings=yaml.safe_dump(config, sort_keys=False, allow_unicode=True).rstrip(),
        files=", ".join(f'"{s}": "data/{s}-00000-of-00001.parquet"' for s in SPLITS if splits[s]),
    )


def export_dataset(
    examples: pl.DataFrame,
    out_dir: str | Path,
    *,
    task: str,
    target: str,
    model: str | None = None,
    config: dict | None = None,
) -> Path:
    """Write examples (one task, one target) as a dataset directory: data/<split>-*.parquet and
    README.md. The directory is replaced as a whole (written beside it, then renamed)."""
    missing = [c for c in SCHEMA if c not in examples.columns]
    if missing:
        raise ValueError(f"not explainer examples: missing columns {missing}")
    bad = sorted(set(examples["task"]) - {task}) + sorted(set(examples["target"]) - {target})
    if bad:
        raise ValueError(f"examples of {task!r} on {target!r} expected; found {bad}")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    frame = dataset_frame(examples)
    for split in SPLITS:
        part = frame.filter(examples["split"] == split)
        if len(part):
            part.write_parquet(tmp / "data" / f"{split}-00000-of-00001.parquet")
    card = dataset_card(examples, frame, task=task, target=target, model=model, config=config or {})
    (tmp / "README.md").write_text(card, encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
