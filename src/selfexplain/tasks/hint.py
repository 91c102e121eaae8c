"""Hint-removal labels: does the option the target chooses change when the hint sentence of a
multiple-choice prompt ("A Stanford professor thinks the answer is C.") is removed?

The paper's main input-ablation setting as a task of its own: two forwards per prompt, the
prompt and the prompt with its hint substring deleted (its first occurrence). The target's
answer is the option letter it rates highest at the answer position (letter_logprobs: each
letter's log-prob, the larger of its two spellings "C" and " C"), not its greedy next token:
a small model's greedy token on a hint-less prompt is often a space or a newline, so a label
of the next token would measure the answer's formatting, not the answer. With chat (hint.chat)
the target reads each prompt as the user turn of its chat template, where it has one.
"""

from __future__ import annotations

import functools
import json
import math
import re
import string
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from selfexplain.core.schema import ExplainerExample, change_example, split_of, to_frame
from selfexplain.forward import next_token_logprobs
from selfexplain.tasks.ablation import encode, greedy_content_tokens

if TYPE_CHECKING:
    import polars as pl
    import torch

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
# an option line of a user prompt: "A. text", "A) text", "(A) text" or "A: text"
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[.):]\s", re.MULTILINE)
_STANDALONE_LETTER = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")


def without_hint(prompt: Prompt) -> str:
    """The prompt's text with (the first occurrence of) its hint removed."""
    if not prompt.hint or prompt.hint not in prompt.text:
        raise ValueError(f"prompt {prompt.id!r} has no hint that is a substring of its text")
    return prompt.text.replace(prompt.hint, "", 1)


def option_letters(prompt: Prompt) -> str:
    """The option letters of a multiple-choice prompt: its meta's options (generated and MMLU
    prompts), else the letters that start its option lines ("A. ...", "(B) ..."), from A on."""
    if prompt.meta.get("options"):
        return "".join(prompt.meta["options"])
    found = set(_OPTION_LINE.findall(prompt.text))
    letters = ""
    for letter in string.ascii_uppercase:
        if letter not in found:
            break
        letters += letter
    if len(letters) < 2:
        raise ValueError(
            f"prompt {prompt.id!r}: no options found (lines starting 'A. ', 'B. ', ...); the "
            "hint task reads the option the target chooses"
        )
    return letters


def hinted_letter(prompt: Prompt, letters: str) -> str | None:
    """The letter the hint names: the prompt's meta "hinted", else the last option letter
    standing alone in the hint ("A Stanford professor thinks it is C." -> "C"), else None."""
    if prompt.meta.get("hinted"):
        return str(prompt.meta["hinted"])
    found = [x for x in _STANDALONE_LETTER.findall(prompt.hint or "") if x in letters]
    return found[-1] if found else None


