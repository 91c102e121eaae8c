"""Toy explainer examples shared by the training tests (imported, not a fixture)."""

from __future__ import annotations

import polars as pl

from selfexplain.core.schema import ExplainerExample, to_frame


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


def toy_patching_rows(n_pairs: int = 6, per_pair: int = 8) -> pl.DataFrame:
    """Patching-style examples of n_pairs pairs (the first two in test): a quarter of each
    pair's rows change, and exactly those are "subject" positions (a surface feature)."""
    from selfexplain.tasks.patching import patching_question

    rows = []
    for p in range(n_pairs):
        for k in range(per_pair):
            changed = k % 4 == 0
            meta = {
                "pair_id": f"pair{p}",
                "clean": f"Clean {p}",
                "counterfactual": f"Counter {p}",
                "orig_token": " A",
                "position": k,
                "token": f" t{k}",
                "position_kind": "subject" if changed else "relation",
                "layer_start": 4 * (k % 2),
                "layer_end": 4 * (k % 2) + 3,
                "window": 4,
                "n_tokens": per_pair,
                "changed": changed,
                "new_token": " B" if changed else " A",
            }
            rows.append(
                ExplainerExample(
                    id=f"patching/t/pair{p}/l{meta['layer_start']}/t{k}",
                    task="patching",
                    target="t",
                    split="test" if p < 2 else "train",
                    question=patching_question(meta),
                    answer='changes to " B"' if changed else "unchanged",
                    meta=meta,
                )
            )
    return to_frame(rows)
