"""Fact-level splits: no test item shares its fact (ablation), a subject (hint; patching, clean
or counterfactual) or a relation (patching, holdout relation) with a training item, and the
validation carve-out keeps the same groups. Label rows are faked from the generators' prompts
(no model: the split reads only the prompts' meta)."""

from __future__ import annotations

import pytest

from selfexplain import prompts as P
from selfexplain.core.schema import (
    held_out,
    held_out_groups,
    linked_groups,
    meta,
    split_of,
    to_frame,
)
from selfexplain.data.draws import train_validation
from selfexplain.tasks import ablation, hint, patching

# --------------------------------------------------------------------------- fake label rows


def _ablation_rows(prompts: list[P.Prompt]) -> list[dict]:
    """Two token-removal rows per prompt, with the fact the labeller writes."""
    return [
        {
            "prompt_id": p.id,
            "kind": p.kind,
            "fact": ablation.fact_key(p),
            "prompt": p.text,
            "unit": "token",
            "position": k,
            "token_index": k + 1,
            "removed": "x",
            "orig_token": " y",
            "changed": k == 0,
            "new_token": " z",
        }
        for p in prompts
        for k in range(2)
    ]


def _hint_rows(prompts: list[P.Prompt]) -> list[dict]:
    return [
        {
            "prompt_id": p.id,
            "prompt": p.text,
            "hint": p.hint,
            "orig_token": " A",
            "changed": i % 2 == 0,
            "new_token": " B",
        }
        | {k: p.meta.get(k) for k in hint.META_KEYS}
        for i, p in enumerate(prompts)
    ]


def _patching_rows(pairs) -> list[dict]:
    """Rows of two window starts x two positions per pair, with the subjects the labeller
    writes."""
    return [
        {
            "pair_id": patching.pair_id(clean),
            "clean": clean.text,
            "counterfactual": cf.text,
            "relation": clean.meta.get("relation"),
            "subject": clean.meta.get("subject"),
            "cf_subject": cf.meta.get("subject"),
            "orig_token": " A",
            "layer_start": start,
            "layer_end": start,
            "window": 1,
            "position": pos,
            "token": "t",
            "changed": pos == 0,
            "new_token": " B",
        }
        for clean, cf in pairs
        for start in (0, 2)
        for pos in (0, 3)
    ]


def _sides(examples, key) -> tuple[set, set, set]:
    """The keys (key(meta) -> iterable) of the training, validation and test rows."""
    df = to_frame(examples)
    train, val = train_validation(df, examples[0].task, 0.3)
    test = df.filter(df["split"] == "test")
    out = []
    for part in (train, val, test):
        out.append({k for m in meta(part) for k in key(m)})
    assert all(out), "every side has rows"
    return out[0], out[1], out[2]


# --------------------------------------------------------------------------- ablation


def _fact_of(kind: str, m: dict) -> tuple:
    """The fact of a generated prompt, written out independently of ablation.fact_key."""
    if kind == "fact":
        return (m["relation"], m["subject"])
    if kind == "arithmetic":
        a, b = sorted((m["a"], m["b"])) if m["op"] in "+*" else (m["a"], m["b"])
        return (m["op"], a, b, m["answer"])
    if kind == "agreement":
        return (m["subject"],)
    return (m["form"], m["answer"])


def test_ablation_test_and_validation_prompts_state_no_training_fact():
    prompts = P.ablation_prompts(
        n_per_kind=120, kinds=("fact", "arithmetic", "agreement", "copying")
    )
    facts = {p.id: (p.kind, _fact_of(p.kind, p.meta)) for p in prompts}
    examples = ablation.ablation_examples(_ablation_rows(prompts), "tiny", test_fraction=0.2)
    train, val, test = _sides(examples, lambda m: [facts[m["prompt_id"]]])
    assert not train & test and not train & val
    # the prompt holdout (the old split) lets facts cross: the reason for the fact holdout
    by_prompt = ablation.ablation_examples(_ablation_rows(prompts), "tiny", holdout="prompt")
    train, _, test = _sides(by_prompt, lambda m: [facts[m["prompt_id"]]])
    assert train & test


def test_fact_key_names_one_fact_in_any_form():
    def key(kind, text, **m):
        return ablation.fact_key(P.Prompt("p", kind, text, None, m))

    sums = [
        key("arithmetic", "3 + 4 =", op="+", a=3, b=4, answer=7, form=0),
        key("arithmetic", "Four plus three equals", op="+", a=4, b=3, answer=7, form=2),
    ]
    assert sums[0] == sums[1] == "arithmetic:3 + 4 = 7"
    assert key("arithmetic", "4 - 3 =", op="-", a=4, b=3, answer=1) != key(
        "arithmetic", "3 - 4 =", op="-", a=3, b=4, answer=-1
    )
    completion = key("fact", "The capital of France is", relation="capital", subject="France")
    question = key("hint_mcq", "Question: ...", relation="capital", subject="France")
    assert completion == question == "fact:capital:France"
    assert key("copying", "Name: A B. Name again: A", form="name", answer="B") == "copying:name:B"
    assert key("text", "In 1951, MGM released its", n_words=5, next_word="x") == key(
        "text", "In 1951, MGM released", n_words=4, next_word="its"
    )
    assert key("custom", "Hello there") is None
    assert key("fact", "The capital of France is", subject="France") is None  # no relation


