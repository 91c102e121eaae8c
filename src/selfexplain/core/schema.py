"""The shared explainer-example schema: one row per question, stored as parquet."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from selfexplain.core.formats import (
    COMPACT,
    PLACEHOLDER,
    answer_format,
    change_answer,
    hint_messages,
    parse_change,
    patching_question,
)

SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "task": pl.String(),
    "target": pl.String(),
    "split": pl.String(),
    "question": pl.String(),
    "answer": pl.String(),
    "vector": pl.List(pl.Float32()),
    "meta": pl.String(),
}


@dataclass
class ExplainerExample:
    """One question about the target's internals with its ground-truth answer."""

    id: str
    task: str
    target: str
    split: str
    question: str
    answer: str
    vector: list[float] | None = None
    meta: dict = field(default_factory=dict)


def change_example(
    example_id: str, row: dict, question: str, split: str, group: str
) -> ExplainerExample:
    """A change-task example from one label row (task and target from its id,
    "<task>/<target>/..."): its answer from the row's changed / new_token, its vector (if the
    row has one) kept out of meta, and the unit it was held out with as meta "split_group"."""
    task, target = example_id.split("/")[:2]
    return ExplainerExample(
        id=example_id,
        task=task,
        target=target,
        split=split,
        question=question,
        answer=change_answer(row["changed"], row["new_token"]),
        vector=row.get("vector"),
        meta={k: v for k, v in row.items() if k != "vector"} | {"split_group": group},
    )


def to_frame(examples: Iterable[ExplainerExample]) -> pl.DataFrame:
    """Examples as a polars frame in the shared schema (meta serialised as JSON)."""
    rows = []
    for ex in examples:
        row = asdict(ex)
        row["meta"] = json.dumps(ex.meta, sort_keys=True)
        rows.append(row)
    return pl.DataFrame(rows, schema=SCHEMA)


def write_parquet(df: pl.DataFrame, path: str | Path) -> None:
    """Write a frame atomically (temp file + rename) so no half-written file is ever consumed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.write_parquet(tmp)
    os.replace(tmp, path)


def read_parquet(path: str | Path) -> pl.DataFrame:
    """Read a parquet file produced by an earlier step; a corrupt file names itself and the fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; run the rule that produces it first")
    try:
        return pl.read_parquet(path)
    except Exception as err:  # polars raises several error types for damaged files
        raise ValueError(
            f"{path}: not a readable parquet file ({type(err).__name__}: {err}). "
            "It is probably truncated or corrupt: delete it and re-run snakemake to rebuild it."
        ) from err


def read_examples(path: str | Path) -> pl.DataFrame:
    """Read an examples parquet and check it has the shared schema's columns."""
    df = read_parquet(path)
    missing = [c for c in SCHEMA if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {list(SCHEMA)}")
    return df


def meta(df: pl.DataFrame) -> list[dict]:
    """The decoded meta dicts of a frame's rows."""
    return [json.loads(m) for m in df["meta"]]


def split_of(key: str, test_fraction: float, seed: int) -> str:
    """Deterministic train/test assignment of a held-out key (prompt id, layer, ...)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < test_fraction else "train"


def held_out(keys: Iterable, test_fraction: float, seed: int, salt: str = "") -> set:
    """A seeded choice of exactly round(test_fraction * n) of the distinct keys (at least one,
    and never all when there are two or more): the test split's prompts, pairs or layers."""
    keys = sorted(set(keys), key=str)
    if len(keys) < 2:
        return set()
    k = min(max(1, round(test_fraction * len(keys))), len(keys) - 1)
    order = sorted(keys, key=lambda key: hashlib.sha256(f"{seed}:{salt}{key}".encode()).digest())
    return set(order[:k])


def held_out_groups(group_of: Mapping[str, str], test_fraction: float, seed: int) -> set[str]:
    """Whole groups for the test split: group_of maps each unit (a pair) to its group (its
    entity component, its relation). In a seeded order, each group is taken while the held-out
    units stay within round(test_fraction * units) (held_out's count: so that singleton groups
    named by their unit give held_out's choice); at least one group, never all of two or more."""
    sizes = Counter(group_of.values())
    if len(sizes) < 2:
        return set()
    n = len(group_of)
    target = min(max(1, round(test_fraction * n)), n - 1)
    order = sorted(sizes, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).digest())
    chosen, taken = set(), 0
    for group in order:
        if taken + sizes[group] <= target:
            chosen.add(group)
            taken += sizes[group]
    if not chosen:  # every group is larger than the target: the first smallest one
        chosen.add(min(order, key=lambda g: sizes[g]))
    return chosen


