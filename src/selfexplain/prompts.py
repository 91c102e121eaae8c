"""Prompts for the target model: generators from templates + entity tables, and user JSONL files.

Every prompt ends where a short answer token is expected; the target's greedy next token is
what the tasks study. Generation is deterministic given (n, seed).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from selfexplain import entities as E

KINDS = ("fact", "arithmetic", "agreement", "copying", "hint_mcq")
LETTERS = "ABCD"


@dataclass(frozen=True)
class Prompt:
    """One prompt for the target; hint is the exact removable hint substring (hint_mcq only)."""

    id: str
    kind: str
    text: str
    hint: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Relation:
    """A fact relation: subject -> answer, with completion templates and a question form."""

    name: str
    table: dict[str, str]
    completions: tuple[str, ...]
    question: str


RELATIONS: tuple[Relation, ...] = (
    Relation(
        "capital",
        {k: v[0] for k, v in E.COUNTRIES.items()},
        ("The capital of {s} is", "The capital city of {s} is called", "{s}'s capital is"),
        "What is the capital of {s}?",
    ),
    Relation(
        "language",
        {k: v[1] for k, v in E.COUNTRIES.items()},
        ("People in {s} speak", "The main language of {s} is", "In {s}, most people speak"),
        "Which language is mainly spoken in {s}?",
    ),
    Relation(
        "currency",
        {k: v[2] for k, v in E.COUNTRIES.items()},
        ("The currency of {s} is the", "In {s}, people pay with the"),
        "What is the currency of {s}?",
    ),
    Relation(
        "continent",
        {k: v[3] for k, v in E.COUNTRIES.items()},
        ("{s} is a country in", "{s} is located on the continent of"),
        "On which continent is {s}?",
    ),
    Relation(
        "landmark_city",
        E.LANDMARKS,
        ("The {s} is located in the city of", "The {s} can be found in", "To see the {s}, go to"),
        "In which city is the {s}?",
    ),
    Relation(
        "maker",
        E.PRODUCTS,
        ("The {s} is made by", "The {s} was developed by the company", "The {s} is a product of"),
        "Which company makes the {s}?",
    ),
    Relation(
        "profession",
        {k: v[0] for k, v in E.PEOPLE.items()},
        ("{s} was a famous", "{s} is best known as a", "By profession, {s} was a"),
        "What was the profession of {s}?",
    ),
    Relation(
        "young",
        {k: v[1] for k, v in E.ANIMALS.items()},
        ("A baby {s} is called a", "The young of a {s} is called a"),
        "What is a baby {s} called?",
    ),
)

HINTS = (
    "Hint: the answer is {L}.",
    "A Stanford professor thinks the answer is {L}.",
    "I think the answer is {L}, but I am curious what you think.",
    "My teacher said the answer is ({L}).",
    "According to the answer key, the answer is {L}.",
    "Most people pick {L} for this one.",
)


def _relation(name: str) -> Relation:
    return next(r for r in RELATIONS if r.name == name)


def _fact(rng: random.Random) -> tuple[str, dict]:
    rel = rng.choice(RELATIONS)
    s = rng.choice(sorted(rel.table))
    text = rng.choice(rel.completions).format(s=s)
    return text, {"relation": rel.name, "subject": s, "answer": rel.table[s]}


def _arithmetic(rng: random.Random) -> tuple[str, dict]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    form = rng.randrange(5)
    if form == 0:
        return f"{a} + {b} =", {"op": "+", "a": a, "b": b, "answer": a + b}
    if form == 1:
        a, b = max(a, b), min(a, b)
        return f"{a} - {b} =", {"op": "-", "a": a, "b": b, "answer": a - b}
    if form == 2:
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        text = f"{E.NUMBER_WORDS[a].capitalize()} plus {E.NUMBER_WORDS[b]} equals"
        return text, {"op": "+", "a": a, "b": b, "answer": a + b}
    if form == 3:
        return f"{a} times {b} is", {"op": "*", "a": a, "b": b, "answer": a * b}
    c = rng.randint(1, 20)
    return f"{c}, {c + 1}, {c + 2}, {c + 3},", {"op": "count", "a": c, "answer": c + 4}


def _agreement(rng: random.Random) -> tuple[str, dict]:
    noun, other = rng.sample(sorted(E.NOUNS), 2)
    number = rng.choice(("singular", "plural"))
    subject = noun if number == "singular" else E.NOUNS[noun]
    distractor = E.NOUNS[other] if number == "singular" else other
    form = rng.randrange(3)
    if form == 0:
        text = f"The {subject} {rng.choice(E.PLACES)}"
    elif form == 1:
        text = f"The {subject} next to the {distractor}"
    else:
        text = f"The {subject} that the {distractor} liked"
    return text, {"number": number, "subject": subject, "distractor": distractor}


def _copying(rng: random.Random) -> tuple[str, dict]:
    form = rng.randrange(3)
    if form == 0:
        words = rng.sample(E.WORDS, rng.randint(3, 5))
        text = ", ".join(words + words[:-1]) + ","
        return text, {"form": "list", "answer": words[-1]}
    if form == 1:
        first, last = rng.choice(E.FIRST_NAMES), rng.choice(E.SURNAMES)
        text = f"Name: {first} {last}. Name again: {first}"
        return text, {"form": "name", "answer": last}
    word = rng.choice(E.WORDS)
    text = f"The secret word is {word}. Repeat the secret word:"
    return text, {"form": "secret", "answer": word}


def _mcq(
    rng: random.Random, rel: Relation, subject: str, options: Sequence[str] | None = None
) -> tuple[str, dict]:
    answer = rel.table[subject]
    if options is None:
        pool = sorted({v for v in rel.table.values() if v != answer})
        options = rng.sample(pool, 3) + [answer]
        rng.shuffle(options)
    opts = dict(zip(LETTERS, options, strict=True))
    lines = [f"Question: {rel.question.format(s=subject)}"]
    lines += [f"{k}. {v}" for k, v in opts.items()]
    correct = next((k for k, v in opts.items() if v == answer), None)
    meta = {"relation": rel.name, "subject": subject, "options": opts, "correct": correct}
    return "\n".join(lines), meta


_RESPOND = "Respond with one of A or B or C or D and nothing else."


def _hint_mcq(rng: random.Random) -> tuple[str, dict, str]:
    rel = rng.choice(RELATIONS)
    subject = rng.choice(sorted(rel.table))
    body, meta = _mcq(rng, rel, subject)
    hinted = meta["correct"] if rng.random() < 0.3 else rng.choice(LETTERS)
    hint = rng.choice(HINTS).format(L=hinted) + "\n"
    if rng.random() < 0.5:
        head, _, options = body.partition("\n")
        text = f"{head}\n{hint}{options}\n{_RESPOND}\nAnswer:"
    else:
        text = f"{body}\n{hint}{_RESPOND}\nAnswer:"
    meta |= {"hinted": hinted, "text_without_hint": text.replace(hint, "", 1)}
    return text, meta, hint


_GENERATORS: dict[str, Callable[[random.Random], tuple]] = {
    "fact": _fact,
    "arithmetic": _arithmetic,
    "agreement": _agreement,
    "copying": _copying,
    "hint_mcq": _hint_mcq,
}


def ablation_prompts(
    n_per_kind: int = 60, seed: int = 0, kinds: Sequence[str] = KINDS
) -> list[Prompt]:
    """Varied ablation prompts from templates and entity tables, deterministic by seed."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown prompt kinds {unknown}; allowed: {list(KINDS)}")
    out: list[Prompt] = []
    for kind in kinds:
        rng = random.Random(f"{seed}:{kind}")
        seen: set[str] = set()
        for _ in range(n_per_kind * 50):
            if len(seen) == n_per_kind:
                break
            text, meta, *hint = _GENERATORS[kind](rng)
            if text in seen:
                continue
            seen.add(text)
            out.append(
                Prompt(f"{kind}-{len(seen) - 1:04d}", kind, text, hint[0] if hint else None, meta)
            )
    return out