def test_ablation_user_prompts_fall_back_to_the_prompt_id():
    prompts = [P.Prompt(f"custom-{i:05d}", "custom", f"Say {i}", None, {}) for i in range(60)]
    examples = ablation.ablation_examples(_ablation_rows(prompts), "tiny", test_fraction=0.3)
    for ex in examples:
        assert ex.meta["split_group"] == ex.meta["prompt_id"]
        assert ex.split == split_of(ex.meta["prompt_id"], 0.3, 0)
    with pytest.raises(ValueError, match="holdout"):
        ablation.ablation_examples(_ablation_rows(prompts), "tiny", holdout="subject")


# --------------------------------------------------------------------------- hint


def test_hint_test_and_validation_prompts_ask_about_no_training_subject():
    rows = _hint_rows(P.hint_prompts(400))
    examples = hint.hint_examples(rows, "tiny", test_fraction=0.3)
    train, val, test = _sides(examples, lambda m: [m["subject"]])
    assert not train & test and not train & val
    by_question = hint.hint_examples(rows, "tiny", test_fraction=0.3, holdout="question")
    train, _, test = _sides(by_question, lambda m: [m["subject"]])
    assert train & test  # a subject asked in another relation crosses the question split
    train, _, test = _sides(by_question, lambda m: [(m["relation"], m["subject"])])
    assert not train & test


def test_hint_user_prompts_fall_back_to_the_prompt_id():
    rows = [r | {"relation": None, "subject": None} for r in _hint_rows(P.hint_prompts(40))]
    for holdout in hint.HOLDOUTS:
        for ex in hint.hint_examples(rows, "tiny", test_fraction=0.3, holdout=holdout):
            assert ex.meta["split_group"] == ex.meta["prompt_id"]
            assert ex.split == split_of(ex.meta["prompt_id"], 0.3, 0)


# --------------------------------------------------------------------------- patching


def _subjects(m: dict) -> list[str]:
    return [m["subject"], m["cf_subject"]]


@pytest.mark.parametrize("seed", [0, 1])
def test_patching_test_and_validation_pairs_share_no_subject_with_training(seed):
    pairs = P.counterfactual_pairs(100, formats=("mcq", "cloze"))
    examples = patching.patching_examples(
        _patching_rows(pairs), "tiny", test_fraction=0.3, seed=seed
    )
    train, val, test = _sides(examples, _subjects)
    assert not train & test and not train & val
    n_test = len({ex.meta["pair_id"] for ex in examples if ex.split == "test"})
    assert 20 <= n_test <= 30  # whole components, at most round(0.3 x 100)
    old = patching.patching_examples(
        _patching_rows(pairs), "tiny", test_fraction=0.3, holdout="prompt"
    )
    train, _, test = _sides(old, _subjects)
    assert train & test


def test_patching_relation_holdout_is_relation_disjoint():
    pairs = P.counterfactual_pairs(100, formats=("mcq", "cloze"))
    rows = _patching_rows(pairs)
    examples = patching.patching_examples(rows, "tiny", test_fraction=0.3, holdout="relation")
    train = {ex.meta["relation"] for ex in examples if ex.split == "train"}
    test = {ex.meta["relation"] for ex in examples if ex.split == "test"}
    assert train and test and not train & test


def test_patching_user_pairs_fall_back_to_the_pair_id():
    """Pairs without subjects are groups of their own: the entity holdout then holds out
    exactly the pairs the prompt holdout does."""
    rows = [
        r | {"subject": None, "cf_subject": None}
        for r in _patching_rows(P.counterfactual_pairs(40))
    ]
    entity = patching.patching_examples(rows, "tiny", test_fraction=0.3)
    by_pair = patching.patching_examples(rows, "tiny", test_fraction=0.3, holdout="prompt")
    assert [e.split for e in entity] == [e.split for e in by_pair]
    assert all(e.meta["split_group"] == e.meta["pair_id"] for e in entity)
    n_test = len({e.meta["pair_id"] for e in entity if e.split == "test"})
    assert n_test == round(0.3 * 40)


def test_linked_groups_are_connected_components():
    links = {"p1": ["a", "b"], "p2": ["b", "c"], "p3": ["d"], "p0": ["c"], "p4": []}
    assert linked_groups(links) == {"p1": "p0", "p2": "p0", "p0": "p0", "p3": "p3", "p4": "p4"}


def test_held_out_groups_take_whole_groups_never_all():
    groups = {f"u{i}": "big" for i in range(9)} | {"u9": "small"}
    for seed in range(10):
        assert held_out_groups(groups, 0.3, seed) == {"small"}  # big is over the target
    singles = {f"p{i}": f"p{i}" for i in range(40)}
    assert held_out_groups(singles, 0.3, 0) == held_out(singles, 0.3, 0)
    assert held_out_groups({"a": "g", "b": "g"}, 0.5, 0) == set()
