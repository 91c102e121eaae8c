"""The explainer's answers to change questions and their scores, as the pipeline computes them:
answers from ``evaluate.change_answers`` at the run's calibrated threshold, the metric line from
``metrics.score_change_rows`` + ``metrics.change_metrics``, and one JSONL record per question.
"""

from __future__ import annotations

import gc
from pathlib import Path

from selfexplain.metrics import change_answer, parse_change


def answer(model_path: Path, adapter: Path, questions: list[str], args) -> list[str]:
    """The explainer's answers, exactly as the pipeline's evaluate step makes them: "unchanged"
    or "changes to ..." as its has-changed score is at or above the threshold calibrated on
    the run's validation split (evaluate.change_answers)."""
    from selfexplain.evaluate import change_answers, load_explainer
    from selfexplain.train import calibrated_threshold

    model, tokenizer = load_explainer(model_path, adapter)
    preds, _ = change_answers(
        model,
        tokenizer,
        questions,
        threshold=calibrated_threshold(adapter),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    del model, tokenizer
    gc.collect()
    return preds


def metric_line(golds: list[str] | None, preds: list[str]) -> str:
    """has_changed_f1 and exact_match with the pipeline's scoring code (n only without truth)."""
    if golds is None:
        return f"n={len(preds)}"
    from selfexplain.metrics import change_metrics, score_change_rows

    m = change_metrics(score_change_rows(golds, preds))
    return (
        f"has_changed_f1={m['has_changed_f1']:.3f} exact_match={m['exact_match']:.3f} "
        f"n={len(preds)}"
    )


def answer_record(row: dict, pred_text: str, truth: bool) -> dict:
    """The predicted and (with truth) true change of one question, for the JSONL output."""
    pred = parse_change(pred_text)
    gold = change_answer(row["changed"], row["new_token"]) if truth else None
    return {
        "pred_changed": pred.changed,
        "pred_new_token": pred.new_token,
        "true_changed": row["changed"] if truth else None,
        "true_new_token": (row["new_token"] if row["changed"] else None) if truth else None,
        "prediction": pred_text,
        "answer": gold,
    }


def answer_records(rows: list[dict], preds: list[str], truth: bool, fields: dict) -> list[dict]:
    """One JSONL record per question: ``fields`` (record key -> row key) of its row, then its
    answer_record."""
    return [
        {key: row[src] for key, src in fields.items()} | answer_record(row, pred, truth)
        for row, pred in zip(rows, preds, strict=True)
    ]


def finish(records: list[dict], preds: list[str], truth: bool, out: str | None) -> int:
    """Write the records (with --out) and print the metric line, the last line of every ask."""
    from selfexplain.cli.render import write_jsonl

    if out:
        write_jsonl(records, out)
    print(metric_line([rec["answer"] for rec in records] if truth else None, preds))
    return 0
