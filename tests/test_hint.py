import copy
import json
import math

import pytest
import torch

from selfexplain.core.formats import parse_change
from selfexplain.core.schema import split_of
from selfexplain.prompts import HINT_FORMS, N_SHOTS, STRONG_HINTS, Prompt, hint_prompts
from selfexplain.tasks import ablation, hint, patching
from selfexplain.tasks.ablation import encode, end_distance_bucket, token_class
from selfexplain.tasks.hint import (
    chat_text,
    chosen_letter,
    hint_examples,
    hint_question,
    hint_rows,
    hinted_letter,
    letter_logprobs,
    letter_mass,
    letter_token_ids,
    option_letters,
    without_hint,
)

MODELS = ["tiny_llama", "tiny_gemma"]
# every field that carries (part of) a label or a model output the question does not state
ANSWER_FIELDS = (
    "changed",
    "new_token",
    "new_token_id",
    "logp_orig",
    "logp_ablated",
    "letter_logprobs",
    "letter_logprobs_ablated",
    "letter_mass",
    "letter_mass_ablated",
    "next_token",
    "next_token_ablated",
    "captum_score",
    "p_orig",
    "p_cf",
    "p_orig_clean",
    "cf_token",
    "cf_token_id",
    "follows_hint",
    "hint_correct",
    "correct",
)
PATCH_TEMPLATE = (
    "Question: What is the capital of {}?\nA. Paris\nB. Tokyo\nRespond with A or B.\nAnswer:"
)


@pytest.fixture(params=MODELS)
def model_tok(request):
    return request.getfixturevalue(request.param)


def _greedy(model, tok, text):
    """Greedy next token among non-special tokens, by a plain single unpadded forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([encode(tok, text)])).logits[0, -1]
    logp = torch.log_softmax(logits.float(), -1)
    logp[tok.all_special_ids] = float("-inf")
    return int(logp.argmax()), logp


# --------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("n", [1000, 2000])
def test_hint_prompts_are_distinct_and_contain_their_hint(n):
    prompts = hint_prompts(n)
    assert len(prompts) == n
    assert len({p.text for p in prompts}) == n
    assert [p.id for p in prompts[:2]] == ["hint-0000", "hint-0001"]
    assert len({p.id for p in prompts}) == n
    for p in prompts:
        assert p.kind == "hint_mcq"
        assert p.hint and p.hint in p.text
        assert p.meta["hinted"] in "ABCD"
        assert p.meta["text_without_hint"] == p.text.replace(p.hint, "", 1)
    assert hint_prompts(50, seed=0) == prompts[:50]
    assert hint_prompts(50, seed=1) != prompts[:50]


# --------------------------------------------------------------------------- labels


def _letters(tok, logp, letters="ABCD"):
    """Each letter's log-prob, the larger of "X" and " X", by looking the tokens up directly."""
    out = {}
    for x in letters:
        ids = [tok.convert_tokens_to_ids(t) for t in (x, tok.tokenize(" " + x)[0])]
        out[x] = max(float(logp[i]) for i in ids)
    return out


def test_hint_rows_equal_plain_forwards(model_tok):
    model, tok = model_tok
    prompts = hint_prompts(7, seed=3)
    rows = hint_rows(model, tok, prompts, batch_size=3)  # chunks of 3, 3, 1: padding in play
    assert [r["prompt_id"] for r in rows] == [p.id for p in prompts]
    for prompt, row in zip(prompts, rows, strict=True):
        y0, logp = _greedy(model, tok, prompt.text)
        y1, logp_ablated = _greedy(model, tok, prompt.text.replace(prompt.hint, "", 1))
        with_hint, without = _letters(tok, logp), _letters(tok, logp_ablated)
        orig, new = max(with_hint, key=with_hint.get), max(without, key=without.get)
        assert row["orig_token"] == orig and row["new_token"] == new
        assert row["changed"] == (orig != new)
        assert row["letter_logprobs"] == pytest.approx(with_hint, abs=1e-4)
        assert row["letter_logprobs_ablated"] == pytest.approx(without, abs=1e-4)
        assert row["logp_orig"] == pytest.approx(with_hint[orig], abs=1e-4)
        assert row["logp_ablated"] == pytest.approx(without[orig], abs=1e-4)
        assert 0 < row["letter_mass"] <= 1 and 0 < row["letter_mass_ablated"] <= 1
        assert row["next_token"] == tok.decode([y0])
        assert row["next_token_ablated"] == tok.decode([y1])
        assert row["hint"] == prompt.hint
        for key in ("hinted", "hint_correct", "hint_position", "hint_template", "correct"):
            assert row[key] == prompt.meta[key]
        assert row["relation"] == prompt.meta["relation"]
        assert row["follows_hint"] == (orig == prompt.meta["hinted"])
    json.dumps(rows)  # meta of the examples


