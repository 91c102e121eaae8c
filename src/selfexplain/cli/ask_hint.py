"""``selfexplain ask hint``: does the option the target chooses on a hinted multiple-choice
prompt change when the hint sentence is removed, asked of a trained hint explainer and compared
with the true label (tasks.hint.hint_rows: the option letter the target rates highest, with and
without the hint)."""

from __future__ import annotations

import gc
import sys

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
from selfexplain.core.formats import hint_messages, parse_change
from selfexplain.core.schema import meta, read_parquet
from selfexplain.core.settings import HintSettings
from selfexplain.evaluate.summary import run_summary
from selfexplain.models import load
from selfexplain.prompts import Prompt, read_prompts_jsonl
from selfexplain.tasks.hint import (
    chat_text,
    chosen_letter,
    has_chat_template,
    hint_question,
    hint_rows,
    hinted_letter,
    option_letters,
    option_logprobs,
)


def _hint_prompts(args) -> list[Prompt]:
    """The asked prompts: --prompt/--hint pairs, or a JSONL file with a hint on every line."""
    if args.prompts:
        if args.hint:
            raise ValueError("--hint goes with --prompt; put hints in the JSONL file instead")
        prompts = read_prompts_jsonl(args.prompts)
        missing = [p.id for p in prompts if not p.hint]
        if missing:
            raise ValueError(
                f'{args.prompts}: every line needs a "hint"; missing for {missing[:10]}'
            )
        return prompts
    hints = args.hint or []
    if len(hints) != len(args.prompt):
        raise ValueError(
            f"give one --hint per --prompt ({len(args.prompt)} prompts, {len(hints)} hints)"
        )
    prompts = []
    for i, (text, hint) in enumerate(zip(args.prompt, hints, strict=True), start=1):
        if hint not in text:
            raise ValueError(f"--hint {hint!r} is not a substring of --prompt {i}")
        prompts.append(Prompt(f"prompt-{i}", "custom", text, hint))
    return prompts


def _rows_without_truth(model, tokenizer, prompts: list[Prompt], args, chat: bool) -> list[dict]:
    """The fields hint_question needs (the option chosen with the hint), as hint_rows computes
    them, without the hint-less forwards."""
    letters = [option_letters(p) for p in prompts]
    texts = [chat_text(tokenizer, p.text) if chat else p.text for p in prompts]
    scores, _ = option_logprobs(model, tokenizer, texts, letters, args.batch_size)
    rows = []
    for prompt, options, with_hint in zip(prompts, letters, scores, strict=True):
        hinted = hinted_letter(prompt, options)
        orig = chosen_letter(with_hint)
        rows.append(
            {
                "prompt_id": prompt.id,
                "prompt": prompt.text,
                "hint": prompt.hint,
                "orig_token": orig,
                "hinted": hinted,
                "follows_hint": orig == hinted,
            }
        )
    return rows


def trained_in_chat(info, labels: str | None = None) -> bool:
    """Whether the target read the prompts of the explainer's labels in its chat template: the
    label file it trained on (``labels``, or the one next to results/), else the pipeline's
    default (hint.chat)."""
    path = info.labels_path(labels)
    if path is None or not path.is_file():
        return HintSettings().chat
    rows = meta(read_parquet(path).head(1))
    return bool(rows and rows[0].get("chat"))


def _questions(info, rows: list[dict]) -> list[str]:
    """The questions in the format the explainer was trained on (train.question_format)."""
    if run_summary(info.adapter).get("question_format") == "paper":
        return ["\n\n".join(t["content"] for t in hint_messages(r)) for r in rows]
    return [hint_question(r) for r in rows]


def cmd_ask_hint(args) -> int:
    prompts = _hint_prompts(args)
    info, target_dir, explainer_model = ask_models(args, "hint")
    truth = not args.no_truth
    model, tokenizer = load(target_dir)
    chat = trained_in_chat(info, args.labels) and has_chat_template(tokenizer)
    where = "in the target's chat template" if chat else "as raw text"
    print(f"prompts read {where}, as in the explainer's labels (hint.chat)", file=sys.stderr)
    if truth:
        rows = hint_rows(model, tokenizer, prompts, batch_size=args.batch_size, chat=chat)
    else:
        rows = _rows_without_truth(model, tokenizer, prompts, args, chat)
    del model, tokenizer  # free the target before the explainer is loaded
    gc.collect()

    preds = answer(explainer_model, info, _questions(info, rows), args)
    fields = {"prompt_id": "prompt_id", "hinted": "hinted", "chosen": "orig_token"}
    records = answer_records(rows, preds, truth, fields)
    _print_table(rows, records, truth)
    return finish(records, preds, truth, args.out)


def _print_table(rows: list[dict], records: list[dict], truth: bool) -> None:
    """Each prompt and hint, then one line per prompt: the hinted letter, the option chosen
    with the hint, and the predicted (and true) change of that choice without the hint."""
    for row in rows:
        print(f"\n[{row['prompt_id']}] {quote(row['prompt'])}\nhint: {quote(row['hint'])}")
    header = ["prompt", "hinted", "chosen", "predicted"] + (["true", ""] if truth else [])
    table, mismatches = [], 0
    for row, rec in zip(rows, records, strict=True):
        cells = [row["prompt_id"], str(row["hinted"] or "?"), row["orig_token"]]
        cells.append(predicted_text(rec))
        if truth:
            agree = agrees(parse_change(rec["prediction"]), parse_change(rec["answer"]))
            mismatches += not agree
            cells += [change_text(rec["true_changed"], rec["true_new_token"]), mark(agree)]
        table.append([short(c) for c in cells])
    print("\nthe option the target chooses (the letter it rates highest) with the hint; what the")
    print("explainer predicts it becomes without the hint" + (", and the truth:" if truth else ":"))
    print("\n".join(text_table(header, table, right=0)))
    if truth:
        print(f"\n* = predicted differs from the true label ({mismatches} of {len(records)})")
