import json

import pytest

from selfexplain import entities
from selfexplain.prompts import (
    KINDS,
    Prompt,
    ablation_prompts,
    counterfactual_pairs,
    mcq_fact_prompts,
    read_pairs_jsonl,
    read_prompts_jsonl,
    same_length_pairs,
    write_prompts_jsonl,
)


def test_generation_is_deterministic_with_counts_and_unique_ids():
    a = ablation_prompts(40, seed=1)
    assert a == ablation_prompts(40, seed=1)
    assert a != ablation_prompts(40, seed=2)
    assert len(a) == 40 * len(KINDS)
    assert len({p.id for p in a}) == len(a)
    for kind in KINDS:
        texts = [p.text for p in a if p.kind == kind]
        assert len(texts) == 40 == len(set(texts))


def test_hint_is_removable_span():
    for p in ablation_prompts(30, kinds=["hint_mcq"]):
        assert p.hint and p.hint in p.text
        without = p.text.replace(p.hint, "", 1)
        assert without == p.meta["text_without_hint"]
        assert without.endswith("Answer:") and p.meta["hinted"] in "ABCD"
        assert p.meta["hinted"] in p.hint
        assert p.meta["options"][p.meta["correct"]] in p.text


def test_facts_in_tables_are_consistent():
    assert entities.COUNTRIES["France"][0] == "Paris"
    assert entities.LANDMARKS["Colosseum"] == "Rome"
    fact = next(p for p in ablation_prompts(60, kinds=["fact"]) if p.meta["relation"] == "capital")
    assert entities.COUNTRIES[fact.meta["subject"]][0] == fact.meta["answer"]


def test_counterfactual_pairs_differ_only_in_subject():
    for clean, cf in counterfactual_pairs(30):
        assert clean.meta["options"] == cf.meta["options"]
        assert clean.meta["correct"] != cf.meta["correct"]
        (q1, rest1), (q2, rest2) = (p.text.split("\n", 1) for p in (clean, cf))
        assert rest1 == rest2
        assert q1.replace(clean.meta["subject"], cf.meta["subject"]) == q2
    mcq = mcq_fact_prompts(10)
    assert all(p.text.endswith("Answer:") for p in mcq)


def test_same_length_pairs_filters_by_token_count():
    pairs = counterfactual_pairs(20)
    kept = same_length_pairs(pairs, lambda text: text.split())
    assert kept and all(len(a.text.split()) == len(b.text.split()) for a, b in kept)
    assert len(kept) < len(pairs)


def test_round_trip(tmp_path):
    prompts = ablation_prompts(3)
    write_prompts_jsonl(prompts, tmp_path / "p.jsonl")
    assert read_prompts_jsonl(tmp_path / "p.jsonl") == prompts


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"id": "x"}', '"prompt" must be a non-empty string'),
        ('{"prompt": 3}', '"prompt" must be a non-empty string'),
        ('{"prompt": "abc", "hint": "zzz"}', '"hint" must be a substring'),
        ('{"prompt": "abc", "meta": 5}', '"meta" must be an object'),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, line, problem):
    path = tmp_path / "user.jsonl"
    path.write_text(json.dumps({"prompt": "fine"}) + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"user.jsonl:3: .*{problem}"):
        read_prompts_jsonl(path)


def test_duplicate_ids_and_bad_pairs(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(ValueError, match="dup.jsonl:2: duplicate id 'a'"):
        read_prompts_jsonl(path)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"clean": "a b", "counterfactual": "c d"}\n{"clean": "a"}\n')
    with pytest.raises(ValueError, match='pairs.jsonl:2: "counterfactual"'):
        read_pairs_jsonl(pairs)
    pairs.write_text('{"clean": "a b", "counterfactual": "c d"}\n')
    ((clean, cf),) = read_pairs_jsonl(pairs)
    assert (clean.text, cf.text) == ("a b", "c d") and isinstance(clean, Prompt)
