"""Which explainer variants exist, which apply to which task, and how a control withholds the
privileged signal. The one place the workflow (common.smk) and the scripts consult.

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

from selfexplain.core.schema import has_vectors
from selfexplain.data.controls import shuffle_signal

VARIANTS = (
    "trained",
    "untrained",
    "no_signal",
    "prompt_only",
    "constant",
    "surface",
    "nearest_neighbour",
    "floor",
    "ceiling",
)
# variants that need rule train_explainer (an adapter)
TRAINED_VARIANTS = ("trained", "no_signal", "prompt_only")
# variants answered without any language model
MODEL_FREE = ("constant", "surface", "nearest_neighbour", "floor", "ceiling")
# task -> the variants it supports (data-scaling variants n{N} apply wherever trained does: see
# matrix.py). hint has one question per prompt, so nothing to shuffle within a prompt and no
# clause to strip: its controls are constant and surface (docs/method.md).
_CHANGE = ("trained", "untrained", "no_signal", "prompt_only", "constant", "surface")
TASK_VARIANTS: dict[str, tuple[str, ...]] = {
    "ablation": _CHANGE,
    "patching": _CHANGE,
    "hint": ("trained", "untrained", "constant", "surface"),
    "features": ("trained", "untrained", "no_signal", "nearest_neighbour", "floor", "ceiling"),
}


def applies(task: str, variant: str) -> bool:
    """Whether the variant is evaluated for the task."""
    return variant in TASK_VARIANTS.get(task, ())


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
    if task in ("ablation", "patching"):
        columns = ("question", "vector") if has_vectors(examples) else ("question",)
        return shuffle_signal(examples, task, seed, columns)
    if task != "features":
        raise ValueError(f"no_signal is not defined for task {task!r} (see variants.py)")

    def noise(example_id: str, width: int) -> list[float]:
        digest = hashlib.sha256(f"{seed}:no_signal:{example_id}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
        return rng.standard_normal(width).astype(np.float32).tolist()

    vectors = [
        noise(i, len(v)) for i, v in zip(examples["id"], examples["vector"].to_list(), strict=True)
    ]
    return examples.with_columns(pl.Series("vector", vectors, dtype=pl.List(pl.Float32)))
