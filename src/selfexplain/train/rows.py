"""Which rows a run trains on and the vectors they carry: change-task rows or feature
descriptions, and the vectors only where a question has a placeholder for them."""

from __future__ import annotations

import polars as pl

from selfexplain.core.formats import PLACEHOLDER
from selfexplain.core.registry import CHANGE_TASKS
from selfexplain.core.schema import has_vectors, without_vectors


def is_change_frame(examples: pl.DataFrame) -> bool:
    """Whether the rows are change-task questions (their answers say "unchanged" or "changes
    to"), as opposed to feature descriptions; by the frame's task column."""

    tasks = examples["task"] if "task" in examples.columns else ()
    return bool(len(tasks)) and tasks[0] in CHANGE_TASKS


def vectors_asked(examples: pl.DataFrame) -> pl.DataFrame:
    """The rows, without the vectors of change-task rows whose questions have no placeholder
    for them: patching labels keep each patch's vector, but a compact question names the
    patch in words (only the paper question injects it; examples.with_question_format)."""

    if not has_vectors(examples) or not is_change_frame(examples):
        return examples
    if examples["question"].str.contains(PLACEHOLDER, literal=True).any():
        return examples
    return without_vectors(examples)


def example_vectors(examples: pl.DataFrame) -> list[list[float]] | None:
    """The examples' vectors, or None when they carry none (all rows must agree)."""
    if not has_vectors(examples):
        return None
    if examples["vector"].null_count():
        raise ValueError("some examples have a vector and some do not: cannot mix them")
    return examples["vector"].to_list()
