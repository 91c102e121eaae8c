"""The paper's prompt sources, read with Hugging Face ``datasets`` (selfexplain.hub.hfdata): MMLU
questions with a hint line (``hint.source`` / ``ablation.source: mmlu``) and CounterFact facts as
multiple-choice counterfactual pairs (``patching.source: counterfact``). The offline generators
of selfexplain.prompts stay the default; these need network, a filled cache or a local copy.

Both builders take plain rows (dicts) and are deterministic given (rows, n, seed); the
``*_from`` functions load the rows first.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from selfexplain.hub.hfdata import load_splits, require_columns
from selfexplain.prompts import (
    LETTERS,
    Prompt,
    check_n_options,
    mcq_text,
    respond_line,
    similar_subjects,
)

MMLU = "cais/mmlu"
MMLU_CONFIG = {MMLU: "all"}  # the hub dataset's configuration holding every subject
MMLU_COLUMNS = ("question", "choices", "answer")
COUNTERFACT = "azhx/counterfact"
COUNTERFACT_FIELDS = ("prompt", "subject", "target_true", "target_new")
# the reference's hint line (a user-turn line with a random letter)
PAPER_HINT = "Hint: I think the answer is ({L}) but I'm curious to hear what you think."


def _rows(source: str, prefer: str | None, *, what: str, config_name=None, **load) -> tuple:
    """(rows of the preferred split, or of every split in name order; the dataset)."""
    splits = load_splits(source, what=what, config_name=config_name, **load)
    names = [prefer] if prefer in splits else sorted(splits)
    return names, splits


# --------------------------------------------------------------------------- MMLU


def _letter_of(answer, n_choices: int, where: str) -> str:
    """The correct option's letter: MMLU's answer is an index (0-3); a letter is accepted."""
    if isinstance(answer, str) and len(answer) == 1 and answer.upper() in LETTERS[:n_choices]:
        return answer.upper()
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < n_choices:
        return LETTERS[answer]
    raise ValueError(
        f"{where}: answer {answer!r} is not an option index 0..{n_choices - 1} "
        f"or a letter {list(LETTERS[:n_choices])}"
    )


def mmlu_hint_prompts(
    rows: Sequence[dict], n: int, seed: int = 0, *, prefix: str = "mmlu", where: str = "MMLU"
) -> list[Prompt]:
    """n hinted multiple-choice prompts (kind "hint_mcq") from MMLU rows (question, choices,
    answer; subject optional), a seeded choice of distinct questions: the options, then the
    reference's hint line with a random letter, then the answer format. Each prompt's hint is
    its hint line (removable); meta as the generated hint prompts' (hinted, correct, ...)."""
    if n > len(rows):
        raise ValueError(
            f"{where}: {n} prompts asked for, but the dataset has {len(rows)} questions; ask "
            f"for at most {len(rows)}"
        )
    rng = random.Random(f"{seed}:mmlu")
    picked = sorted(rng.sample(range(len(rows)), n))
    out = []
    for i, index in enumerate(picked):
        row = rows[index]
        choices = [str(c) for c in row["choices"]]
        at = f"{where} row {index}"
        if not 2 <= len(choices) <= len(LETTERS):
            raise ValueError(f"{at}: {len(choices)} choices; 2 to {len(LETTERS)} are supported")
        correct = _letter_of(row["answer"], len(choices), at)
        hinted = rng.choice(LETTERS[: len(choices)])
        hint = PAPER_HINT.format(L=hinted) + "\n"
        options = "\n".join(f"{k}. {v}" for k, v in zip(LETTERS, choices, strict=False))
        question = str(row["question"]).strip()
        text = (
            f"Question: {question}\n{options}\n{hint}{respond_line(len(choices), False)}\nAnswer:"
        )
        meta = {
            "source": "mmlu",
            "source_row": index,
            "mmlu_subject": row.get("subject"),
            "question": question,
            "options": dict(zip(LETTERS, choices, strict=False)),
            "correct": correct,
            "hinted": hinted,
            "hint_correct": hinted == correct,
            "hint_template": PAPER_HINT,
            "hint_position": "after_options",
            # hint rows are held out by (relation, subject): here, by question
            "relation": "mmlu",
            "subject": question,
            "text_without_hint": text.replace(hint, "", 1),
        }
        out.append(Prompt(f"{prefix}-{i:04d}", "hint_mcq", text, hint, meta))
    return out


def mmlu_prompts_from(
    dataset: str | None, n: int, seed: int = 0, *, what: str, **load
) -> list[Prompt]:
    """mmlu_hint_prompts from a dataset (null: cais/mmlu, all subjects; its test split when it
    has one, else every split)."""
    source = dataset or MMLU
    names, splits = _rows(source, "test", what=what, config_name=MMLU_CONFIG.get(source), **load)
    rows = []
    for name in names:
        require_columns(splits[name], MMLU_COLUMNS, source=source, what=what, split=name)
        rows += splits[name].to_list()
    return mmlu_hint_prompts(rows, n, seed, where=f"{what}: {source}")


# --------------------------------------------------------------------------- CounterFact


def _text_of(value) -> str:
    """A CounterFact target: a string, or {"str": ..., "id": ...}."""
    return str(value["str"] if isinstance(value, dict) else value).strip()


