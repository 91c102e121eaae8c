"""The paper's released label sets as our explainer examples: the same items, labels and
train/test split, in our question and answer templates (``hint.labels_from``,
``ablation.labels_from``, ``patching.labels_from``; rules label_hint, label_ablation,
label_patching import instead of labelling when the target has one).

Input ablation (Transluce/input_ablation_*_mmlu_hint): one row per hinted MMLU prompt; the
answer with the hint (random_hint_prediction) and without it (zeroshot_prediction), changed when
they differ (changed_pred_bc_hint, derived from the two where it is null). As hint rows (task
hint) or as the hint removals of the ablation task (unit "hint").

Activation patching (Transluce/act_patch_*_counterfact): one row per (prompt, layer window,
position) with the target's next token before and after the patch (original_continuation,
ablated_continuation) and is_different. The prompt is input_tokens (the target tokenizer's token
strings, which the reference loader joins; byte-level BPE tokens such as "ĠParis" are decoded
here without the tokenizer), the window the list ``layer``, the position
patch_position.orig_pos. The patched vector (patch_position.intervention_vector, when the
release has it) is kept as the example's ``vector``: our own patching question names the
counterfactual prompt and does not read it (run.train_run drops it), the released patching
explainers read it at their reserved token (selfexplain.hub.released_eval).

Column names as published (shared/PAPER_DATA.md and the reference loaders); a missing one
raises naming it and the dataset.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from functools import cache

import polars as pl

from selfexplain.core.formats import change_answer
from selfexplain.core.schema import ExplainerExample, to_frame
from selfexplain.hub.hfdata import load_splits, require_columns, require_splits
from selfexplain.tasks import ablation, hint, patching

SPLITS = ("train", "test")  # others (the Llama patching set's train_full) are not read
TASKS = ("hint", "ablation", "patching")

HINT_COLUMNS = (
    "hint_user_prompt",
    "original_user_prompt",
    "hint",
    "zeroshot_prediction",
    "random_hint_prediction",
    "changed_pred_bc_hint",
)
HINT_OPTIONAL = ("system_prompt", "question", "choices", "correct_answer")
PATCHING_COLUMNS = (
    "input_tokens",
    "original_continuation",
    "ablated_continuation",
    "is_different",
    "counterfactual_text",
    "layer",
    "patch_position.orig_pos",
    "patch_position.orig_text_token",
)
PATCHING_OPTIONAL = (
    "token_type",
    "gt_original_target",
    "gt_counterfactual_target",
    "patch_position.counterfact_pos",
    "patch_position.counterfact_text_token",
    "patch_position.intervention_vector",
)

_HINT_LINE = re.compile(r"^Hint:.*$", re.M)
_LETTER = re.compile(r"\(([A-Z])\)")
BOS_TOKENS = ("<|begin_of_text|>", "<s>", "<bos>")


# --------------------------------------------------------------------------- token strings


@cache
def _byte_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's, used by Llama 3 and Qwen): character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def tokens_to_text(tokens: Iterable[str] | str) -> str:
    """The text of a tokenizer's token strings: byte-level BPE ("ĠParis" -> " Paris",
    "Ċ" -> newline), else SentencePiece ("▁Paris" -> " Paris"). A plain string is one token."""
    tokens = [tokens] if isinstance(tokens, str) else list(tokens)
    joined = "".join(tokens)
    decoder = _byte_decoder()
    if all(c in decoder for c in joined):
        return bytes(decoder[c] for c in joined).decode("utf-8", errors="replace")
    return joined.replace("▁", " ")


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- rows


def _hint_text(rec: dict) -> str:
    """The hint sentence of a released input-ablation row: its "Hint: ..." line, else what the
    hinted prompt adds to the original one."""
    hinted, original = rec["hint_user_prompt"], rec["original_user_prompt"]
    m = _HINT_LINE.search(hinted)
    if m:
        return m.group(0)
    start = 0
    while start < min(len(hinted), len(original)) and hinted[start] == original[start]:
        start += 1
    end = 0
    while end < len(original) - start and hinted[len(hinted) - 1 - end] == original[-1 - end]:
        end += 1
    added = hinted[start : len(hinted) - end].strip()
    if not added:
        raise ValueError(
            "hint_user_prompt has no 'Hint: ...' line and adds nothing to original_user_prompt: "
            f"{hinted[:200]!r}"
        )
    return added


def _letter(value) -> str | None:
    """The option letter a hint or prediction names ("C", "(C)", "Answer: C"), or None."""
    if value is None:
        return None
    text = str(value).strip()
    if len(text) == 1 and text.isalpha():
        return text.upper()
    m = _LETTER.search(text)
    if m:
        return m.group(1)
    m = re.fullmatch(r"(?:Answer:\s*)?([A-Z])", text)
    return m.group(1) if m else None


def hint_row(rec: dict, prompt_id: str) -> dict:
    """Our hint label row (selfexplain.tasks.hint's keys) of one released input-ablation row."""
    orig = str(rec["random_hint_prediction"]).strip()
    new = str(rec["zeroshot_prediction"]).strip()
    changed = rec["changed_pred_bc_hint"]
    if changed is None:  # null in ~24% of the released rows
        changed = orig != new
    hinted = _letter(rec["hint"])
    correct = rec.get("correct_answer")
    correct = _letter(correct) if correct is not None else None
    question = rec.get("question")
    return {
        "prompt_id": prompt_id,
        "kind": "hint_mcq",
        "prompt": rec["hint_user_prompt"],
        "hint": _hint_text(rec),
        "orig_token": orig,
        "orig_token_id": None,
        "new_token": new,
        "new_token_id": None,
        "changed": bool(changed),
        "logp_orig": None,
        "logp_ablated": None,
        "hinted": hinted,
        "hint_correct": None if hinted is None or correct is None else hinted == correct,
        "hint_position": None,
        "hint_template": None,
        "correct": correct,
        # the held-out unit of hint rows (tasks.hint.question_key): the MMLU question, so the
        # prompts of one question stay on one side of the validation split
        "relation": "mmlu" if question else None,
        "subject": question or None,
        "follows_hint": hinted is not None and orig == hinted,
        "system_prompt": rec.get("system_prompt"),
        "original_prompt": rec["original_user_prompt"],
    }


def ablation_row(hint: dict) -> dict:
    """The same removal as a row of the ablation task (unit "hint": the hint span removed)."""
    keep = ("prompt_id", "kind", "prompt", "orig_token", "orig_token_id", "logp_orig")
    return {k: hint[k] for k in keep} | {
        "n_positions": None,
        "unit": "hint",
        "position": None,
        "token_index": None,
        "removed": hint["hint"],
        "hint_positions": None,
        "changed": hint["changed"],
        "new_token": hint["new_token"],
        "new_token_id": None,
        "logp_ablated": None,
        "captum_score": None,
        "system_prompt": hint["system_prompt"],
    }


_POSITION_KINDS = (("subject", "subject"), ("option", "option"), ("relation", "relation"))


def position_kind(token_type: str | None) -> str:
    """Our position kind (tasks.patching.POSITION_KINDS) of a released token_type such as
    "other_answer_option" or "relation_suffix"."""
    for word, kind in _POSITION_KINDS:
        if token_type and word in token_type:
            return kind
    return "other"


def _layers(value) -> list[int]:
    """The patched layers of a released row: a list, a comma-separated string or one int."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        return [int(v) for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
    return [int(v) for v in value]


def patching_row(rec: dict) -> dict:
    """Our patching label row (selfexplain.tasks.patching's keys) of one released row."""
    tokens = list(rec["input_tokens"])
    skip = 1 if tokens and tokens[0] in BOS_TOKENS else 0  # our prompts are text without BOS
    clean = tokens_to_text(tokens[skip:])
    counterfactual = str(rec["counterfactual_text"])
    layers = _layers(rec["layer"])
    orig = tokens_to_text(rec["original_continuation"])
    new = tokens_to_text(rec["ablated_continuation"])
    changed = rec["is_different"]
    if changed is None:
        changed = orig != new
    return {
        "pair_id": f"paper-{_short_hash(clean, counterfactual)}",
        "clean": clean,
        "counterfactual": counterfactual,
        "relation": None,
        "orig_token": orig,
        "orig_token_id": None,
        "cf_token": None,
        "cf_token_id": None,
        "p_orig_clean": None,
        "n_tokens": len(tokens),
        "layers": layers,
        "layer_start": min(layers),
        "layer_end": max(layers),
        "window": len(layers),
        "position": int(rec["patch_position.orig_pos"]),
        "token": tokens_to_text(rec["patch_position.orig_text_token"]),
        "position_kind": position_kind(rec.get("token_type")),
        "new_token": new,
        "new_token_id": None,
        "changed": bool(changed),
        "p_orig": None,
        "p_cf": None,
        "token_type": rec.get("token_type"),
        "gt_original_target": rec.get("gt_original_target"),
        "gt_counterfactual_target": rec.get("gt_counterfactual_target"),
    }


# --------------------------------------------------------------------------- import


def released_records(
    source: str, columns: tuple[str, ...], optional: tuple[str, ...], *, what: str, **load
) -> dict[str, list[dict]]:
    """The train and test rows of a released dataset, only the columns read (nested fields
    flattened to a.b), each with its split row number as "_row"."""
    splits = load_splits(source, what=what, **load)
    require_splits(splits, SPLITS, source=source, what=what)
    out = {}
    for split in SPLITS:
        ds = splits[split].flatten()
        require_columns(ds, columns, source=source, what=what, split=split)
        keep = [*columns, *(c for c in optional if c in ds.column_names)]
        rows = ds.select_columns(keep).to_list()
        out[split] = [r | {"_row": i} for i, r in enumerate(rows)]
    return out


def _unique(example_id: str, seen: set[str]) -> str:
    """example_id, or example_id/2, /3, ... when a row repeats an item already seen."""
    out, k = example_id, 1
    while out in seen:
        k += 1
        out = f"{example_id}/{k}"
    seen.add(out)
    return out


def import_labels(task: str, source: str, target: str, **load) -> pl.DataFrame:
    """The explainer examples (shared schema) of a released label set for one task and target:
    its train and test rows, split as released; meta carries the source and row."""

    if task not in TASKS:
        raise ValueError(f"no released label set for task {task!r}; tasks: {list(TASKS)}")
    what = f"{task}.labels_from ({target})"
    if task == "patching":
        records = released_records(source, PATCHING_COLUMNS, PATCHING_OPTIONAL, what=what, **load)
    else:
        records = released_records(source, HINT_COLUMNS, HINT_OPTIONAL, what=what, **load)
    examples, seen = [], set()
    for split, rows in records.items():
        for rec in rows:
            origin = {"source": source, "source_split": split, "source_row": rec["_row"]}
            if task == "patching":
                row = patching_row(rec) | origin
                key = (
                    f"patching/{target}/{row['pair_id']}/w{row['window']}"
                    f"/l{row['layer_start']}/t{row['position']}"
                )
                question = patching.patching_question(row)
                vector = rec.get("patch_position.intervention_vector")
            else:
                vector = None
                prompt_id = f"paper-{_short_hash(rec['hint_user_prompt'])}"
                row = hint_row(rec, prompt_id) | origin
                if task == "ablation":
                    row = ablation_row(row) | origin
                    key = f"ablation/{target}/{prompt_id}/hint"
                    question = ablation.ablation_question(row)
                else:
                    key, question = f"hint/{target}/{prompt_id}", hint.hint_question(row)
            examples.append(
                ExplainerExample(
                    id=_unique(key, seen),
                    task=task,
                    target=target,
                    split=split,
                    question=question,
                    answer=change_answer(row["changed"], row["new_token"]),
                    vector=None if vector is None else [float(v) for v in vector],
                    meta=row,
                )
            )
    counts = {s: sum(e.split == s for e in examples) for s in SPLITS}
    print(f"{what}: {counts['train']} train and {counts['test']} test rows from {source}")
    return to_frame(examples)
