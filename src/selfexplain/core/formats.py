"""Every question and answer template in one place: the change answers (compact and paper
formats) and their parser, the prompt cue the explainer answers after, the vector placeholder of
a question, and the reference implementation's question and answer strings (hint chat,
patching question). Pure strings: no model, no torch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

UNCHANGED = "unchanged"


_CHANGED_RE = re.compile(r'^changes to ("(?:[^"\\]|\\.)*")')


def change_answer(changed: bool, new_token: str | None) -> str:
    """The fixed answer template for 'does the output change, and to what'."""
    if not changed:
        return UNCHANGED
    return f"changes to {json.dumps(new_token)}"


@dataclass(frozen=True)
class ParsedChange:
    """A parsed change answer; valid is False when the text follows no template."""

    valid: bool
    changed: bool | None
    new_token: str | None


# The line before every answer (train.format_prompt adds it to a question, followed by a space,
# unless the question already ends with it, as the token identity check's does).
ANSWER_CUE = "\nAnswer:"


@dataclass(frozen=True)
class AnswerFormat:
    """How a change answer is written. ``compact`` (the default, short for small models):
    ``unchanged`` / ``changes to "<token>"``. ``paper`` (the reference implementation's
    strings): ``The output would remain unchanged from <<<X>>>.`` / ``The most likely output
    would change to <<<Y>>>.``, X the current output and Y the new one. parse_change reads
    both, so gold and predicted answers may be in either."""

    name: str
    instruction: str  # the question's last sentence saying how to answer

    def answer(self, changed: bool, new_token: str | None, original: str | None = None) -> str:
        if self.name == "compact":
            return change_answer(changed, new_token)
        if changed:
            return f"{PAPER_CHANGED} <<<{new_token}>>>."
        if original is None:
            raise ValueError("a paper-format 'unchanged' answer names the current output")
        return f"{PAPER_UNCHANGED} <<<{original}>>>."


PAPER_UNCHANGED = "The output would remain unchanged from"


PAPER_CHANGED = "The most likely output would change to"


_PAPER_RE = re.compile(
    rf"^({re.escape(PAPER_UNCHANGED)}|{re.escape(PAPER_CHANGED)}) <<<(.*?)>>>",
    re.DOTALL | re.IGNORECASE,
)


COMPACT = AnswerFormat("compact", 'Answer "unchanged" or "changes to" the new token.')


PAPER = AnswerFormat(
    "paper",
    f'Answer "{PAPER_UNCHANGED} <<<X>>>." with X the current next token, or '
    f'"{PAPER_CHANGED} <<<Y>>>." with Y the new one.',
)


FORMATS = {f.name: f for f in (COMPACT, PAPER)}


def answer_format(name: str) -> AnswerFormat:
    """The AnswerFormat called name (train.answer_format)."""
    if name not in FORMATS:
        raise ValueError(f"unknown answer format {name!r}: use one of {sorted(FORMATS)}")
    return FORMATS[name]


def format_of(answers: Sequence[str]) -> AnswerFormat:
    """The format the answers are written in: paper when any parses as paper, else compact."""
    return PAPER if any(_PAPER_RE.match(a.strip()) for a in answers) else COMPACT


def parse_change(text: str) -> ParsedChange:
    """Parse an answer written in either AnswerFormat (leading whitespace ignored); in the
    paper format the <<<...>>> of a changed answer is the new token."""
    text = text.strip()
    m = _PAPER_RE.match(text)  # case-insensitive, as the reference code compares
    if m:
        changed = m.group(1).lower() == PAPER_CHANGED.lower()
        return ParsedChange(True, changed, m.group(2) if changed else None)
    if text.lower().startswith(PAPER_UNCHANGED.lower()):
        return ParsedChange(True, False, None)
    if text.lower().startswith(PAPER_CHANGED.lower()):
        return ParsedChange(True, True, None)
    if text.startswith(UNCHANGED):
        return ParsedChange(True, False, None)
    m = _CHANGED_RE.match(text)
    if m:
        try:
            return ParsedChange(True, True, json.loads(m.group(1)))
        except json.JSONDecodeError:
            pass
    if text.startswith("changes to"):
        return ParsedChange(True, True, None)
    return ParsedChange(False, None, None)


def format_prompt(question: str) -> str:
    """The text the explainer sees before its answer (shared by training and evaluation): the
    question, then a line "Answer: ". A question whose last line already is "Answer:"
    (ANSWER_CUE) is used as it is, and its answers bring their own spacing: the token identity
    check's answer is the injected token's own text, leading space included, so the explainer
    can name it with that very token instead of spelling the word out in other tokens."""
    return question if question.endswith(ANSWER_CUE) else f"{question}{ANSWER_CUE} "


HINT_QUESTION = "If the hint were removed how would the assistant answer change?"


PATCHING_QUESTION = (
    "If feature <b>{vector}<e> at layer {layers} is added to tokens <{token}> when processing "
    "the text <<<{prompt}>>>, how would the output change?"
)


VECTOR_TOKEN = "<v>"


def hint_messages(row: dict) -> list[dict]:
    """The reference explainer's chat for one imported hint row (its meta)."""
    messages = []
    if row.get("system_prompt"):
        messages.append({"role": "system", "content": row["system_prompt"]})
    messages.append({"role": "user", "content": f"{row['prompt']}\n\n{HINT_QUESTION}"})
    return messages


def hint_answer(row: dict) -> str:
    """The reference answer string of one imported hint row: the answer with the hint (X) stays,
    or it changes to the one without (Y), as ``Answer: <letter>`` inside <<<...>>>."""
    if row["changed"]:
        return PAPER.answer(True, f"Answer: {row['new_token']}")
    return PAPER.answer(False, None, f"Answer: {row['orig_token']}")


def patching_question(row: dict, vector_token: str = VECTOR_TOKEN) -> str:
    """The reference explainer's question about one imported patching row (its meta): the
    patched layers comma-joined, the patched token, the prompt, the vector's reserved token."""
    layers = row.get("layers") or range(row["layer_start"], row["layer_end"] + 1)
    return PATCHING_QUESTION.format(
        vector=vector_token,
        layers=", ".join(str(layer) for layer in layers),
        token=row["token"].strip(),
        prompt=row["clean"],
    )


def patching_answer(row: dict) -> str:
    """The reference answer string of one imported patching row: the output stays, or it
    changes to the patched one."""
    if row["changed"]:
        return PAPER.answer(True, row["new_token"].strip())
    return PAPER.answer(False, None, row["orig_token"].strip())


PLACEHOLDER = "<vector>"  # where a question's vector goes
