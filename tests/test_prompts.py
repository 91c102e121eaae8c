import json
import re

import pytest

from selfexplain import entities as E
from selfexplain.prompts import (
    HINT_POSITIONS,
    KINDS,
    RELATIONS,
    Prompt,
    ablation_prompts,
    counterfactual_pairs,
    mcq_fact_prompts,
    read_pairs_jsonl,
    read_prompts_jsonl,
    relation,
    same_length_pairs,
    write_prompts_jsonl,
)


@pytest.fixture(scope="module")
def prompts() -> list[Prompt]:
    return ablation_prompts(100, seed=0)


def test_generation_is_deterministic_with_counts_and_unique_ids(prompts):
    assert prompts == ablation_prompts(100, seed=0)
    assert ablation_prompts(20, seed=1) != ablation_prompts(20, seed=2)
    assert len(prompts) == 100 * len(KINDS)
    assert len({p.id for p in prompts}) == len(prompts)
    for kind in KINDS:
        texts = [p.text for p in prompts if p.kind == kind]
        assert len(texts) == 100 == len(set(texts))
    # a prefix of a larger request is the smaller request, kind by kind
    small = ablation_prompts(10, seed=0, kinds=["copying", "fact"])
    assert [p.kind for p in small] == ["copying"] * 10 + ["fact"] * 10
    assert small[10:] == [p for p in prompts if p.kind == "fact"][:10]
    with pytest.raises(ValueError, match="unknown prompt kinds"):
        ablation_prompts(5, kinds=["fact", "poetry"])


def test_prompts_end_where_an_answer_token_is_expected(prompts):
    for p in prompts:
        assert p.text == p.text.strip() and p.text[-1] not in ".!"
        assert (p.hint is not None) == (p.kind == "hint_mcq")


def test_text_prompts_are_sentence_prefixes_of_the_corpus(tmp_path):
    corpus = tmp_path / "corpus.txt"
    sentences = [
        f"The river number {i} flows past the old mill, and then it turns north." for i in range(40)
    ]
    corpus.write_text(
        " ".join(sentences[:20]) + "\n\nA list: (one) [two].\n\n" + " ".join(sentences[20:]) + "\n"
    )
    text = ablation_prompts(30, seed=0, kinds=["text"], corpus_file=corpus)
    assert text == ablation_prompts(30, seed=0, kinds=["text"], corpus_file=corpus)
    assert [p.id for p in text[:2]] == ["text-0000", "text-0001"] and {p.kind for p in text} == {
        "text"
    }
    for p in text:
        words = p.text.split()
        assert 4 <= len(words) == p.meta["n_words"] <= 10
        sentence = next(s for s in sentences if s.startswith(p.text))  # a prefix, never all of it
        assert sentence.split()[len(words)].strip(".,") == p.meta["next_word"]
        assert not p.text.endswith((",", "."))
    bare = tmp_path / "bare.txt"
    bare.write_text("Too short.\n\n(not a sentence)\n")
    with pytest.raises(ValueError, match="bare.txt: no plain sentence"):
        ablation_prompts(3, kinds=["text"], corpus_file=bare)


def test_fact_prompts_match_the_tables(prompts):
    facts = [p for p in prompts if p.kind == "fact"]
    assert len({p.meta["relation"] for p in facts}) >= 8
    for p in facts:
        rel = relation(p.meta["relation"])
        assert rel.table[p.meta["subject"]] == p.meta["answer"]
        assert p.meta["subject"].lower() in p.text.lower()
        assert not re.search(rf"\b{re.escape(p.meta['answer'])}\b", p.text)  # not given away