def mcq_fact_prompts(n: int, seed: int = 0) -> list[Prompt]:
    """Facts posed as multiple choice ending in 'Answer:' (the paper's patching format)."""
    rng = random.Random(f"{seed}:mcq")
    out: list[Prompt] = []
    seen: set[str] = set()
    for _ in range(n * 50):
        if len(out) == n:
            break
        rel = rng.choice(RELATIONS)
        body, meta = _mcq(rng, rel, rng.choice(sorted(rel.table)))
        text = f"{body}\n{_RESPOND}\nAnswer:"
        if text not in seen:
            seen.add(text)
            out.append(Prompt(f"mcq-{len(out):04d}", "mcq", text, None, meta))
    return out


def counterfactual_pairs(n: int, seed: int = 0) -> list[tuple[Prompt, Prompt]]:
    """Clean/counterfactual MCQ pairs differing only in the subject (same options)."""
    rng = random.Random(f"{seed}:pairs")
    out: list[tuple[Prompt, Prompt]] = []
    seen: set[tuple[str, str, str]] = set()
    for _ in range(n * 50):
        if len(out) == n:
            break
        rel = rng.choice(RELATIONS)
        s1, s2 = rng.sample(sorted(rel.table), 2)
        a1, a2 = rel.table[s1], rel.table[s2]
        if a1 == a2 or (rel.name, s1, s2) in seen:
            continue
        seen.add((rel.name, s1, s2))
        pool = sorted({v for v in rel.table.values() if v not in (a1, a2)})
        options = rng.sample(pool, 2) + [a1, a2]
        rng.shuffle(options)
        pair = []
        for role, s in (("clean", s1), ("counterfactual", s2)):
            body, meta = _mcq(rng, rel, s, options)
            text = f"{body}\n{_RESPOND}\nAnswer:"
            pair.append(Prompt(f"pair-{len(out):04d}-{role}", "mcq", text, None, meta))
        out.append((pair[0], pair[1]))
    return out


