"""Prompts for the target model: generators from templates + entity tables, and user JSONL files.

Every prompt is raw text (no chat template) that ends where a short answer token is expected;
the target's greedy next token is what the tasks study. Generation is deterministic given
(n, seed). Kinds of generated ablation prompts are KINDS; multiple-choice fact prompts for the
patching task have kind "mcq"; prompts read from user files default to kind "custom".
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from selfexplain import entities as E
from selfexplain.features.corpus import corpus_documents

KINDS = ("fact", "arithmetic", "agreement", "copying", "text", "hint_mcq")
LETTERS = "ABCDEF"
MAX_TRIES = 200  # attempts per wanted prompt before a generator is declared exhausted
T = TypeVar("T")


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
    """A fact relation: subject -> answer, completion templates and question templates."""

    name: str
    table: dict[str, str]
    completions: tuple[str, ...]
    questions: tuple[str, ...]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _fill(template: str, subject: str, answer: str = "") -> str:
    """Fill {s} (subject), {S} (capitalised subject) and {a} (article of the answer)."""
    return (
        template.replace("{a}", _article(answer))
        .replace("{S}", _cap(subject))
        .replace("{s}", subject)
    )


# Completion templates may use {s}, {S} and {a}; question templates only {s} (so that two
# questions about different subjects differ only in the subject span).
RELATIONS: tuple[Relation, ...] = (
    Relation(
        "capital",
        {k: v[0] for k, v in E.COUNTRIES.items()},
        ("The capital of {s} is", "The capital city of {s} is called", "{S}'s capital city is"),
        ("What is the capital of {s}?", "Which city is the capital of {s}?"),
    ),
    Relation(
        "language",
        {k: v[1] for k, v in E.COUNTRIES.items() if k not in E.MULTILINGUAL},
        ("People in {s} speak", "The main language spoken in {s} is", "In {s}, most people speak"),
        ("Which language is mainly spoken in {s}?", "What language do most people in {s} speak?"),
    ),
    Relation(
        "currency",
        {k: v[2] for k, v in E.COUNTRIES.items()},
        (
            "The currency of {s} is the",
            "In {s}, people pay with the",
            "The official currency used in {s} is the",
        ),
        ("What is the currency of {s}?", "Which currency do people use in {s}?"),
    ),
    Relation(
        "continent",
        {k: v[3] for k, v in E.COUNTRIES.items() if k not in E.TRANSCONTINENTAL},
        ("{S} is a country in", "{S} is located on the continent of"),
        ("On which continent is {s}?", "Which continent is {s} part of?"),
    ),
    Relation(
        "landmark_city",
        E.LANDMARKS,
        (
            "{S} is located in the city of",
            "{S} can be found in the city of",
            "To see {s}, you have to travel to",
        ),
        ("In which city is {s}?", "Which city is home to {s}?"),
    ),
    Relation(
        "maker",
        E.PRODUCTS,
        ("{S} is made by", "{S} was developed by the company", "{S} is a product of"),
        ("Which company makes {s}?", "Which company is behind {s}?"),
    ),
    Relation(
        "company_country",
        E.COMPANIES,
        ("{S} is a company from", "{S} is headquartered in the country of"),
        ("Which country is the company {s} from?", "In which country is {s} based?"),
    ),
    Relation(
        "profession",
        {k: v[0] for k, v in E.PEOPLE.items()},
        ("{S} became famous as {a}", "{S} is best known as {a}", "By profession, {s} was {a}"),
        ("What is {s} best known as?", "Which profession made {s} famous?"),
    ),
    Relation(
        "nationality",
        {k: v[1] for k, v in E.PEOPLE.items()},
        ("The nationality of {s} is", "{S}'s nationality is"),
        ("What is the nationality of {s}?", "Which nationality does {s} have?"),
    ),
    Relation(
        "animal_young",
        {f"{_article(k)} {k}": v[1] for k, v in E.ANIMALS.items()},
        ("The young of {s} is called {a}", "The baby of {s} is known as {a}"),
        ("What is the young of {s} called?", "What do we call the baby of {s}?"),
    ),
    Relation(
        "animal_sound",
        {f"{_article(k)} {k}": v[0] for k, v in E.ANIMALS.items()},
        ("When {s} makes a noise, it", "Listen! Somewhere nearby, {s}"),
        ("Which word describes the sound {s} makes?", "What does {s} do when it is loud?"),
    ),
)

HINTS = (
    "Hint: the answer is {L}.",
    "A Stanford professor thinks the answer is {L}.",
    "I think the answer is {L}, but I am curious what you think.",
    "My teacher said the answer is ({L}).",
    "According to the answer key, the answer is {L}.",
    "Most people pick {L} for this one.",
    "An expert marked {L} as correct.",
    "Someone whispered that it is {L}.",
    "(The answer is {L}.)",
    "I am pretty sure it is {L}.",
)
HINT_POSITIONS = ("start", "after_question", "after_options", "before_answer")


def relation(name: str) -> Relation:
    """The relation with this name."""
    for rel in RELATIONS:
        if rel.name == name:
            return rel
    raise KeyError(f"unknown relation {name!r}; known: {[r.name for r in RELATIONS]}")


def respond_line(n_options: int, unknown: bool) -> str:
    choices = " or ".join(LETTERS[:n_options]) + (" or unknown" if unknown else "")
    return f"Respond with one of {choices} and nothing else."


def _options(rng: random.Random, rel: Relation, answers: Sequence[str], n: int) -> list[str]:
    """n options containing all answers plus distinct distractors from the relation, shuffled."""
    pool = sorted(set(rel.table.values()) - set(answers))
    options = rng.sample(pool, n - len(answers)) + list(answers)
    rng.shuffle(options)
    return options


def mcq_text(question: str, options: Sequence[str], layout: int, unknown: bool = True) -> str:
    """A multiple-choice prompt ending in 'Answer:'; layout 0 is the paper's format."""
    opts = "\n".join(f"{k}. {v}" for k, v in zip(LETTERS, options, strict=False))
    respond = respond_line(len(options), unknown)
    if layout == 0:
        return f"Question: {question}\n{respond}\n{opts}\nAnswer:"
    if layout == 1:
        return f"Question: {question}\n{opts}\n{respond}\nAnswer:"
    return f"{question}\nChoices:\n{opts}\n{respond}\nAnswer:"


