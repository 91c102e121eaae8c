"""The no_signal control for the change tasks (ablation, patching): questions whose privileged
input (which token is removed; which position and layers are patched) is shuffled.

Each question is replaced by the question of another example of the *same prompt* (same
``prompt_id`` / ``pair_id``), so the prompt text, the template and the answer distribution are
unchanged, but the token or (position, layers) it names belongs to a different example: the
question no longer says which removal or patch the answer is about. Answers, ids and meta stay
with their example, so metrics score the same labels as the trained variant.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import polars as pl

from selfexplain.core.registry import TASKS
from selfexplain.core.schema import has_vectors

# meta key that identifies the prompt an example was made from, per task
GROUP_KEY = {name: t.group_key for name, t in TASKS.items() if t.signal}


def seeded_rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:shuffle_signal:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def derangement(n: int, rng: np.random.Generator) -> list[int]:
    """A seeded permutation of range(n) with no fixed point (n >= 2): a random cyclic order."""
    order = rng.permutation(n).tolist()
    perm = [0] * n
    for i, src in enumerate(order):
        perm[src] = order[(i + 1) % n]
    return perm


def shuffle_signal(
    examples: pl.DataFrame, task: str, seed: int = 0, columns: tuple[str, ...] = ("question",)
) -> pl.DataFrame:
    """Examples whose questions (and any other of `columns`, by the same permutation: a
    patching row's patched vector) are permuted among the examples of the same prompt.

    Within each prompt the permutation has no fixed point, so every question names another
    example's token (ablation) or (position, layer window) (patching). No question crosses
    prompts: a prompt with a single example cannot be shuffled, so its question loses the
    clause instead (strip_signal, as prompt_only asks it). Apply it to whole prompts (every
    row of a split, before any draw) so that training and test ask alike
    (data.variants.controlled_rows). Rows keep their order, ids, answers and meta; the
    result depends only on the frame and seed.
    """
    if task not in GROUP_KEY:
        raise ValueError(f"shuffle_signal is for {sorted(GROUP_KEY)}, not {task!r}")
    if examples.is_empty():
        return examples
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(examples["meta"].to_list()):
        groups.setdefault(str(json.loads(m)[GROUP_KEY[task]]), []).append(i)
    source = list(range(len(examples)))  # row i shows row source[i]'s question
    singles = []
    for key in sorted(groups):
        rows = groups[key]
        if len(rows) == 1:
            singles.extend(rows)
            continue
        for i, j in zip(rows, derangement(len(rows), seeded_rng(seed, key)), strict=True):
            source[i] = rows[j]
    order = pl.Series(source, dtype=pl.UInt32)
    out = examples.with_columns(*[examples[c].gather(order) for c in columns])
    if not singles:
        return out
    lone = pl.Series([False] * len(out), dtype=pl.Boolean).scatter(singles, True)
    indexed = out.with_row_index("_row")
    stripped = strip_signal(indexed.filter(lone), task)
    return pl.concat([indexed.filter(~lone), stripped]).sort("_row").drop("_row")


# the clause of a question that names the removed token / patched position and layers
_SIGNAL = {
    "ablation": (
        re.compile(r"^Removed: (token \d+ \(.*\)|the hint .*)\.$", re.M),
        "Removed: one part.",
    ),
    "patching": (
        re.compile(r"^Replaced: the hidden state at token \d+ \(.*\) in layers? [\d to]+\.$", re.M),
        "Replaced: one hidden state.",
    ),
}


def strip_signal(examples: pl.DataFrame, task: str) -> pl.DataFrame:
    """The prompt_only control's examples: each question with the clause that names the removed
    token (ablation) or the patched position and layers (patching) replaced by a generic one
    (its last line becomes "Removed: one part." / "Replaced: one hidden state."), so all
    questions of a prompt read alike. What remains learnable: each prompt's base rate of
    change and the outputs it tends to change to, from the prompt text alone.

    Patching rows that carry their patched vector get a zero vector instead: asked in the
    paper format (whose question is rebuilt from the row's position and layers), that is the
    question text without the activation (the paper's "- activation" ablation)."""
    if task not in _SIGNAL:
        raise ValueError(f"prompt_only is for {sorted(_SIGNAL)}, not {task!r}")
    pattern, generic = _SIGNAL[task]
    questions = []
    for q in examples["question"].to_list():
        new, n = pattern.subn(generic, q, count=1)
        if n != 1:
            raise ValueError(f"{task} question without the expected signal clause: {q!r}")
        questions.append(new)
    out = examples.with_columns(pl.Series("question", questions, dtype=pl.String))
    if has_vectors(out):
        zero = pl.col("vector").list.eval(pl.element() * 0.0)  # nulls stay null
        out = out.with_columns(zero.cast(examples.schema["vector"]))
    return out
