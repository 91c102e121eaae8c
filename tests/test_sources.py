"""The paper's prompt sources (selfexplain.hub.sources): hinted MMLU questions and CounterFact
multiple-choice pairs, from small local fixtures in the hub datasets' columns
(tests/data/sources/: cais/mmlu's question/subject/choices/answer, azhx/counterfact's
requested_rewrite)."""

from __future__ import annotations

import json
import runpy
import sys
import types
from pathlib import Path

import pytest

from selfexplain.hub.sources import (
    PAPER_HINT,
    counterfact_pairs,
    counterfact_pairs_from,
    mmlu_hint_prompts,
    mmlu_prompts_from,
)
from selfexplain.prompts import LETTERS, read_pairs_jsonl, read_prompts_jsonl
from selfexplain.tasks.hint import without_hint
from selfexplain.tasks.patching import position_kinds

REPO = Path(__file__).resolve().parents[1]
MMLU_FILE = REPO / "tests/data/sources/mmlu.jsonl"
CF_FILE = REPO / "tests/data/sources/counterfact.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture()
def cache(tmp_path) -> dict:
    return {"cache_dir": str(tmp_path / "hf-cache")}


def test_mmlu_hint_prompts_pose_the_question_with_a_removable_hint_line(cache):
    rows = read_jsonl(MMLU_FILE)
    prompts = mmlu_prompts_from(str(MMLU_FILE), 6, what="hint.source mmlu", **cache)
    assert [p.id for p in prompts] == [f"mmlu-{i:04d}" for i in range(6)]
    assert {p.kind for p in prompts} == {"hint_mcq"}
    for p in prompts:
        row = rows[p.meta["source_row"]]
        assert p.meta["question"] == row["question"] and p.meta["subject"] == row["question"]
        assert p.meta["correct"] == LETTERS[row["answer"]]
        assert list(p.meta["options"].values()) == row["choices"]
        assert p.hint == PAPER_HINT.format(L=p.meta["hinted"]) + "\n"
        assert p.meta["hint_correct"] == (p.meta["hinted"] == p.meta["correct"])
        assert p.text.startswith(f"Question: {row['question']}\nA. {row['choices'][0]}\n")
        assert p.text.endswith("Respond with one of A or B or C or D and nothing else.\nAnswer:")
        assert without_hint(p) == p.meta["text_without_hint"]
        assert "Hint:" not in without_hint(p)
    assert {p.meta["source_row"] for p in prompts} == set(range(6))  # every question once


def test_mmlu_prompts_are_a_seeded_choice(cache):
    rows = read_jsonl(MMLU_FILE)
    a, b = mmlu_hint_prompts(rows, 3, seed=0), mmlu_hint_prompts(rows, 3, seed=0)
    assert [p.text for p in a] == [p.text for p in b]
    others = [mmlu_hint_prompts(rows, 3, seed=s) for s in range(1, 6)]
    assert any([p.text for p in o] != [p.text for p in a] for o in others)
    assert mmlu_prompts_from(str(MMLU_FILE), 3, what="w", **cache)[0].text == a[0].text