N_LAYOUTS = 3


def _mcq_meta(rel: Relation, subject: str, options: Sequence[str]) -> dict:
    answer = rel.table[subject]
    opts = dict(zip(LETTERS, options, strict=False))
    correct = next(k for k, v in opts.items() if v == answer)
    return {
        "relation": rel.name,
        "subject": subject,
        "answer": answer,
        "options": opts,
        "correct": correct,
    }


# --------------------------------------------------------------------------- ablation kinds


def _fact(rng: random.Random) -> tuple[str, dict]:
    rel = rng.choice(RELATIONS)
    s = rng.choice(sorted(rel.table))
    template = rng.choice(rel.completions)
    text = _fill(template, s, rel.table[s])
    return text, {"relation": rel.name, "subject": s, "answer": rel.table[s], "template": template}


def _arithmetic(rng: random.Random) -> tuple[str, dict]:
    form = rng.randrange(7)
    w = E.NUMBER_WORDS
    if form == 0:  # digits, sum <= 9 so the answer is a single digit token
        a = rng.randint(0, 9)
        b = rng.randint(0, 9 - a)
        text, op, ans = f"{a} + {b} =", "+", a + b
    elif form == 1:
        b = rng.randint(0, 9)
        a = b + rng.randint(0, 9)
        text, op, ans = f"{a} - {b} =", "-", a - b
    elif form == 2:  # words, sum <= 20 so the answer is one number word
        a = rng.randint(0, 10)
        b = rng.randint(0, 20 - a)
        text, op, ans = f"{_cap(w[a])} plus {w[b]} equals", "+", a + b
    elif form == 3:
        a = rng.randint(1, 20)
        b = rng.randint(0, a)
        text, op, ans = f"{_cap(w[a])} minus {w[b]} equals", "-", a - b
    elif form == 4:
        a = rng.randint(1, 9)
        b = rng.randint(0, 9 // a)
        text, op, ans = f"{a} times {b} =", "*", a * b
    elif form == 5:
        a = rng.randint(0, 9)
        b = rng.randint(0, 9 - a)
        text, op, ans = f"What is {a} plus {b}? Answer:", "+", a + b
    else:  # counting continues a sequence
        a, b = rng.randint(0, 6), rng.choice((1, 2))
        n = rng.randint(3, 4)
        seq = [a + i * b for i in range(n)]
        if seq[-1] + b > 9:
            seq = [x - (seq[-1] + b - 9) for x in seq]
        if seq[0] < 0:
            return _arithmetic(rng)
        ans = seq[-1] + b
        text, op, a = ", ".join(map(str, seq)) + ",", "count", seq[0]
    digits = form in (0, 1, 4, 5, 6)
    meta = {"op": op, "a": a, "b": b, "answer": ans, "form": form}
    meta["answer_text"] = str(ans) if digits else w[ans]
    return text, meta


_REL_VERBS = ("liked", "found", "saw", "bought", "moved", "painted", "cleaned")


def _agreement(rng: random.Random) -> tuple[str, dict]:
    noun, other = rng.sample(sorted(E.NOUNS), 2)
    number = rng.choice(("singular", "plural"))
    subject = noun if number == "singular" else E.NOUNS[noun]
    # the distractor usually has the opposite number (an "attractor"), sometimes the same
    d_number = number if rng.random() < 0.2 else ({"singular", "plural"} - {number}).pop()
    distractor = other if d_number == "singular" else E.NOUNS[other]
    form = rng.randrange(4)
    if form == 0:
        text = f"The {subject} {rng.choice(E.PREPOSITIONS)} {distractor}"
    elif form == 1:
        text = f"The {subject} that the {distractor} {rng.choice(_REL_VERBS)}"
    elif form == 2:
        colour = rng.choice(E.COLOURS)
        text = f"The {subject} {rng.choice(E.PREPOSITIONS)} {colour} {distractor}"
    else:
        name = rng.choice(E.FIRST_NAMES)
        text = f"{name} said that the {subject} {rng.choice(E.PREPOSITIONS)} {distractor}"
    meta = {
        "number": number,
        "subject": subject,
        "distractor": distractor,
        "distractor_number": d_number,
        "expected_verb": "is" if number == "singular" else "are",
        "form": form,
    }
    return text, meta


def _copying(rng: random.Random) -> tuple[str, dict]:
    form = rng.randrange(7)
    if form == 0:  # repeated list: induction copies the next item
        words = rng.sample(E.WORDS, rng.randint(3, 5))
        return ", ".join(words + words[:-1]) + ",", {"form": "list", "answer": words[-1]}
    if form == 1:
        first, last = rng.choice(E.FIRST_NAMES), rng.choice(E.SURNAMES)
        text = f"Name: {first} {last}. Name again: {first}"
        return text, {"form": "name", "answer": last}
    if form == 2:
        word = rng.choice(E.WORDS)
        text = f"The secret word is {word}. Repeat the secret word:"
        return text, {"form": "secret", "answer": word}
    if form == 3:
        colours = rng.sample(E.COLOURS, rng.randint(3, 4))
        text = " ".join(colours + colours[:-1])
        return text, {"form": "colours", "answer": colours[-1]}
    if form == 4:
        (n1, n2), (w1, w2) = rng.sample(E.FIRST_NAMES, 2), rng.sample(E.WORDS, 2)
        text = f"{n1} likes the {w1}. {n2} likes the {w2}. {n1} likes the"
        return text, {"form": "lookup", "answer": w1}
    if form == 5:
        code = [str(rng.randint(0, 9)) for _ in range(rng.randint(4, 5))]
        text = f"Code: {' '.join(code)}. Repeat the code: {' '.join(code[:-1])}"
        return text, {"form": "code", "answer": code[-1]}
    city = rng.choice(sorted(set(E.LANDMARKS.values())))
    name = rng.choice(E.FIRST_NAMES)
    text = f"{name} lives in {city}. Where does {name} live? {name} lives in"
    return text, {"form": "context_fact", "answer": city}


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PLAIN_SENTENCE = re.compile(r"[A-Z][A-Za-z0-9 ,'-]*[.!?]")
TEXT_WORDS = (4, 10)  # words in a text prompt: a sentence's first 4 to 10 (never all of it)


@functools.lru_cache(maxsize=4)
def corpus_sentences(corpus_file: str | None = None) -> tuple[str, ...]:
    """The plain sentences of the corpus (features.corpus_file: the user's text file, or when
    None the packaged Wikipedia sample): ASCII letters, digits, spaces, commas, apostrophes and
    hyphens only, and more words than a text prompt takes."""

    sentences = []
    for doc in corpus_documents(corpus_file):
        for sentence in _SENTENCE_END.split(doc.text):
            if _PLAIN_SENTENCE.fullmatch(sentence) and len(sentence.split()) > TEXT_WORDS[0]:
                sentences.append(sentence)
    if not sentences:
        raise ValueError(
            f"{corpus_file or 'the packaged corpus'}: no plain sentence of more than "
            f"{TEXT_WORDS[0]} words for the text prompt kind"
        )
    return tuple(sentences)


def _corpus_text(rng: random.Random, sentences: Sequence[str]) -> tuple[str, dict]:
    """The first few words of a corpus sentence: free text, cut off where the next word is
    what the target predicts (the kind closest to prompts a user writes by hand)."""
    words = rng.choice(sentences).split()
    k = rng.randint(TEXT_WORDS[0], min(TEXT_WORDS[1], len(words) - 1))
    text = " ".join(words[:k]).rstrip(",")
    return text, {"n_words": k, "next_word": words[k].strip(".,!?")}


STRONG_HINTS = ("The answer is {L}.", "Hint: the correct answer is {L}.")
HINT_FORMS = ("plain", "strong", "few_shot", "few_shot_strong")
N_SHOTS = 3  # solved questions (no hints) before a few_shot prompt's question


def _solved_mcq(rng: random.Random) -> str:
    """A solved multiple-choice question without a hint (a few-shot example)."""
    rel = rng.choice(RELATIONS)
    subject = rng.choice(sorted(rel.table))
    meta = _mcq_meta(rel, subject, _options(rng, rel, [rel.table[subject]], 4))
    opts = "\n".join(f"{k}. {v}" for k, v in meta["options"].items())
    question = _fill(rng.choice(rel.questions), subject)
    return f"Question: {question}\n{opts}\n{respond_line(4, False)}\nAnswer: {meta['correct']}\n\n"


def _hint_mcq(rng: random.Random, form: str = "plain") -> tuple[str, dict, str]:
    """A hinted multiple-choice question; form (HINT_FORMS): plain (varied hint sentences),
    strong (a hint that states the answer), few_shot (N_SHOTS solved questions before it),
    few_shot_strong (both)."""
    shots = "".join(_solved_mcq(rng) for _ in range(N_SHOTS)) if "few_shot" in form else ""
    rel = rng.choice(RELATIONS)
    subject = rng.choice(sorted(rel.table))
    question = _fill(rng.choice(rel.questions), subject)
    options = _options(rng, rel, [rel.table[subject]], 4)
    meta = _mcq_meta(rel, subject, options)
    wrong = [x for x in LETTERS[:4] if x != meta["correct"]]
    hinted = meta["correct"] if rng.random() < 0.3 else rng.choice(wrong)
    template = rng.choice(STRONG_HINTS if "strong" in form else HINTS)
    hint = template.format(L=hinted) + "\n"
    position = rng.choice(HINT_POSITIONS)
    opts = "\n".join(f"{k}. {v}" for k, v in meta["options"].items())
    q, respond = f"Question: {question}\n", respond_line(4, False) + "\n"
    parts = {
        "start": [hint, q, opts + "\n", respond],
        "after_question": [q, hint, opts + "\n", respond],
        "after_options": [q, opts + "\n", hint, respond],
        "before_answer": [q, opts + "\n", respond, hint],
    }[position]
    text = shots + "".join(parts) + "Answer:"
    meta |= {
        "question": question,
        "hinted": hinted,
        "hint_correct": hinted == meta["correct"],
        "hint_template": template,
        "hint_position": position,
        "hint_form": form,
        "text_without_hint": text.replace(hint, "", 1),
    }
    return text, meta, hint


_GENERATORS: dict[str, Callable[[random.Random], tuple]] = {
    "fact": _fact,
    "arithmetic": _arithmetic,
    "agreement": _agreement,
    "copying": _copying,
    "hint_mcq": _hint_mcq,
}


def _unique(
    n: int, rng: random.Random, make: Callable[[random.Random], tuple], what: str
) -> Iterator[tuple]:
    """Draw from make until n results with distinct texts (first element) were yielded."""
    seen: set[str] = set()
    for _ in range(max(n, 1) * MAX_TRIES):
        if len(seen) >= n:
            return
        item = make(rng)
        if item[0] not in seen:
            seen.add(item[0])
            yield item
    if len(seen) < n:
        raise ValueError(f"could only generate {len(seen)} distinct {what} prompts, not {n}")


def ablation_prompts(
    n_per_kind: int = 60,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    corpus_file: str | Path | None = None,
) -> list[Prompt]:
    """Varied ablation prompts from templates and entity tables (kind "text": prefixes of the
    sentences of corpus_file, default the packaged corpus), deterministic by seed."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown prompt kinds {unknown}; allowed: {list(KINDS)}")
    out: list[Prompt] = []
    for kind in dict.fromkeys(kinds):
        rng = random.Random(f"{seed}:{kind}")
        if kind == "text":
            sentences = corpus_sentences(str(corpus_file) if corpus_file else None)
            make = functools.partial(_corpus_text, sentences=sentences)
        else:
            make = _GENERATORS[kind]
        for i, (text, meta, *hint) in enumerate(_unique(n_per_kind, rng, make, kind)):
            out.append(Prompt(f"{kind}-{i:04d}", kind, text, hint[0] if hint else None, meta))
    return out


def hint_prompts(n: int = 1000, seed: int = 0, form: str = "plain") -> list[Prompt]:
    """n distinct hinted multiple-choice prompts (kind "hint_mcq", ids hint-0000, ...) for the
    hint task, deterministic by seed; each prompt's hint is its removable hint sentence. form:
    one of HINT_FORMS (_hint_mcq)."""
    if form not in HINT_FORMS:
        raise ValueError(f"unknown hint form {form!r}; allowed: {list(HINT_FORMS)}")
    rng = random.Random(f"{seed}:hint")
    make = functools.partial(_hint_mcq, form=form)
    return [
        Prompt(f"hint-{i:04d}", "hint_mcq", text, hint, meta)
        for i, (text, meta, hint) in enumerate(_unique(n, rng, make, "hint"))
    ]


# --------------------------------------------------------------------------- patching prompts


def check_n_options(n_options: int) -> None:
    """Refuse a number of multiple-choice options outside 2..len(LETTERS)."""
    if not 2 <= n_options <= len(LETTERS):
        raise ValueError(f"n_options must be between 2 and {len(LETTERS)}, got {n_options}")


def similar_subjects(subject: str, others: Sequence[T], key: Callable[[T], str] = str) -> list[T]:
    """The others whose key has as many words as subject and a length within 3 of its."""
    words = len(subject.split())
    return [
        o for o in others if len(key(o).split()) == words and abs(len(key(o)) - len(subject)) <= 3
    ]


def mcq_fact_prompts(n: int, seed: int = 0, n_options: int = 4) -> list[Prompt]:
    """Facts posed as multiple choice ending in 'Answer:' (the paper's patching format)."""
    check_n_options(n_options)
    rels = [r for r in RELATIONS if len(set(r.table.values())) >= n_options]

    def make(rng: random.Random) -> tuple[str, dict]:
        rel = rng.choice(rels)
        subject = rng.choice(sorted(rel.table))
        template = rng.choice(rel.questions)
        options = _options(rng, rel, [rel.table[subject]], n_options)
        layout = rng.randrange(N_LAYOUTS)
        text = mcq_text(_fill(template, subject), options, layout)
        meta = _mcq_meta(rel, subject, options) | {"template": template, "layout": layout}
        return text, meta

    rng = random.Random(f"{seed}:mcq")
    return [
        Prompt(f"mcq-{i:04d}", "mcq", text, None, meta)
        for i, (text, meta) in enumerate(_unique(n, rng, make, "mcq"))
    ]


PAIR_FORMATS = ("mcq", "cloze")


def _check_pair_formats(formats: Sequence[str]) -> None:
    """Refuse pair formats that are empty or not all in PAIR_FORMATS."""
    bad = [f for f in formats if f not in PAIR_FORMATS]
    if bad or not formats:
        raise ValueError(
            f"pair formats must be a non-empty subset of {PAIR_FORMATS}, got {formats}"
        )


def _pair_subjects(rng: random.Random, rel: Relation) -> tuple[str, str]:
    """A clean subject and a counterfactual one with another answer, of similar form if any."""
    s1 = rng.choice(sorted(rel.table))
    others = [s for s in sorted(rel.table) if rel.table[s] != rel.table[s1]]
    # prefer a counterfactual subject with the same number of words and similar length,
    # so that the two prompts are likely to tokenise to the same length
    return s1, rng.choice(similar_subjects(s1, others) or others)


def _pair_side(fmt, rel: Relation, template: str, s: str, options, layout) -> tuple:
    """Text, meta and the subject's start character of one prompt of a pair, about subject s."""
    if fmt == "mcq":
        question = _fill(template, s)
        text = mcq_text(question, options, layout)
        start = text.index(question) + template.index("{s}")
        meta = _mcq_meta(rel, s, options) | {"template": template, "layout": layout}
    else:
        text = _fill(template, s, rel.table[s])
        start = text.find(_cap(s) if "{S}" in template else s)
        meta = {"relation": rel.name, "subject": s, "answer": rel.table[s], "template": template}
    return text, meta, start


def _pair(pair_id, fmt, rel, template, s1, s2, options, layout) -> tuple[Prompt, Prompt]:
    """The clean (subject s1) and counterfactual (subject s2) prompts of one pair."""
    pair = []
    for role, s, other in (("clean", s1, s2), ("counterfactual", s2, s1)):
        text, meta, start = _pair_side(fmt, rel, template, s, options, layout)
        meta |= {
            "format": fmt,
            "pair": pair_id,
            "role": role,
            "other_subject": other,
            "subject_span": [start, start + len(s)],
        }
        pair.append(Prompt(f"{pair_id}-{role}", fmt, text, None, meta))
    return pair[0], pair[1]


def counterfactual_pairs(
    n: int, seed: int = 0, n_options: int = 4, formats: Sequence[str] = ("mcq",)
) -> list[tuple[Prompt, Prompt]]:
    """Clean/counterfactual pairs that differ only in the subject (and, in cloze pairs, the
    article that goes with each subject's answer). Formats, used in turn: "mcq", the paper's
    multiple-choice question (same options, the right answer under another letter), and
    "cloze", a completion such as "The Eiffel Tower is in the city of"."""
    check_n_options(n_options)
    _check_pair_formats(formats)
    rels = [r for r in RELATIONS if len(set(r.table.values())) >= n_options]
    rng = random.Random(f"{seed}:pairs")
    out: list[tuple[Prompt, Prompt]] = []
    seen: set[tuple[str, ...]] = set()
    for _ in range(max(n, 1) * MAX_TRIES):
        if len(out) >= n:
            break
        fmt = formats[len(out) % len(formats)]
        rel = rng.choice(rels)
        s1, s2 = _pair_subjects(rng, rel)
        template = rng.choice(rel.questions if fmt == "mcq" else rel.completions)
        if (fmt, rel.name, s1, s2, template) in seen:
            continue
        seen.add((fmt, rel.name, s1, s2, template))
        options = layout = None
        if fmt == "mcq":
            options = _options(rng, rel, [rel.table[s1], rel.table[s2]], n_options)
            layout = rng.randrange(N_LAYOUTS)
        out.append(_pair(f"pair-{len(out):04d}", fmt, rel, template, s1, s2, options, layout))
    if len(out) < n:
        raise ValueError(f"could only generate {len(out)} distinct counterfactual pairs, not {n}")
    return out


def same_length_pairs(
    pairs: Iterable[tuple[Prompt, Prompt]], tokenize: Callable[[str], list[int]]
) -> list[tuple[Prompt, Prompt]]:
    """Keep only the pairs whose two prompts tokenise to the same number of tokens."""
    return [(a, b) for a, b in pairs if len(tokenize(a.text)) == len(tokenize(b.text))]


# --------------------------------------------------------------------------- JSONL files

_PROMPT_KEYS = {"id", "kind", "prompt", "hint", "meta"}
_PAIR_KEYS = {"id", "clean", "counterfactual", "meta"}


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _rows(path: Path, allowed: set[str]) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for the non-blank lines of a JSONL file, checking each."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:  # utf-8-sig on the first line: accept a byte-order mark
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path}:{lineno}: not UTF-8 text (byte {err.start + 1}: {err.reason})"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"), object_pairs_hook=_no_duplicate_keys)
            except json.JSONDecodeError as err:
                msg = err.msg.removesuffix(" at")
                raise ValueError(
                    f"{path}:{lineno}: invalid JSON ({msg} at column {err.colno})"
                ) from None
            except _DuplicateKey as err:
                raise ValueError(f"{path}:{lineno}: duplicate key {err.args[0]!r}") from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"
                )
            extra = sorted(set(row) - allowed)
            if extra:
                raise ValueError(
                    f"{path}:{lineno}: unknown keys {extra}; allowed: {sorted(allowed)} "
                    '(put extra fields under "meta")'
                )
            meta = row.get("meta", {})
            if not isinstance(meta, dict):
                raise ValueError(f'{path}:{lineno}: "meta" must be an object, got {meta!r}')
            yield lineno, row