def test_letter_readout_takes_both_spellings_and_ignores_other_tokens(tiny_llama):
    _, tok = tiny_llama
    ids = letter_token_ids(tok, "ABC")
    assert ids == {x: sorted({tok.encode(x)[-1], tok.encode(" " + x)[-1]}) for x in "ABC"}
    assert all(len(v) == 2 for v in ids.values())
    logp = torch.full((tok.vocab_size,), -20.0)
    space, newline = tok.encode(" ")[-1], tok.encode("\n")[-1]
    logp[space] = logp[newline] = -0.1  # the greedy token is not a letter: ignored
    logp[ids["A"][0]] = -3.0
    logp[ids["B"][0]], logp[ids["B"][1]] = -2.5, -4.0  # B: the better of its two spellings
    logp[ids["C"][1]] = -2.0  # C's other spelling: the highest letter
    scores = letter_logprobs(logp, ids)
    assert scores == pytest.approx({"A": -3.0, "B": -2.5, "C": -2.0})
    assert chosen_letter(scores) == "C"
    logp[ids["A"][1]] = -1.0
    assert chosen_letter(letter_logprobs(logp, ids)) == "A"
    assert letter_mass(scores) == pytest.approx(sum(math.exp(v) for v in (-3.0, -2.5, -2.0)))


def test_options_and_hinted_letter_of_user_prompts():
    text = "Q?\nA Stanford professor thinks it is C.\n(A) x\n(B) y\n(C) z\nAnswer:"
    prompt = Prompt("p", "custom", text, "A Stanford professor thinks it is C.\n")
    assert option_letters(prompt) == "ABC"
    assert hinted_letter(prompt, "ABC") == "C"
    assert hinted_letter(Prompt("p", "custom", text, "I think so.\n"), "ABC") is None
    generated = hint_prompts(1)[0]
    assert option_letters(generated) == "ABCD"
    assert hinted_letter(generated, "ABCD") == generated.meta["hinted"]
    with pytest.raises(ValueError, match="no options"):
        option_letters(Prompt("p", "custom", "Hint: B.\nThe answer is", "Hint: B.\n"))


def test_hint_forms_keep_a_removable_hint():
    plain = hint_prompts(20, seed=4)
    assert [p.text for p in plain] == [p.text for p in hint_prompts(20, seed=4, form="plain")]
    for form in HINT_FORMS:
        for p in hint_prompts(20, seed=4, form=form):
            assert p.hint in p.text and p.meta["hint_form"] == form
            assert p.text.endswith("Answer:")
            assert ("strong" in form) == (p.meta["hint_template"] in STRONG_HINTS)
            assert p.text.count("Question:") == (1 + N_SHOTS if "few_shot" in form else 1)
    with pytest.raises(ValueError, match="unknown hint form"):
        hint_prompts(1, form="loud")


def test_chat_rows_read_the_prompt_in_the_chat_template(model_tok, monkeypatch):
    model, tok = model_tok
    prompt = hint_prompts(1)[0]
    text = chat_text(tok, prompt.text)
    assert prompt.text in text and text != prompt.text
    assert encode(tok, text).count(tok.bos_token_id) <= 1  # the template's BOS is not doubled
    (row,) = hint_rows(model, tok, [prompt], chat=True)
    assert row["prompt"] == prompt.text and row["chat"] is True
    _, logp = _greedy(model, tok, text)
    assert row["letter_logprobs"] == pytest.approx(_letters(tok, logp), abs=1e-4)
    _, logp = _greedy(model, tok, chat_text(tok, without_hint(prompt)))
    assert row["letter_logprobs_ablated"] == pytest.approx(_letters(tok, logp), abs=1e-4)
    # a target without a chat template (a base model) reads the prompt raw
    monkeypatch.setattr(tok, "chat_template", None)
    (raw,) = hint_rows(model, tok, [prompt], chat=True)
    assert raw["chat"] is False and [raw] == hint_rows(model, tok, [prompt]) != [row]


# --------------------------------------------------------------------------- examples


def _rows(n=40):
    return [
        {
            "prompt_id": f"hint-{i:04d}",
            "prompt": f"Hint: the answer is B.\nQuestion {i}?\nAnswer:",
            "hint": "Hint: the answer is B.\n",
            "orig_token": "B",
            "changed": i % 2 == 0,
            "new_token": "A",
        }
        for i in range(n)
    ]


