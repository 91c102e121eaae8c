"""Toy explainer examples shared by the training tests (imported, not a fixture)."""

from __future__ import annotations

import polars as pl

from selfexplain.examples import ExplainerExample, to_frame


def toy_examples(n: int = 16, flip: bool = False) -> pl.DataFrame:
    """n ablation-style train examples alternating "changes to" / "unchanged" (flip swaps them);
    the question says which ("red" changes, "blue" does not), so a model can learn it."""
    rows = []
    for i in range(n):
        changed = (i % 2 == 0) != flip
        rows.append(
            ExplainerExample(
                id=f"e{i}",
                task="ablation",
                target="tiny",
                split="train",
                question=f"Prompt {i}: the {'red' if changed else 'blue'} one. Does it change?",
                answer='changes to " B"' if changed else "unchanged",
                meta={"changed": changed},
            )
        )
    return to_frame(rows)
