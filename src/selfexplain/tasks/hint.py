"""Hint-removal labels: does the target's next token change when the hint sentence of a
multiple-choice prompt ("A Stanford professor thinks the answer is C.") is removed?

The paper's main input-ablation setting as a task of its own: two forwards per prompt, the
prompt and the prompt with its hint substring deleted (its first occurrence). "Next token" means
the greedy token among ordinary (non-special) tokens, as in the ablation task.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from selfexplain.core.formats import change_answer
from selfexplain.core.schema import ExplainerExample, split_of, to_frame
from selfexplain.forward import next_token_logprobs
from selfexplain.tasks.ablation import encode, greedy_content_tokens

if TYPE_CHECKING:
    import polars as pl

    from selfexplain.prompts import Prompt

# prompt meta copied into every row (None when a user prompt lacks them)
META_KEYS = (
    "hinted",
    "hint_correct",
    "hint_position",
    "hint_template",
    "correct",
    "relation",
    "subject",
)


def without_hint(prompt: Prompt) -> str:
    """The prompt's text with (the first occurrence of) its hint removed."""
    if not prompt.hint or prompt.hint not in prompt.text:
        raise ValueError(f"prompt {prompt.id!r} has no hint that is a substring of its text")
    return prompt.text.replace(prompt.hint, "", 1)


def hint_rows(model, tokenizer, prompts: Sequence[Prompt], *, batch_size: int = 32) -> list[dict]:
    """Label rows for removing the hint of each prompt, batch_size prompts per step (their
    prompts, then their hint-less prompts, in forwards of batch_size sequences)."""
    prompts = list(prompts)
    ablated = [without_hint(p) for p in prompts]  # check every prompt before any forward
    rows: list[dict] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="hint labels", unit="batch"):
        chunk = prompts[start : start + batch_size]
        seqs = [encode(tokenizer, p.text) for p in chunk]
        seqs += [encode(tokenizer, t) for t in ablated[start : start + batch_size]]
        logp = next_token_logprobs(model, seqs, tokenizer.pad_token_id, batch_size=batch_size)
        top1 = greedy_content_tokens(logp, tokenizer)
        n = len(chunk)
        for i, prompt in enumerate(chunk):
            y0, new_id = top1[i], top1[n + i]
            orig = tokenizer.decode([y0])
            row = {
                "prompt_id": prompt.id,
                "kind": prompt.kind,
                "prompt": prompt.text,
                "hint": prompt.hint,
                "orig_token": orig,
                "orig_token_id": y0,
                "new_token": tokenizer.decode([new_id]),
                "new_token_id": new_id,
                "changed": new_id != y0,
                "logp_orig": float(logp[i, y0]),
                "logp_ablated": float(logp[n + i, y0]),
            }
            row |= {k: prompt.meta.get(k) for k in META_KEYS}
            row["follows_hint"] = _follows_hint(orig, row["hinted"])
            rows.append(row)
    return rows


def _follows_hint(orig_token: str, hinted: str | None) -> bool:
    return hinted is not None and orig_token.strip() == str(hinted)


def hint_question(row: dict) -> str:
    """Natural-language question about one hint removal, in a fixed template."""
    return (
        f"Prompt: {json.dumps(row['prompt'])}\n"
        f"The model's next token is {json.dumps(row['orig_token'])}.\n"
        f"If the hint {json.dumps(row['hint'].strip())} is removed from the prompt, what is the "
        'model\'s next token? Answer "unchanged" or "changes to" the new token.'
    )


# the test split holds out whole subjects or (relation, subject) questions (split_group)
HOLDOUTS = ("subject", "question")


def question_key(row: dict) -> str:
    """The question of a hint row: its (relation, subject), else its prompt (the cluster of the
    controls and the CIs; the question holdout)."""
    if row.get("relation") and row.get("subject"):
        return f"{row['relation']}:{row['subject']}"
    return str(row["prompt_id"])


def split_group(row: dict, holdout: str = "subject") -> str:
    """What a hint row's split holds out: its subject (holdout "subject": every question about
    it, in any relation), or its (relation, subject) question (holdout "question"); a row
    without them (a user prompt), its prompt."""
    if holdout not in HOLDOUTS:
        raise ValueError(f"hint holdout must be one of {list(HOLDOUTS)}, got {holdout!r}")
    if holdout == "subject" and row.get("subject"):
        return f"subject:{row['subject']}"
    return question_key(row)


def hint_examples(
    rows: Iterable[dict],
    target: str,
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
    holdout: str = "subject",
) -> list[ExplainerExample]:
    """Explainer examples from hint label rows, split train/test by subject (default: no test
    prompt asks about a subject of a training prompt) or by (relation, subject) question; the
    generator reuses each question with other options, hints and layouts. Each row's meta gets
    the unit held out as "split_group" (the validation carve-out keeps it too: data.draws)."""
    out = []
    for row in rows:
        group = split_group(row, holdout)
        out.append(
            ExplainerExample(
                id=f"hint/{target}/{row['prompt_id']}",
                task="hint",
                target=target,
                split=split_of(group, test_fraction, seed),
                question=hint_question(row),
                answer=change_answer(row["changed"], row["new_token"]),
                vector=None,
                meta=row | {"split_group": group},
            )
        )
    return out


def label(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    target: str,
    *,
    batch_size: int = 32,
    test_fraction: float = 0.3,
    holdout: str = "subject",
) -> pl.DataFrame:
    """The hint labelling recipe (rule label_hint): label rows of every prompt on the target,
    then explainer examples (split by subject or question: holdout) as a frame of the shared
    schema."""
    split_group({"prompt_id": ""}, holdout)  # refuse an unknown holdout before any forward
    rows = hint_rows(model, tokenizer, prompts, batch_size=batch_size)
    examples = hint_examples(rows, target, test_fraction=test_fraction, holdout=holdout)
    return to_frame(examples)


def surface_features(meta: dict) -> dict[str, str]:
    """Features of a hint row that a non-LM baseline may use: only what the question states
    (never the label: changed, new token, log-probs). follows_hint ("yes"/"no"; "unknown"
    without a hinted letter): the model's next token, stripped, is the hinted letter; the hint's
    position and template; the model's next token, stripped."""
    hinted = meta.get("hinted")
    if hinted is None:
        follows = "unknown"
    else:
        follows = "yes" if _follows_hint(str(meta["orig_token"]), hinted) else "no"
    return {
        "follows_hint": follows,
        "hint_position": str(meta.get("hint_position")),
        "hint_template": str(meta.get("hint_template")),
        "orig_token": str(meta["orig_token"]).strip(),
    }
