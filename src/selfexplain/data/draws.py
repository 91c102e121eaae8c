"""Which rows a run trains, validates and is tested on: clusters (prompt, pair, question,
feature), balanced draws, the validation carve-out, and the controls applied before a draw.
"""

from __future__ import annotations

import polars as pl

from selfexplain.core.registry import CHANGE_TASKS
from selfexplain.core.schema import meta, select, split_of, subsample
from selfexplain.data.controls import GROUP_KEY
from selfexplain.data.variants import apply_control
from selfexplain.tasks.hint import question_key


def group_of(task: str, row_meta: dict, row_id: str) -> str:
    """The cluster a row belongs to: its prompt (ablation), pair (patching), question (hint:
    the prompts of one (relation, subject) question) or the row itself (features)."""
    if task == "hint":
        return question_key(row_meta)
    key = GROUP_KEY.get(task)  # the meta key of the prompt / pair
    return str(row_meta[key]) if key else row_id


def groups(df: pl.DataFrame, task: str) -> list[str]:
    """group_of for every row of a frame."""
    return [group_of(task, m, i) for m, i in zip(meta(df), df["id"], strict=True)]


def split_groups(df: pl.DataFrame, task: str) -> list[str]:
    """What the test split held out, for every row: meta "split_group" (written with the
    examples: a fact, a subject, a component of pairs), else the row's cluster (group_of)."""
    return [
        str(m["split_group"]) if m.get("split_group") else group_of(task, m, i)
        for m, i in zip(meta(df), df["id"], strict=True)
    ]


def strata(df: pl.DataFrame, task: str) -> list[str]:
    """The balancing key of each row: has-changed, and for ablation the prompt kind too."""
    out = []
    for m in meta(df):
        key = str(m.get("changed"))
        out.append(f"{m.get('kind')}|{key}" if task == "ablation" else key)
    return out


def balanced(df: pl.DataFrame, task: str, n: int | None, seed: int) -> pl.DataFrame:
    """Equal rows per stratum (see strata), as many as the smallest stratum allows (at most n in
    all), in a seeded random order. Features rows have no classes: n rows at random."""
    if task not in CHANGE_TASKS:
        return subsample(df, n, seed)
    keyed = df.with_columns(pl.Series("_stratum", strata(df, task), dtype=pl.String))
    parts = {p["_stratum"][0]: p for p in keyed.partition_by("_stratum", maintain_order=True)}
    if task == "ablation":  # a kind with one class only cannot be balanced: it is left out
        kinds = {k.split("|")[0] for k in parts}
        kept = {k for k in kinds if f"{k}|True" in parts and f"{k}|False" in parts}
        parts = {s: p for s, p in parts.items() if s.split("|")[0] in kept}
    if len(parts) < 2:
        return keyed.head(0).drop("_stratum")
    per = min(len(p) for p in parts.values())
    if n is not None:
        per = min(per, n // len(parts))
    out = pl.concat([p.sample(n=per, shuffle=True, seed=seed) for p in parts.values()])
    out = out.drop("_stratum")
    return out.sample(fraction=1.0, shuffle=True, seed=seed)


def train_validation(
    examples: pl.DataFrame, task: str, val_fraction: float
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The train split divided into training and validation rows by whole split groups (the
    units the test split holds out: split_groups), so validation shares no fact, subject or
    pair with training as the test split does; fixed, not seeded: every run of a task
    validates on the same groups."""
    train = select(examples, "train")
    if not val_fraction:
        return train, train.head(0)
    is_val = [split_of(f"val:{g}", val_fraction, 0) == "test" for g in split_groups(train, task)]
    mask = pl.Series(is_val, dtype=pl.Boolean)
    return train.filter(~mask), train.filter(mask)


def training_rows(
    examples: pl.DataFrame,
    task: str,
    variant: str,
    seed: int,
    *,
    n_train: int | None,
    n_variant: int | None,
    val_fraction: float,
    n_val: int | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(training rows, validation rows) of one trained run. n_train: the draw's size (None = all
    balanced rows); n_variant: rows of this variant (the first n_variant of the draw for a
    data-scaling variant; None = the whole draw). Controls are applied before the draw, so a
    control trains on exactly the trained variant's rows with its questions changed."""
    train, val = train_validation(examples, task, val_fraction)
    train = apply_control(train, task, variant, seed)
    val = apply_control(val, task, variant, seed)
    draw = balanced(train, task, n_train, seed)
    if n_variant is not None:
        draw = draw.head(n_variant)
    return draw, balanced(val, task, n_val, 0)
