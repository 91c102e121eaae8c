"""Generate explainer answers for the test split and score them per example."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl
import torch
from tqdm.auto import tqdm

from selfexplain.forward import pad_left
from selfexplain.metrics import score_change_rows
from selfexplain.models import load
from selfexplain.train import format_prompt


@torch.no_grad()
def generate_answers(
    model, tokenizer, questions: Sequence[str], *, max_new_tokens: int = 16, batch_size: int = 16
) -> list[str]:
    """Greedy answers to each question (batched, left-padded), cut at the first newline."""
    answers: list[str] = []
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    for start in tqdm(range(0, len(questions), batch_size), desc="generate", unit="batch"):
        chunk = questions[start : start + batch_size]
        seqs = [tokenizer(format_prompt(q))["input_ids"] for q in chunk]
        ids, mask = pad_left(seqs, tokenizer.pad_token_id)
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
        )
        for row in out[:, ids.shape[1] :].tolist():
            if eos in row:
                row = row[: row.index(eos)]
            answers.append(tokenizer.decode(row, skip_special_tokens=True).split("\n")[0].strip())
    return answers


def load_explainer(model_path: str | Path, adapter_dir: str | Path | None = None):
    """The explainer model (base model, plus a peft adapter when given) and its tokenizer."""
    model, tokenizer = load(model_path)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    return model, tokenizer


def evaluate_change_task(
    model,
    tokenizer,
    examples: pl.DataFrame,
    *,
    labels: dict[str, str],
    max_new_tokens: int = 16,
    batch_size: int = 16,
) -> pl.DataFrame:
    """One row per test example: ids, gold answer, prediction, and the change-task metrics."""
    preds = generate_answers(
        model,
        tokenizer,
        examples["question"].to_list(),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    scored = score_change_rows(examples["answer"].to_list(), preds)
    keep = ["id", "task", "target", "answer", "meta"]
    keep += [c for c in ("in_sample", "heatmap") if c in examples.columns]
    base = examples.select(keep).with_columns(
        pl.Series("prediction", preds, dtype=pl.String),
        *[pl.lit(v).alias(k) for k, v in labels.items()],
    )
    return pl.concat([base, scored], how="horizontal")