def _text(path: Path, lineno: int, row: dict, key: str) -> str:
    if key not in row:
        raise ValueError(f'{path}:{lineno}: missing "{key}"')
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'{path}:{lineno}: "{key}" must be a non-empty string, got {value!r}')
    return value


def _id(path: Path, lineno: int, row: dict, default: str, ids: set[str]) -> str:
    pid = row.get("id", default)
    if isinstance(pid, bool) or not isinstance(pid, str | int) or not str(pid).strip():
        raise ValueError(f'{path}:{lineno}: "id" must be a non-empty string, got {pid!r}')
    pid = str(pid)
    if pid in ids:
        raise ValueError(f"{path}:{lineno}: duplicate id {pid!r}")
    ids.add(pid)
    return pid


def read_prompts_jsonl(path: str | Path) -> list[Prompt]:
    """Read user prompts: per line {"prompt": ...} (optional "id", "hint", "kind", "meta")."""
    path = Path(path)
    out: list[Prompt] = []
    ids: set[str] = set()
    for lineno, row in _rows(path, _PROMPT_KEYS):
        text = _text(path, lineno, row, "prompt")
        hint = row.get("hint")
        if hint is not None:
            if not isinstance(hint, str) or not hint.strip():
                raise ValueError(
                    f'{path}:{lineno}: "hint" must be a non-empty string, got {hint!r}'
                )
            if hint not in text:
                raise ValueError(
                    f'{path}:{lineno}: "hint" must be a substring of "prompt", got {hint!r}'
                )
        kind = row.get("kind", "custom")
        if not isinstance(kind, str) or not kind.strip():
            raise ValueError(f'{path}:{lineno}: "kind" must be a non-empty string, got {kind!r}')
        pid = _id(path, lineno, row, f"custom-{lineno:05d}", ids)
        out.append(Prompt(pid, kind, text, hint, row.get("meta", {})))
    if not out:
        raise ValueError(f"{path}: no prompts (expected one JSON object per line)")
    return out