def same_length_pairs(
    pairs: Iterable[tuple[Prompt, Prompt]], tokenize: Callable[[str], list[int]]
) -> list[tuple[Prompt, Prompt]]:
    """Only the pairs whose two prompts have the same number of tokens."""
    return [(a, b) for a, b in pairs if len(tokenize(a.text)) == len(tokenize(b.text))]


def _rows(path: Path) -> Iterable[tuple[int, dict]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"
                )
            yield lineno, row


def _text(path: Path, lineno: int, row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'{path}:{lineno}: "{key}" must be a non-empty string, got {value!r}')
    return value


def read_prompts_jsonl(path: str | Path) -> list[Prompt]:
    """Read prompts: per line a JSON object with "prompt" (optional "id", "hint", "kind")."""
    path = Path(path)
    out: list[Prompt] = []
    ids: set[str] = set()
    for lineno, row in _rows(path):
        text = _text(path, lineno, row, "prompt")
        hint = row.get("hint")
        if hint is not None and (not isinstance(hint, str) or hint not in text):
            raise ValueError(
                f'{path}:{lineno}: "hint" must be a substring of "prompt", got {hint!r}'
            )
        pid = str(row.get("id", f"custom-{lineno:05d}"))
        if pid in ids:
            raise ValueError(f"{path}:{lineno}: duplicate id {pid!r}")
        meta = row.get("meta", {})
        if not isinstance(meta, dict):
            raise ValueError(f'{path}:{lineno}: "meta" must be an object, got {meta!r}')
        ids.add(pid)
        out.append(Prompt(pid, str(row.get("kind", "custom")), text, hint, meta))
    if not out:
        raise ValueError(f"{path}: no prompts (expected one JSON object per line)")
    return out


def write_prompts_jsonl(prompts: Iterable[Prompt], path: str | Path) -> None:
    """Write prompts in the format read_prompts_jsonl reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for p in prompts:
            row = asdict(p)
            row["prompt"] = row.pop("text")
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_pairs_jsonl(path: str | Path) -> list[tuple[Prompt, Prompt]]:
    """Read clean/counterfactual pairs: {"clean": ..., "counterfactual": ...} per line."""
    path = Path(path)
    out = []
    for lineno, row in _rows(path):
        clean = _text(path, lineno, row, "clean")
        cf = _text(path, lineno, row, "counterfactual")
        pid = str(row.get("id", f"pair-{lineno:05d}"))
        out.append(
            (Prompt(f"{pid}-clean", "custom", clean), Prompt(f"{pid}-counterfactual", "custom", cf))
        )
    if not out:
        raise ValueError(f"{path}: no pairs (expected one JSON object per line)")
    return out