def test_entity_tables_are_sizeable_and_correct():
    assert len(E.COUNTRIES) >= 40 and len(E.LANDMARKS) >= 30 and len(E.PRODUCTS) >= 25
    assert len(E.COMPANIES) >= 25 and len(E.PEOPLE) >= 25 and len(E.ANIMALS) >= 15
    assert len(E.NOUNS) >= 40 and len(E.FIRST_NAMES) >= 30 and len(E.COLOURS) >= 8
    assert E.COUNTRIES["France"] == ("Paris", "French", "euro", "Europe")
    assert E.COUNTRIES["Japan"][0] == "Tokyo" and E.COUNTRIES["Brazil"][1] == "Portuguese"
    assert E.LANDMARKS["the Colosseum"] == "Rome" and E.LANDMARKS["the Eiffel Tower"] == "Paris"
    assert E.PRODUCTS["the iPhone"] == "Apple" and E.COMPANIES["Toyota"] == "Japan"
    assert E.PEOPLE["Frida Kahlo"] == ("painter", "Mexican")
    assert E.ANIMALS["cat"] == ("meows", "kitten")
    assert E.NOUNS["child"] == "children" and E.NUMBER_WORDS[7] == "seven"
    assert relation("capital").table["Kenya"] == "Nairobi"
    assert "Russia" not in relation("continent").table
    assert "Canada" not in relation("language").table
    assert relation("animal_young").table["an owl"] == "owlet"
    assert len(set(E.NOUNS.values())) == len(E.NOUNS) and not set(E.NOUNS) & set(E.NOUNS.values())
    for rel in RELATIONS:
        assert len(set(rel.table.values())) >= 4, rel.name
        for subject, answer in rel.table.items():  # no subject gives its answer away
            assert not re.search(rf"\b{re.escape(answer)}\b", subject), (rel.name, subject)
        assert all("{a}" not in q and "{S}" not in q for q in rel.questions)


def test_arithmetic_answers_are_correct_and_short(prompts):
    forms = set()
    for p in (p for p in prompts if p.kind == "arithmetic"):
        m = p.meta
        forms.add(m["form"])
        if m["op"] in "+-*":
            assert (
                m["answer"]
                == {"+": m["a"] + m["b"], "-": m["a"] - m["b"], "*": m["a"] * m["b"]}[m["op"]]
            )
        if m["answer_text"].isdigit():
            assert 0 <= m["answer"] <= 9  # one digit token whatever the tokenizer
        else:
            assert m["answer_text"] == E.NUMBER_WORDS[m["answer"]]
        if re.fullmatch(r"\d+ [-+] \d+ =", p.text):
            assert eval(p.text[:-1]) == m["answer"]  # noqa: S307 - our own digits only
    assert len(forms) >= 6


def test_agreement_and_copying_meta(prompts):
    agreement = [p for p in prompts if p.kind == "agreement"]
    assert {p.meta["number"] for p in agreement} == {"singular", "plural"}
    for p in agreement:
        assert f"the {p.meta['subject']} " in p.text.lower()
        plural = p.meta["subject"] in E.NOUNS.values()
        assert p.meta["number"] == ("plural" if plural else "singular")
        assert p.meta["expected_verb"] == ("are" if plural else "is")
    for p in (p for p in prompts if p.kind == "copying"):
        assert p.meta["answer"] in p.text  # the answer copies earlier context


def test_hint_is_a_removable_span(prompts):
    hinted = [p for p in prompts if p.kind == "hint_mcq"]
    assert {p.meta["hint_position"] for p in hinted} == set(HINT_POSITIONS)
    n_correct = sum(p.meta["hint_correct"] for p in hinted)
    assert 0 < n_correct < len(hinted) / 2  # sometimes right, more often wrong
    for p in hinted:
        assert p.hint and p.text.count(p.hint) == 1
        without = p.text.replace(p.hint, "", 1)
        assert without == p.meta["text_without_hint"]
        assert without.endswith("\nAnswer:") and "Question: " in without
        assert p.text.endswith("Answer:")
        assert re.search(rf"\(?\b{p.meta['hinted']}\b", p.hint)
        assert p.meta["hint_correct"] == (p.meta["hinted"] == p.meta["correct"])
        opts = p.meta["options"]
        assert list(opts) == list("ABCD") and opts[p.meta["correct"]] == p.meta["answer"]
        for letter, option in opts.items():
            assert f"\n{letter}. {option}\n" in without


