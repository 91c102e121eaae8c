"""The explainer's answers to change questions and their scores, as the pipeline computes them:
answers from ``evaluate.change_answers`` at the run's calibrated threshold (moved to the
target's base rate of change), the metric line from
``metrics.score_change_rows`` + ``metrics.change_metrics``, and one JSONL record per question.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from selfexplain.cli.locate import ExplainerDir
from selfexplain.cli.render import write_jsonl
from selfexplain.core.formats import COMPACT, answer_format, change_answer, parse_change
from selfexplain.core.schema import read_parquet
from selfexplain.core.settings import EvaluateSettings
from selfexplain.evaluate.generation import (
    as_validated,
    change_answers,
    explainer_injector,
    load_explainer,
)
from selfexplain.evaluate.summary import run_summary, summary_threshold
from selfexplain.metrics import change_metrics, prior_shift, score_change_rows
from selfexplain.run import train_base_rate


def known_base_rate(info: ExplainerDir, labels: str | None = None) -> tuple[float | None, str]:
    """The target's base rate of change the explainer trained at, and where it was read: the
    run's train_summary.json, else the train split of the label file it trained on
    (``labels``, or the one next to results/); None when neither is there."""
    rate = run_summary(info.adapter).get("base_rate")
    if rate is not None:
        return rate, "the run's train_summary.json"
    path = info.labels_path(labels)
    if path is not None and path.is_file():
        return train_base_rate(read_parquet(path)), f"{path}'s train split"
    return None, ""


def natural_threshold(info: ExplainerDir, labels: str | None = None) -> tuple[float, str]:
    """The run's validation threshold moved to the target's base rate of change
    (metrics.prior_shift; known_base_rate), else left unmoved; and how it was set."""
    balanced = summary_threshold(run_summary(info.adapter))
    rate, source = known_base_rate(info, labels)
    if rate is None:
        return balanced, "validation-calibrated; no base rate of change known"
    how = f"validation {balanced:+.3f}, moved to base rate {rate:.3f} of {source}"
    return balanced + prior_shift(rate), how


def ask_threshold(info: ExplainerDir, rule: str, labels: str | None = None):
    """How an ask turns has-changed scores into answers: (threshold, rate, description).
    rule "rank": the share of the asked questions equal to the run's base rate of change, the
    highest scored, answer "changes to" (metrics.rank_threshold; rate is set); "natural": one
    threshold, natural_threshold; "balanced": the validation-calibrated threshold (balanced
    rows); a number: that threshold."""
    if rule == "rank":
        rate, source = known_base_rate(info, labels)
        if rate is not None:
            return 0.0, rate, f"rank: the highest-scored {rate:.3f} of the questions ({source})"
        rule = "balanced"
    if rule == "natural":
        value, how = natural_threshold(info, labels)
        return value, None, how
    if rule == "balanced":
        value = summary_threshold(run_summary(info.adapter))
        return value, None, f"{value:+.3f}, validation-calibrated on balanced rows"
    return float(rule), None, f"{float(rule):+.3f}, given"


def answer(
    model_path: Path, info: ExplainerDir, questions: list[str], args, vectors=None
) -> list[str]:
    """The explainer's answers as the pipeline's evaluate step makes them
    (evaluate.change_answers): "unchanged" or "changes to ..." as its has-changed score is
    above the threshold of ``args.threshold`` (ask_threshold). vectors: one per question, put
    in at its placeholder through the explainer's saved injection (a patching explainer
    trained on the paper's question)."""
    threshold, rate, how = ask_threshold(info, args.threshold, getattr(args, "labels", None))
    print(f"has-changed threshold: {how}", file=sys.stderr)
    fmt = answer_format(run_summary(info.adapter).get("answer_format") or "compact")
    questions = [q.replace(COMPACT.instruction, fmt.instruction) for q in questions]
    model, tokenizer = load_explainer(model_path, info.adapter)
    injector = None
    if vectors is not None:
        injector = explainer_injector(model, tokenizer, info.adapter, len(vectors[0]))
    with as_validated(model, info.adapter):  # as the pipeline's evaluate step scores it
        preds, _ = change_answers(
            model,
            tokenizer,
            questions,
            answer_format=fmt.name,
            threshold=threshold,
            rate=rate,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            pack=EvaluateSettings().pack,  # the pipeline's evaluate default
            vectors=vectors,
            injector=injector,
        )
    del model, tokenizer
    gc.collect()
    return preds


def metric_line(golds: list[str] | None, preds: list[str]) -> str:
    """has_changed_f1 and exact_match with the pipeline's scoring code (n only without truth)."""
    if golds is None:
        return f"n={len(preds)}"
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
    if out:
        write_jsonl(records, out)
    print(metric_line([rec["answer"] for rec in records] if truth else None, preds))
    return 0