def test_examples_split_by_prompt_deterministically():
    rows = _rows()
    first = hint_examples(rows, "tiny", test_fraction=0.3, seed=0)
    again = hint_examples(rows, "tiny", test_fraction=0.3, seed=0)
    assert [e.split for e in first] == [e.split for e in again]
    assert {e.split for e in first} == {"train", "test"}
    for ex, row in zip(first, rows, strict=True):
        assert ex.id == f"hint/tiny/{row['prompt_id']}"
        assert ex.task == "hint"
        assert ex.split == split_of(row["prompt_id"], 0.3, 0)
        assert ex.meta == row | {"split_group": row["prompt_id"]}  # no subject: its prompt
        parsed = parse_change(ex.answer)
        assert parsed.valid and parsed.changed == row["changed"]
        assert parsed.new_token == ("A" if row["changed"] else None)
    other = hint_examples(rows, "tiny", test_fraction=0.3, seed=1)
    assert [e.split for e in other] != [e.split for e in first]


def test_question_names_the_stripped_hint_and_the_chosen_option():
    q = hint_question(_rows(1)[0])
    assert '"Hint: the answer is B."' in q
    assert 'The model chooses option "B".' in q
    assert "which option does the model choose?" in q
    assert q.endswith('Answer "unchanged" or "changes to" the new token.')


# --------------------------------------------------------------------------- drop_last


def test_drop_last_removes_exactly_the_last_position(tiny_llama):
    model, tok = tiny_llama
    prompt = hint_prompts(1, seed=5)[0]
    full = ablation.prompt_ablation_rows(model, tok, prompt)
    dropped = ablation.prompt_ablation_rows(model, tok, prompt, drop_last=True)
    n = full[0]["n_positions"]
    last = [r for r in full if r["unit"] == "token" and r["position"] == n - 1]
    assert len(last) == 1
    assert dropped == [r for r in full if r is not last[0]]
    assert [r["unit"] for r in dropped].count("hint") == 1
    labels = ablation.ablation_labels(model, tok, [prompt], drop_last=True)
    assert labels == dropped


# --------------------------------------------------------------------------- surface features


def _alter(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, str):
        return value + "x"
    return -12345


def _check_no_leak(features, meta):
    """features(meta) works without the answer fields and does not depend on them."""
    expected = features(meta)
    assert all(isinstance(v, str) for v in expected.values())
    stripped = {k: v for k, v in meta.items() if k not in ANSWER_FIELDS}
    assert features(stripped) == expected
    altered = copy.deepcopy(meta)
    for key in ANSWER_FIELDS:
        if key in altered:
            altered[key] = _alter(altered[key])
    assert features(altered) == expected
    return expected


def test_surface_features_never_read_answer_fields(tiny_llama):
    model, tok = tiny_llama
    prompt = hint_prompts(1, seed=5)[0]
    for row in ablation.prompt_ablation_rows(model, tok, prompt):
        feats = _check_no_leak(ablation.surface_features, row)
        if row["unit"] == "hint":
            assert feats["end_distance"] == "hint"
        else:
            distance = row["n_positions"] - row["position"]
            assert feats["end_distance"] == end_distance_bucket(distance)
            assert feats["token_class"] == token_class(row["removed"])
    clean = Prompt("p0-clean", "mcq", PATCH_TEMPLATE.format("France"), None, {"subject": "France"})
    cf = Prompt("p0-counterfactual", "mcq", PATCH_TEMPLATE.format("Japan"), None, {})
    rows = patching.patching_rows(model, tok, clean, cf, window=1, layer_starts=[0, 1])
    for row in rows:
        feats = _check_no_leak(patching.surface_features, row)
        assert feats["is_last"] == ("yes" if row["position"] == row["n_tokens"] - 1 else "no")
        assert feats["layer_start"] == str(row["layer_start"])
    assert {patching.surface_features(r)["is_last"] for r in rows} == {"yes", "no"}
    for row in hint_rows(model, tok, hint_prompts(5)):
        feats = _check_no_leak(hint.surface_features, row)
        assert feats["follows_hint"] == ("yes" if row["follows_hint"] else "no")
        assert feats["follows_hint"] == ("yes" if row["orig_token"] == row["hinted"] else "no")
        assert feats["orig_token"] == row["orig_token"] in "ABCD"
        assert feats["hint_position"] == row["hint_position"]
    assert hint.surface_features({"orig_token": "B", "hinted": None})["follows_hint"] == "unknown"


def test_token_class_and_distance_buckets():
    assert [token_class(t) for t in (" ", "\n", " 7", ".", " Paris", " the", "B")] == [
        "space",
        "space",
        "digit",
        "punct",
        "capitalised",
        "word",
        "capitalised",
    ]
    assert [end_distance_bucket(d) for d in (1, 2, 3, 4, 5, 6, 40)] == [
        "1",
        "2",
        "3",
        "4-5",
        "4-5",
        "6+",
        "6+",
    ]
    with pytest.raises(ValueError):
        end_distance_bucket(0)