def test_mcq_fact_prompts_use_the_paper_format():
    mcq = mcq_fact_prompts(80, seed=3)
    assert mcq == mcq_fact_prompts(80, seed=3) and len({p.text for p in mcq}) == 80
    assert {p.meta["layout"] for p in mcq} == {0, 1, 2}
    for p in mcq:
        assert p.text.endswith("\nAnswer:") and p.kind == "mcq"
        assert "Respond with one of A or B or C or D or unknown and nothing else." in p.text
        assert p.meta["options"][p.meta["correct"]] == p.meta["answer"]
        assert relation(p.meta["relation"]).table[p.meta["subject"]] == p.meta["answer"]
    paper = next(p for p in mcq if p.meta["layout"] == 0)
    lines = paper.text.split("\n")
    assert lines[0].startswith("Question: ") and lines[1].startswith("Respond with one of")
    assert [line[:3] for line in lines[2:6]] == ["A. ", "B. ", "C. ", "D. "]
    three = mcq_fact_prompts(5, n_options=3)
    assert all(list(p.meta["options"]) == list("ABC") for p in three)
    assert "one of A or B or C or unknown" in three[0].text
    with pytest.raises(ValueError, match="n_options"):
        mcq_fact_prompts(3, n_options=9)


def test_counterfactual_pairs_differ_only_in_subject():
    pairs = counterfactual_pairs(100, seed=0)
    assert pairs == counterfactual_pairs(100, seed=0)
    assert len({(a.text, b.text) for a, b in pairs}) == 100
    for clean, cf in pairs:
        a, b = clean.meta, cf.meta
        assert a["options"] == b["options"] and a["correct"] != b["correct"]
        assert a["relation"] == b["relation"] and a["template"] == b["template"]
        assert (a["other_subject"], b["other_subject"]) == (b["subject"], a["subject"])
        s, e = a["subject_span"]
        assert clean.text[s:e] == a["subject"]
        assert clean.text[:s] + b["subject"] + clean.text[e:] == cf.text
        s2, e2 = b["subject_span"]
        assert cf.text[s2:e2] == b["subject"] and s2 == s
        assert clean.id.endswith("-clean") and cf.id.endswith("-counterfactual")
    same_words = sum(
        len(a.meta["subject"].split()) == len(b.meta["subject"].split()) for a, b in pairs
    )
    assert same_words > 0.9 * len(pairs)


def test_cloze_pairs_alternate_with_mcq_and_differ_in_subject():
    pairs = counterfactual_pairs(40, seed=1, formats=("mcq", "cloze"))
    assert [a.kind for a, _ in pairs[:4]] == ["mcq", "cloze", "mcq", "cloze"]
    for clean, cf in pairs:
        a, b = clean.meta, cf.meta
        assert a["format"] == b["format"] == clean.kind == cf.kind
        assert a["relation"] == b["relation"] and a["answer"] != b["answer"]
        s, e = a["subject_span"]
        assert clean.text[s:e].lower() == a["subject"].lower()
        if clean.kind == "cloze":
            assert "Answer:" not in clean.text and "\n" not in clean.text
            assert cf.text.lower().count(b["subject"].lower()) >= 1
    with pytest.raises(ValueError, match="pair formats"):
        counterfactual_pairs(3, formats=("essay",))


def test_same_length_pairs_filters_by_token_count():
    def make(text: str) -> Prompt:
        return Prompt(text, "custom", text)

    pairs = [(make("a b c"), make("d e f")), (make("a b"), make("d e f")), (make("x"), make("y"))]
    kept = same_length_pairs(pairs, lambda text: text.split())
    assert kept == [pairs[0], pairs[2]]
    real = counterfactual_pairs(30)
    kept = same_length_pairs(real, lambda text: list(text.encode()))
    assert all(len(a.text) == len(b.text) for a, b in kept) and len(kept) < len(real)