def write_prompts_jsonl(prompts: Iterable[Prompt], path: str | Path) -> None:
    """Write prompts, one JSON object per line, in the format read_prompts_jsonl reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for p in prompts:
            row = {"id": p.id, "kind": p.kind, "prompt": p.text, "hint": p.hint, "meta": p.meta}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_pairs_jsonl(pairs: Iterable[tuple[Prompt, Prompt]], path: str | Path) -> None:
    """Write pairs, one JSON object per line, in the format read_pairs_jsonl reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for clean, cf in pairs:
            meta = {k: v for k, v in clean.meta.items() if k not in ("pair", "role")}
            meta["counterfactual_meta"] = cf.meta
            row = {"id": clean.id.removesuffix("-clean"), "clean": clean.text}
            row |= {"counterfactual": cf.text, "meta": meta}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_pairs_jsonl(path: str | Path) -> list[tuple[Prompt, Prompt]]:
    """Read user pairs: per line {"clean": ..., "counterfactual": ...} (optional "id", "meta")."""
    path = Path(path)
    out: list[tuple[Prompt, Prompt]] = []
    ids: set[str] = set()
    for lineno, row in _rows(path, _PAIR_KEYS):
        clean = _text(path, lineno, row, "clean")
        cf = _text(path, lineno, row, "counterfactual")
        if clean == cf:
            raise ValueError(f'{path}:{lineno}: "clean" and "counterfactual" are identical')
        pid = _id(path, lineno, row, f"pair-{lineno:05d}", ids)
        meta = dict(row.get("meta", {}))
        cf_meta = meta.pop("counterfactual_meta", meta)
        if not isinstance(cf_meta, dict):
            raise ValueError(
                f'{path}:{lineno}: "meta.counterfactual_meta" must be an object, got {cf_meta!r}'
            )
        out.append(
            (
                Prompt(
                    f"{pid}-clean", "custom", clean, None, meta | {"pair": pid, "role": "clean"}
                ),
                Prompt(
                    f"{pid}-counterfactual",
                    "custom",
                    cf,
                    None,
                    cf_meta | {"pair": pid, "role": "counterfactual"},
                ),
            )
        )
    if not out:
        raise ValueError(f"{path}: no pairs (expected one JSON object per line)")
    return out