def counterfact_facts(rows: Sequence[dict], *, where: str = "CounterFact") -> list[dict]:
    """(relation, template, subject, answer, new answer) of each row: the fields at top level or
    under requested_rewrite (azhx/counterfact), targets as strings or {"str": ...}; the
    template's {} is the subject."""
    facts = []
    for index, row in enumerate(rows):
        fact = row.get("requested_rewrite", row)
        missing = [f for f in COUNTERFACT_FIELDS if f not in fact]
        if missing:
            raise ValueError(
                f"{where} row {index}: no field {missing[0]!r} (at top level or under "
                f"'requested_rewrite'); a CounterFact row needs {list(COUNTERFACT_FIELDS)}"
            )
        template = str(fact["prompt"])
        if "{}" not in template:
            raise ValueError(
                f"{where} row {index}: prompt {template!r} has no {{}} for the subject"
            )
        facts.append(
            {
                "relation": str(fact.get("relation_id") or template),
                "template": template,
                "subject": str(fact["subject"]).strip(),
                "answer": _text_of(fact["target_true"]),
                "new_answer": _text_of(fact["target_new"]),
                "row": index,
            }
        )
    return facts


def _counterfact_groups(facts: Sequence[dict]) -> tuple[dict, dict, list]:
    """Facts by (relation, template), answers by relation, and the keys with 2+ answers."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for fact in facts:
        groups[(fact["relation"], fact["template"])].append(fact)
    answers: dict[str, set[str]] = defaultdict(set)
    for fact in facts:
        answers[fact["relation"]] |= {fact["answer"], fact["new_answer"]}
    usable = sorted(k for k, g in groups.items() if len({f["answer"] for f in g}) >= 2)
    return groups, answers, usable


def _draw_facts(rng: random.Random, group: list[dict]) -> tuple[dict, dict]:
    """A clean fact and a counterfactual one with another answer, of similar subject if any."""
    clean = rng.choice(group)
    others = [f for f in group if f["answer"] != clean["answer"]]
    close = similar_subjects(clean["subject"], others, key=lambda f: f["subject"])
    return clean, rng.choice(close or others)


def _counterfact_prompt(pair_id: str, role: str, fact: dict, other: dict, options) -> Prompt:
    """One prompt of a pair: the fact's question with the options (layout 0) and its meta."""
    question = fact["template"].replace("{}", fact["subject"])
    text = mcq_text(question, options, 0)
    start = text.index(question) + fact["template"].index("{}")
    meta = {
        "relation": fact["relation"],
        "subject": fact["subject"],
        "answer": fact["answer"],
        "options": dict(zip(LETTERS, options, strict=False)),
        "correct": LETTERS[options.index(fact["answer"])],
        "template": fact["template"],
        "layout": 0,
        "format": "mcq",
        "pair": pair_id,
        "role": role,
        "other_subject": other["subject"],
        "subject_span": [start, start + len(fact["subject"])],
        "source": "counterfact",
        "source_row": fact["row"],
    }
    return Prompt(f"{pair_id}-{role}", "mcq", text, None, meta)


def counterfact_pairs(
    rows: Sequence[dict], n: int, seed: int = 0, n_options: int = 4, *, where: str = "CounterFact"
) -> list[tuple[Prompt, Prompt]]:
    """n clean/counterfactual multiple-choice pairs (kind "mcq", the paper's patching format):
    two facts of one relation and prompt template with different answers, the same options (both
    answers and distractors from the relation's answers and new targets), the subject swapped.
    A counterfactual subject with as many words and a similar length is preferred, so the two
    prompts likely tokenise alike (label_patching keeps pairs of equal token length)."""
    check_n_options(n_options)
    groups, answers, usable = _counterfact_groups(counterfact_facts(rows, where=where))
    rng = random.Random(f"{seed}:counterfact")
    out: list[tuple[Prompt, Prompt]] = []
    seen: set[tuple[int, int]] = set()
    for _ in range(max(n, 1) * 200):
        if len(out) >= n or not usable:
            break
        clean, cf = _draw_facts(rng, groups[rng.choice(usable)])
        pool = sorted(answers[clean["relation"]] - {clean["answer"], cf["answer"]})
        if (clean["row"], cf["row"]) in seen or len(pool) < n_options - 2:
            continue
        seen.add((clean["row"], cf["row"]))
        options = rng.sample(pool, n_options - 2) + [clean["answer"], cf["answer"]]
        rng.shuffle(options)
        pair_id = f"cf-{len(out):04d}"
        out.append(
            (
                _counterfact_prompt(pair_id, "clean", clean, cf, options),
                _counterfact_prompt(pair_id, "counterfactual", cf, clean, options),
            )
        )
    if len(out) < n:
        raise ValueError(
            f"{where}: only {len(out)} distinct pairs could be built, not {n} (a pair needs two "
            f"facts of one relation and template with different answers, and {n_options} "
            "distinct options); lower patching.n_pairs or give a larger dataset"
        )
    return out


def counterfact_pairs_from(
    dataset: str | None, n: int, seed: int = 0, *, what: str, **load
) -> list[tuple[Prompt, Prompt]]:
    """counterfact_pairs from a dataset (null: azhx/counterfact; every split)."""
    source = dataset or COUNTERFACT
    names, splits = _rows(source, None, what=what, **load)
    rows = []
    for name in names:
        ds = splits[name]
        if "requested_rewrite" not in ds.column_names:
            require_columns(ds, COUNTERFACT_FIELDS, source=source, what=what, split=name)
        rows += ds.to_list()
    return counterfact_pairs(rows, n, seed, where=f"{what}: {source}")