def linked_groups(links: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """Connected components of units linked by shared keys (pairs by their subjects): each unit
    mapped to its component's name, the component's first unit (by str); a unit without keys is
    a component of its own (union-find)."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for unit, keys in links.items():
        for key in keys:
            parent[root(("key", str(key)))] = root(("unit", str(unit)))
    names: dict[tuple[str, str], str] = {}
    for unit in sorted(links, key=str):
        names.setdefault(root(("unit", str(unit))), str(unit))
    return {unit: names[root(("unit", str(unit)))] for unit in links}


def subsample(
    df: pl.DataFrame, n: int | None, seed: int, stratify: str | None = None
) -> pl.DataFrame:
    """At most n rows, chosen by seed; with stratify, classes of that meta key are balanced."""
    if n is None or len(df) <= n:
        return df.sample(fraction=1.0, shuffle=True, seed=seed)
    if stratify is None:
        return df.sample(n=n, shuffle=True, seed=seed)
    keyed = df.with_columns(
        pl.Series("_cls", [str(m.get(stratify)) for m in meta(df)], dtype=pl.String)
    )
    groups = keyed.partition_by("_cls", maintain_order=True)
    groups.sort(key=len)
    parts: list[pl.DataFrame] = []
    left = n
    for i, g in enumerate(groups):
        take = min(len(g), left // (len(groups) - i))
        parts.append(g.sample(n=take, shuffle=True, seed=seed))
        left -= take
    out = pl.concat(parts).drop("_cls")
    return out.sample(fraction=1.0, shuffle=True, seed=seed)


def select(df: pl.DataFrame, split: str, ids: Sequence[str] | None = None) -> pl.DataFrame:
    """Rows of one split (optionally restricted to ids)."""
    out = df.filter(pl.col("split") == split)
    if ids is not None:
        out = out.filter(pl.col("id").is_in(list(ids)))
    return out


def has_vectors(df: pl.DataFrame) -> bool:
    """Whether any row of the frame carries a vector (features; patching labels)."""
    return "vector" in df.columns and df["vector"].null_count() < len(df)


def without_vectors(df: pl.DataFrame) -> pl.DataFrame:
    """The rows with no vector: a change task's question names what it asks about in words, so
    a vector its rows carry (a released patching set's patched vector) is not injected."""
    return df.with_columns(pl.lit(None, dtype=SCHEMA["vector"]).alias("vector"))


QUESTION_FORMATS = ("compact", "paper")
PAPER_QUESTION_TASKS = ("hint", "patching")  # the tasks whose rows question_format paper rewrites


def with_question_format(df: pl.DataFrame, task: str, name: str) -> pl.DataFrame:
    """Rows with their questions in the question format `name` (train.question_format; the
    labels are written compact). paper: a hint question becomes the reference user turn (the
    row's system prompt, the hinted prompt, then released_eval.HINT_QUESTION, as paragraphs);
    a patching question becomes the reference one (released_eval.PATCHING_QUESTION: layers,
    token and prompt, not the counterfactual), whose feature placeholder carries the row's
    patched vector (features.injection.PLACEHOLDER; the rows must keep their vectors).
    Single-token ablation has no reference question and keeps its own."""
    if name not in QUESTION_FORMATS:
        raise ValueError(f"unknown question format {name!r}: use one of {list(QUESTION_FORMATS)}")
    if name == "compact" or task not in PAPER_QUESTION_TASKS or df.is_empty():
        return df

    if task == "patching":
        questions = [patching_question(m, PLACEHOLDER) for m in meta(df)]
    else:
        questions = ["\n\n".join(t["content"] for t in hint_messages(m)) for m in meta(df)]
    return df.with_columns(pl.Series("question", questions, dtype=pl.String))


def vector_question(task: str, question_format: str) -> bool:
    """Whether a change task's questions in this format carry the row's vector (patching in
    the paper format); otherwise they name what they ask about in words."""
    return task == "patching" and question_format == "paper"


def with_answer_format(df: pl.DataFrame, name: str) -> pl.DataFrame:
    """Change-task rows with their answers (and the question's sentence on how to answer) in
    the answer format `name` (metrics.AnswerFormat; the labels are written compact). A paper
    "unchanged" answer names the current output, the row's meta ``orig_token``."""

    fmt = answer_format(name)
    if fmt is COMPACT or df.is_empty():
        return df
    questions, answers = [], []
    for question, answer, m in zip(df["question"], df["answer"], meta(df), strict=True):
        if COMPACT.instruction not in question:
            raise ValueError(f"question has no {COMPACT.instruction!r} to rewrite: {question!r}")
        parsed = parse_change(answer)
        if not parsed.valid:
            raise ValueError(f"answer {answer!r} is not a change answer")
        questions.append(question.replace(COMPACT.instruction, fmt.instruction))
        answers.append(fmt.answer(bool(parsed.changed), parsed.new_token, m.get("orig_token")))
    return df.with_columns(
        pl.Series("question", questions, dtype=pl.String),
        pl.Series("answer", answers, dtype=pl.String),
    )