def test_round_trip(tmp_path, prompts):
    some = prompts[::37]
    assert any(p.hint for p in some)
    write_prompts_jsonl(some, tmp_path / "sub" / "p.jsonl")
    assert read_prompts_jsonl(tmp_path / "sub" / "p.jsonl") == some
    pairs = counterfactual_pairs(3)
    write_prompts_jsonl([p for pair in pairs for p in pair], tmp_path / "pairs.jsonl")
    back = read_prompts_jsonl(tmp_path / "pairs.jsonl")
    assert back == [p for pair in pairs for p in pair]


def test_user_prompts_defaults(tmp_path):
    path = tmp_path / "user.jsonl"
    rows = [{"prompt": "The sky is"}, {"id": "q", "prompt": "Hi. 2 + 2 =", "hint": "Hi. "}]
    path.write_text("\n".join(json.dumps(r) for r in rows[:1]) + "\n\n" + json.dumps(rows[1]))
    a, b = read_prompts_jsonl(path)
    assert a == Prompt("custom-00001", "custom", "The sky is", None, {})
    assert b.id == "q" and b.hint == "Hi. " and b.text.replace(b.hint, "", 1) == "2 + 2 ="


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('"text"', "expected a JSON object, got str"),
        ('{"id": "x"}', 'missing "prompt"'),
        ('{"prompt": ""}', '"prompt" must be a non-empty string'),
        ('{"prompt": "   "}', '"prompt" must be a non-empty string'),
        ('{"prompt": 3}', '"prompt" must be a non-empty string'),
        ('{"prompt": "abc", "hint": "zzz"}', '"hint" must be a substring'),
        ('{"prompt": "abc", "hint": ""}', '"hint" must be a non-empty string'),
        ('{"prompt": "abc", "hint": 1}', '"hint" must be a non-empty string'),
        ('{"prompt": "abc", "meta": 5}', '"meta" must be an object'),
        ('{"prompt": "abc", "kind": 5}', '"kind" must be a non-empty string'),
        ('{"prompt": "abc", "id": true}', '"id" must be a non-empty string'),
        ('{"prompt": "abc", "promt": "x"}', "unknown keys \\['promt'\\]"),
        ('{"prompt": "abc", "id": "first"}', "duplicate id 'first'"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, line, problem):
    path = tmp_path / "user.jsonl"
    path.write_text(json.dumps({"id": "first", "prompt": "fine"}) + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"user\.jsonl:3: .*{problem}"):
        read_prompts_jsonl(path)


def test_empty_or_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no prompts"):
        read_prompts_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no pairs"):
        read_pairs_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_prompts_jsonl(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"clean": "a"}', 'missing "counterfactual"'),
        ('{"clean": "a", "counterfactual": 2}', '"counterfactual" must be a non-empty string'),
        ('{"clean": "a", "counterfactual": "a"}', "identical"),
        ('{"clean": "a", "counterfactual": "b", "id": "p"}', "duplicate id 'p'"),
        ('{"clean": "a", "counterfactual": "b", "hint": "a"}', "unknown keys"),
        ("{bad", "invalid JSON"),
    ],
)
def test_bad_pairs_name_file_and_line(tmp_path, line, problem):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"id": "p", "clean": "a b", "counterfactual": "c d"}\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"pairs\.jsonl:2: .*{problem}"):
        read_pairs_jsonl(path)


def test_read_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"clean": "The Colosseum is in", "counterfactual": "The Louvre is in", "meta": {"x": 1}}\n'
    )
    ((clean, cf),) = read_pairs_jsonl(path)
    assert (clean.text, cf.text) == ("The Colosseum is in", "The Louvre is in")
    assert (clean.id, cf.id) == ("pair-00001-clean", "pair-00001-counterfactual")
    assert clean.meta == {"x": 1, "pair": "pair-00001", "role": "clean"}
