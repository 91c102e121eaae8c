"""How a variant's questions are changed (its registry record's ``control``, core.registry):
the no_signal control withholds the privileged signal, prompt_only strips its clause.

- ``trained``: LoRA fine-tuned on the task; ``untrained``: same prompt (and injection), no
  training; ``no_signal``: trained and evaluated with the privileged input withheld (questions
  shuffled within each prompt; features: random vectors; patching in the paper format: the
  patched vectors shuffled within each pair); ``prompt_only``: trained and evaluated on
  questions whose token / position / layer clause is removed (controls.py; patching in the
  paper format: a zero vector, the question text alone);
  ``constant`` / ``surface``: no LM (baselines.py); ``nearest_neighbour``: the description of
  the most similar training vector (no model); ``floor`` / ``ceiling`` (features): another
  feature's true description / the true description itself, scored as predictions.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from selfexplain.core.registry import TASKS, variant
from selfexplain.core.schema import has_vectors
from selfexplain.data.controls import shuffle_signal, strip_signal


def withhold_signal(examples: pl.DataFrame, task: str, seed: int = 0) -> pl.DataFrame:
    """The no_signal control's examples: the privileged input replaced by noise.

    features: each vector becomes a Gaussian random vector of the same width, fixed per example
    id (so train and test see the same kind of input, carrying no information on the answer).
    ablation, patching: each question names the removed token / patched position and layers of
    another example of the same prompt (controls.shuffle_signal); patching rows that carry
    their patched vector (asked in the paper format, whose question is rebuilt from the row's
    own position and layers) get another example's vector of the same pair, by the same
    permutation.
    """
    if TASKS[task].signal:
        columns = ("question", "vector") if has_vectors(examples) else ("question",)
        return shuffle_signal(examples, task, seed, columns)
    if TASKS[task].change:
        raise ValueError(f"no_signal is not defined for task {task!r} (core.registry)")

    def noise(example_id: str, width: int) -> list[float]:
        digest = hashlib.sha256(f"{seed}:no_signal:{example_id}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
        return rng.standard_normal(width).astype(np.float32).tolist()

    vectors = [
        noise(i, len(v)) for i, v in zip(examples["id"], examples["vector"].to_list(), strict=True)
    ]
    return examples.with_columns(pl.Series("vector", vectors, dtype=pl.List(pl.Float32)))


def apply_control(df: pl.DataFrame, task: str, name: str, seed: int) -> pl.DataFrame:
    """The questions a variant is asked, in training and test alike: its registry record's
    control (withhold: withhold_signal; strip: controls.strip_signal); others as they are."""
    control = variant(name).control
    if control == "withhold":
        return withhold_signal(df, task, seed)
    if control == "strip":
        return strip_signal(df, task)
    return df


def controlled_rows(rows: pl.DataFrame, split: pl.DataFrame, task: str, name: str, seed: int):
    """rows (drawn from split) with the questions the variant asks them: its control applied
    over the whole split they were drawn from, every prompt with all of its rows, as training
    applies it before its draw; then the rows picked by id. So a control's test question is
    another question of the same prompt, as in training, however few of a prompt's rows the
    balanced test draw kept (applied to the draw alone, a prompt left with one row would be
    asked differently)."""
    if variant(name).control is None:
        return rows
    full = apply_control(split, task, name, seed)
    columns = [c for c in ("question", "vector") if c in rows.columns and c in full.columns]
    asked = full.select("id", *columns)
    missing = set(rows["id"].to_list()) - set(asked["id"].to_list())
    if missing:
        example = sorted(missing)[0]
        raise ValueError(
            f"{len(missing)} rows are not in the split they came from, e.g. {example!r}"
        )
    return (
        rows.drop(columns)
        .join(asked, on="id", how="left", maintain_order="left")
        .select(rows.columns)
    )