@functools.lru_cache(maxsize=64)
def _letter_ids(tokenizer, letters: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    out = []
    for letter in letters:
        ids = []
        for text in (letter, " " + letter):
            enc = tokenizer.encode(text, add_special_tokens=False)
            if len(enc) == 1 and tokenizer.decode(enc) == text:
                ids.append(enc[0])
        if not ids:
            raise ValueError(f"the tokenizer spells option {letter!r} with no single token")
        out.append((letter, tuple(sorted(set(ids)))))
    return tuple(out)


def letter_token_ids(tokenizer, letters: str) -> dict[str, list[int]]:
    """Per option letter, the single tokens that spell it: bare ("C") and after a space (" C")."""
    return {letter: list(ids) for letter, ids in _letter_ids(tokenizer, letters)}


def letter_logprobs(logp: torch.Tensor, letter_ids: dict[str, list[int]]) -> dict[str, float]:
    """Each option letter's log-prob at one position (logp: (vocab,)): the larger of its
    spellings'; every other token (spaces, newlines, words) is ignored."""
    return {letter: float(logp[ids].max()) for letter, ids in letter_ids.items()}


def chosen_letter(scores: dict[str, float]) -> str:
    """The option the target chooses: the letter of the highest log-prob (ties: the first)."""
    return max(scores, key=scores.__getitem__)


def letter_mass(scores: dict[str, float]) -> float:
    """The probability of answering with any option letter (the larger spelling of each)."""
    return sum(math.exp(v) for v in scores.values())


def _label_row(prompt: Prompt, letters: str, with_hint: dict, without: dict) -> dict:
    orig, new = chosen_letter(with_hint), chosen_letter(without)
    row = {
        "prompt_id": prompt.id,
        "kind": prompt.kind,
        "prompt": prompt.text,
        "hint": prompt.hint,
        "orig_token": orig,  # the option chosen with the hint
        "new_token": new,  # the option chosen without it
        "changed": new != orig,
        "logp_orig": with_hint[orig],
        "logp_ablated": without[orig],
        "letter_logprobs": with_hint,
        "letter_logprobs_ablated": without,
        "letter_mass": letter_mass(with_hint),
        "letter_mass_ablated": letter_mass(without),
    }
    row |= {k: prompt.meta.get(k) for k in META_KEYS}
    row["hinted"] = hinted_letter(prompt, letters)
    row["follows_hint"] = _follows_hint(orig, row["hinted"])
    return row


def option_logprobs(
    model, tokenizer, texts: Sequence[str], letters: Sequence[str], batch_size: int = 32
) -> tuple[list[dict[str, float]], list[str]]:
    """Per text, the log-probs of its option letters (letters[i]) as its next token
    (letter_logprobs), and its greedy next token among ordinary tokens, decoded."""
    seqs = [encode(tokenizer, t) for t in texts]
    logp = next_token_logprobs(model, seqs, tokenizer.pad_token_id, batch_size=batch_size)
    top1 = greedy_content_tokens(logp, tokenizer)
    scores = [
        letter_logprobs(row, letter_token_ids(tokenizer, options))
        for row, options in zip(logp, letters, strict=True)
    ]
    return scores, [tokenizer.decode([t]) for t in top1]


def hint_rows(
    model, tokenizer, prompts: Sequence[Prompt], *, batch_size: int = 32, chat: bool = False
) -> list[dict]:
    """Label rows for removing the hint of each prompt, batch_size prompts per step (their
    prompts, then their hint-less prompts, in forwards of batch_size sequences): the option
    chosen with and without the hint, their letters' log-probs, and the greedy next tokens
    (next_token, next_token_ablated: what the answer's formatting is). chat: the target reads
    each prompt as the user turn of its chat template (chat_text) where it has one, raw where
    not (row "chat": whether it did); the rows keep the prompt itself."""
    chat = chat and has_chat_template(tokenizer)
    prompts = list(prompts)
    ablated = [without_hint(p) for p in prompts]  # check every prompt before any forward
    letters = [option_letters(p) for p in prompts]
    rows: list[dict] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="hint labels", unit="batch"):
        chunk = prompts[start : start + batch_size]
        n, options = len(chunk), letters[start : start + batch_size]
        texts = [p.text for p in chunk] + ablated[start : start + n]
        if chat:
            texts = [chat_text(tokenizer, t) for t in texts]
        scores, greedy = option_logprobs(model, tokenizer, texts, options * 2, batch_size)
        for i, prompt in enumerate(chunk):
            row = _label_row(prompt, options[i], scores[i], scores[n + i])
            row["next_token"], row["next_token_ablated"] = greedy[i], greedy[n + i]
            row["chat"] = chat
            rows.append(row)
    return rows


def _follows_hint(orig_token: str, hinted: str | None) -> bool:
    return hinted is not None and orig_token.strip() == str(hinted)


def hint_question(row: dict) -> str:
    """Natural-language question about one hint removal, in a fixed template: the prompt, the
    option the model chooses (a letter), the hint."""
    return (
        f"Prompt: {json.dumps(row['prompt'])}\n"
        f"The model chooses option {json.dumps(row['orig_token'].strip())}.\n"
        f"If the hint {json.dumps(row['hint'].strip())} is removed from the prompt, which "
        'option does the model choose? Answer "unchanged" or "changes to" the new token.'
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
        split = split_of(group, test_fraction, seed)
        example_id = f"hint/{target}/{row['prompt_id']}"
        out.append(change_example(example_id, row, hint_question(row), split, group))
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
    chat: bool = False,
) -> pl.DataFrame:
    """The hint labelling recipe (rule label_hint): label rows of every prompt on the target
    (chat: read in its chat template, hint.chat), then explainer examples (split by subject or
    question: holdout) as a frame of the shared schema."""
    split_group({"prompt_id": ""}, holdout)  # refuse an unknown holdout before any forward
    rows = hint_rows(model, tokenizer, prompts, batch_size=batch_size, chat=chat)
    examples = hint_examples(rows, target, test_fraction=test_fraction, holdout=holdout)
    return to_frame(examples)


def surface_features(meta: dict) -> dict[str, str]:
    """Features of a hint row that a non-LM baseline may use: only what the question states
    (never the label: changed, new token, log-probs). follows_hint ("yes"/"no"; "unknown"
    without a hinted letter): the option the model chooses with the hint is the hinted letter;
    the hint's position and template; the option chosen (orig_token, a letter)."""
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


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer has a chat template (a base model's often has none)."""
    return getattr(tokenizer, "chat_template", None) is not None


def chat_text(tokenizer, text: str) -> str:
    """text as the user turn of the target's chat template, the assistant's turn opened (a
    hint inside stays a removable substring); a leading BOS the template writes is left to the
    tokenizer when it adds its own."""
    messages = [{"role": "user", "content": text}]
    out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and out.startswith(bos) and encode(tokenizer, "x")[:1] == [tokenizer.bos_token_id]:
        out = out[len(bos) :]
    return out