def test_mmlu_bad_input_is_named(tmp_path, cache):
    rows = read_jsonl(MMLU_FILE)
    with pytest.raises(ValueError, match="7 prompts asked for, but the dataset has 6 questions"):
        mmlu_hint_prompts(rows, 7)
    with pytest.raises(ValueError, match=r"row 0: answer 4 is not an option index 0\.\.3"):
        mmlu_hint_prompts([rows[0] | {"answer": 4}], 1)
    no_answer = tmp_path / "mmlu.jsonl"
    no_answer.write_text("".join(json.dumps({"question": r["question"]}) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"hint.source mmlu: dataset .*mmlu.jsonl.* no column"):
        mmlu_prompts_from(str(no_answer), 2, what="hint.source mmlu", **cache)


def test_counterfact_pairs_swap_the_subject_of_one_relation(cache, tiny_llama):
    rows = read_jsonl(CF_FILE)
    pairs = counterfact_pairs_from(str(CF_FILE), 6, what="patching.source counterfact", **cache)
    assert len(pairs) == 6 and len({(c.text, f.text) for c, f in pairs}) == 6
    _, tokenizer = tiny_llama
    for clean, cf in pairs:
        assert clean.id.removesuffix("-clean") == cf.id.removesuffix("-counterfactual")
        assert clean.kind == cf.kind == "mcq"
        a, b = (rows[p.meta["source_row"]]["requested_rewrite"] for p in (clean, cf))
        assert a["relation_id"] == b["relation_id"] and a["prompt"] == b["prompt"]
        assert a["target_true"]["str"] != b["target_true"]["str"]
        # the same options, the right answer under another letter
        assert clean.meta["options"] == cf.meta["options"]
        assert clean.meta["options"][clean.meta["correct"]] == a["target_true"]["str"]
        assert cf.meta["options"][cf.meta["correct"]] == b["target_true"]["str"]
        assert clean.meta["correct"] != cf.meta["correct"]
        question = a["prompt"].replace("{}", a["subject"])
        assert clean.text.startswith(f"Question: {question}\nRespond with one of A or B")
        assert clean.text.replace(a["subject"], b["subject"], 1) == cf.text
        start, end = clean.meta["subject_span"]
        assert clean.text[start:end] == a["subject"]
        # the patching task finds the subject: every token inside its span is a subject token
        kinds = position_kinds(tokenizer, clean, cf)
        offsets = tokenizer(clean.text, return_offsets_mapping=True)["offset_mapping"]
        inside = [k for k, (a, b) in zip(kinds, offsets, strict=True) if a >= start and b <= end]
        assert inside and set(inside) == {"subject"}


def test_counterfact_flat_columns_and_string_targets_give_the_same_pairs(tmp_path, cache):
    nested = read_jsonl(CF_FILE)
    flat = tmp_path / "flat.jsonl"
    rows = []
    for r in nested:
        rw = r["requested_rewrite"]
        rows.append(
            rw | {"target_true": rw["target_true"]["str"], "target_new": rw["target_new"]["str"]}
        )
    flat.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = counterfact_pairs_from(str(flat), 4, what="w", **cache)
    expected = counterfact_pairs(nested, 4)
    assert [(c.text, f.text) for c, f in got] == [(c.text, f.text) for c, f in expected]


def test_counterfact_bad_input_is_named(cache, tmp_path):
    rows = read_jsonl(CF_FILE)
    broken = [rows[0] | {"requested_rewrite": {"prompt": "The mother tongue of {} is"}}]
    with pytest.raises(ValueError, match=r"row 0: no field 'subject'"):
        counterfact_pairs(broken, 1)
    with pytest.raises(ValueError, match=r"only \d+ distinct pairs could be built, not 500"):
        counterfact_pairs(rows, 500)
    flat = tmp_path / "flat.jsonl"
    flat.write_text(json.dumps({"prompt": "{} is in", "subject": "Paris"}) + "\n")
    with pytest.raises(ValueError, match=r"no column 'target_true'"):
        counterfact_pairs_from(str(flat), 1, what="patching.source counterfact", **cache)


def _run_script(name: str, settings: dict, tmp_path: Path, monkeypatch, **params) -> Path:
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # the script redirects it to its log
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    out = tmp_path / "out.jsonl"
    smk = types.SimpleNamespace(
        output=[str(out)],
        log=[str(tmp_path / "log.txt")],
        params=types.SimpleNamespace(settings=settings, **params),
    )
    runpy.run_path(str(REPO / f"workflow/scripts/{name}.py"), init_globals={"snakemake": smk})
    sys.stdout.flush()
    return out


def test_make_prompts_takes_text_prompts_from_the_features_corpus(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        " ".join(f"Station {i} lies on the coast near the harbour." for i in range(9))
    )
    settings = {"n_per_kind": 3, "kinds": ["text"]}
    out = _run_script("make_prompts", settings, tmp_path, monkeypatch, corpus_file=str(corpus))
    prompts = read_prompts_jsonl(out)
    assert len(prompts) == 3 and all(p.text.startswith("Station ") for p in prompts)


def test_the_prompt_rules_read_the_configured_source(tmp_path, monkeypatch):
    """make_pairs with patching.source counterfact, make_hint_prompts and make_prompts with
    source mmlu write the source's prompts, which the label rules read back."""
    pairs = read_pairs_jsonl(
        _run_script(
            "make_pairs",
            {"source": "counterfact", "dataset": str(CF_FILE), "n_pairs": 3},
            tmp_path,
            monkeypatch,
        )
    )
    assert len(pairs) == 3 and all(c.meta["source"] == "counterfact" for c, _ in pairs)
    assert [(c.text, f.text) for c, f in pairs] == [
        (c.text, f.text) for c, f in counterfact_pairs(read_jsonl(CF_FILE), 3)
    ]
    for script, key in (("make_hint_prompts", "n_prompts"), ("make_prompts", "n_per_kind")):
        settings = {"source": "mmlu", "dataset": str(MMLU_FILE), key: 4}
        prompts = read_prompts_jsonl(_run_script(script, settings, tmp_path, monkeypatch))
        assert len(prompts) == 4 and all(p.hint and p.hint in p.text for p in prompts)
        assert all(p.meta["hint_template"] == PAPER_HINT for p in prompts)
