"""``selfexplain ask ablation``: what happens to the target's next token when each input token
(or the hint) is removed, asked of a trained explainer and compared with the true labels."""

from __future__ import annotations

import gc
import sys

import polars as pl

from selfexplain.cli.answers import answer, answer_records, finish
from selfexplain.cli.locate import ask_models
from selfexplain.cli.render import (
    agrees,
    change_text,
    mark,
    predicted_text,
    quote,
    short,
    text_table,
)
from selfexplain.core.formats import parse_change
from selfexplain.core.schema import meta, read_parquet
from selfexplain.core.settings import AblationSettings
from selfexplain.forward import next_token_logprobs
from selfexplain.models import load
from selfexplain.prompts import Prompt, read_prompts_jsonl
from selfexplain.tasks.ablation import (
    ablatable_positions,
    ablation_labels,
    ablation_question,
    encode,
    greedy_content_tokens,
)


def _ablation_prompts(args) -> list:
    if args.prompts:
        if args.hint:
            raise ValueError("--hint goes with --prompt; put hints in the JSONL file instead")
        return read_prompts_jsonl(args.prompts)
    if args.hint and len(args.prompt) != 1:
        raise ValueError("--hint needs exactly one --prompt")
    prompts = []
    for i, text in enumerate(args.prompt, start=1):
        if not text.strip():
            raise ValueError(f"--prompt {i} is empty")
        hint = args.hint if i == 1 else None
        if hint is not None and hint not in text:
            raise ValueError(f"--hint {hint!r} is not a substring of the prompt")
        prompts.append(Prompt(f"prompt-{i}", "custom", text, hint))
    return prompts


def trained_on_last_token(info, labels: str | None = None) -> bool:
    """Whether the explainer's training labels ask about removing a prompt's last token: read
    from the label file it trained on (``labels``, or the one next to results/), else the
    pipeline's default (ablation.drop_last). The pipeline drops that question (its removal
    always changes the output), so an ask poses it only where the explainer has seen it."""
    path = info.labels_path(labels)
    if path is None or not path.is_file():
        return not AblationSettings().drop_last
    rows = meta(read_parquet(path).filter(pl.col("split") == "train"))
    return any(
        m["unit"] == "token" and m.get("n_positions") and m["position"] == m["n_positions"] - 1
        for m in rows
    )


def _ablation_rows_without_truth(model, tokenizer, prompt, drop_last: bool) -> list[dict]:
    """The fields ablation_question needs (the target's tokens and greedy next token), computed
    as prompt_ablation_rows does, without the removal forwards."""
    ids = encode(tokenizer, prompt.text)
    logp = next_token_logprobs(model, [ids], tokenizer.pad_token_id)
    y0 = greedy_content_tokens(logp, tokenizer)[0]
    base = {
        "prompt_id": prompt.id,
        "kind": prompt.kind,
        "prompt": prompt.text,
        "orig_token": tokenizer.decode([y0]),
        "orig_token_id": y0,
    }
    rows = [
        base
        | {
            "unit": "token",
            "position": k,
            "token_index": pos,
            "removed": tokenizer.decode([ids[pos]]),
        }
        for k, pos in enumerate(ablatable_positions(tokenizer, ids))
    ]
    if drop_last:
        rows = rows[:-1]
    if prompt.hint:
        rows.append(base | {"unit": "hint", "position": None, "removed": prompt.hint})
    return rows


def cmd_ask_ablation(args) -> int:
    prompts = _ablation_prompts(args)
    info, target_dir, explainer_model = ask_models(args, "ablation")
    truth = not args.no_truth
    drop_last = not (args.keep_last or trained_on_last_token(info, args.labels))
    if drop_last:
        print(
            "not asked: removing each prompt's last token (its removal always changes the output;"
            " the explainer's labels drop it, ablation.drop_last; --keep-last asks it)",
            file=sys.stderr,
        )
    model, tokenizer = load(target_dir)
    if truth:
        rows = ablation_labels(model, tokenizer, prompts, drop_last=drop_last)
    else:
        rows = [
            r for p in prompts for r in _ablation_rows_without_truth(model, tokenizer, p, drop_last)
        ]
    del model, tokenizer  # free the target before the explainer is loaded
    gc.collect()

    preds = answer(explainer_model, info, [ablation_question(r) for r in rows], args)
    fields = {"prompt_id": "prompt_id", "unit": "unit", "position": "position", "token": "removed"}
    records = answer_records(rows, preds, truth, fields)

    _print_tables(prompts, rows, records, truth)
    return finish(records, preds, truth, args.out)


def _print_tables(prompts: list, rows: list[dict], records: list[dict], truth: bool) -> None:
    """Per prompt, a table of its removals: predicted (and true) change of the next token."""
    mismatches = 0
    for prompt in prompts:
        recs = [
            (r, rec) for r, rec in zip(rows, records, strict=True) if r["prompt_id"] == prompt.id
        ]
        print(f"\n[{prompt.id}] {quote(prompt.text)}")
        print(f"target's next token: {quote(recs[0][0]['orig_token'])}")
        header = ["pos", "removed token", "predicted"] + (["true", ""] if truth else [])
        table = []
        for row, rec in recs:
            pos = "hint" if row["unit"] == "hint" else str(row["position"])
            cells = [pos, short(quote(row["removed"])), predicted_text(rec)]
            if truth:
                agree = agrees(parse_change(rec["prediction"]), parse_change(rec["answer"]))
                mismatches += not agree
                cells += [change_text(rec["true_changed"], rec["true_new_token"]), mark(agree)]
            table.append(cells)
        print("\n".join(text_table(header, table)))
    if truth:
        print(f"\n* = predicted differs from the true label ({mismatches} of {len(records)})")
